"""Optimizers: AdamW with weight-decay groups, and Muon for the hidden matrices.

Two recipes, both built by `build_optimizers(model, cfg)`, which returns a *list* of optimizers
(the training loop steps each of them):

* ``"adamw"``: one AdamW over every parameter, in groups so that only the hidden 2-D matrices
  (and an untied LM head) get weight decay; norms, other vectors and the token embedding do not
  (decaying an embedding row pulls rare tokens towards zero, which only hurts).
* ``"muon"``: Muon (Keller Jordan's "MomentUm Orthogonalized by Newton-schulz", from the
  modded-nanogpt speedruns and nanochat) for the 2-D hidden matrices, and AdamW, with its own
  learning rates, for the embedding, the head and the vectors.

Muon keeps a momentum of the gradient like SGD, but before applying it replaces the update
matrix G = U S Vᵀ by (approximately) U Vᵀ: every singular value becomes ~1. The update then
moves the weight the same amount in every direction instead of mostly along the few directions
that dominate the gradient. Five iterations of a quintic Newton–Schulz polynomial compute it
with nothing but matmuls, which is why it is cheap on GPU and fine on CPU.

Learning-rate schedules multiply each group's ``base_lr`` (see `set_lr_multiplier`), so one
schedule drives every optimizer whatever its own learning rates are.

Checkpoints store optimizer state without pickle: `optimizer_state_to_tensors` flattens it to
``{name: tensor}`` (for safetensors) + a JSON object, and `load_optimizer_state` puts it back.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn

from fornalha.train.distributed import full_tensor, shard_like, unwrap

# --------------------------------------------------------------------------------------------
# Muon
# --------------------------------------------------------------------------------------------


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise G (replace its singular values by ~1) with a quintic iteration.

    The coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) are tuned (modded-nanogpt) to push
    singular values in (0, 1] quickly towards 1; they land in roughly [0.7, 1.2], which works as
    well as an exact U Vᵀ in practice. Runs in bfloat16 on CUDA (fast, stable enough) and in
    float32 elsewhere (bf16 matmuls are slow on most CPUs).
    """
    assert G.ndim >= 2
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the wide orientation: X Xᵀ is then the smaller matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """SGD-momentum whose update is orthogonalised by Newton–Schulz; for 2-D hidden matrices only.

    Per step, for a weight W [out, in] with gradient g:
        buf = momentum · buf + (1 − momentum) · g
        u   = g + momentum · (buf − g)          (Nesterov) or u = buf
        W  ← W · (1 − lr · weight_decay) − lr · sqrt(max(1, out / in)) · orthogonalise(u)

    The sqrt(out / in) factor keeps the per-element size of the update comparable for tall
    matrices (nanochat, modded-nanogpt). Embeddings, the LM head and vectors belong in AdamW.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only takes 2-D matrices; got a parameter of shape {tuple(p.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - documented in the class docstring
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - momentum)
                u = g.lerp(buf, momentum) if group["nesterov"] else buf
                # Newton-Schulz needs the whole matrix. Under FSDP2, u holds this rank's rows only:
                # gather them, orthogonalise (every rank the same matrix), keep this rank's rows.
                update = shard_like(zeropower_via_newtonschulz5(full_tensor(u), steps=group["ns_steps"]), u)
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * scale)
        return loss


# --------------------------------------------------------------------------------------------
# Building the optimizers of a run
# --------------------------------------------------------------------------------------------


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    """Read a setting from a config object, a dict, or fall back to a default (None counts as unset)."""
    value = cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)
    return default if value is None else value


def _fused_ok(params: list[nn.Parameter]) -> bool:
    """Fused AdamW (one kernel for all parameters) exists for CUDA and, in recent torch, CPU."""
    if not params:
        return False
    dev = params[0].device.type
    return dev in ("cuda", "cpu") and all(p.is_floating_point() for p in params)


def make_adamw(
    groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    """torch AdamW, fused where this torch and device support it, else the foreach implementation."""
    params = [p for g in groups for p in g["params"]]
    if _fused_ok(params):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, ValueError, TypeError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def build_optimizers(model: nn.Module, cfg: Any) -> list[torch.optim.Optimizer]:
    """The optimizers for `model` as `cfg` asks (a TrainConfig, or any object/dict with these keys):

    optimizer       "adamw" (default) or "muon"
    lr              base AdamW learning rate (default 1e-3)
    matrix_lr       hidden 2-D matrices: Muon's lr under "muon" (default 0.02), else AdamW's (default lr)
    embedding_lr    token embedding (default lr); a tied embedding is also the head and uses
                    min(embedding_lr, head_lr)
    head_lr         untied LM head (default lr)
    vector_lr       norms and other 1-D parameters (default lr)
    weight_decay    AdamW decoupled weight decay on matrices and an untied head (default 0.0)
    muon_weight_decay  Muon's weight decay on hidden matrices (default: weight_decay)
    betas, eps      AdamW (default (0.9, 0.95), 1e-8)
    muon_momentum   Muon momentum (default 0.95)

    Every param group records ``base_lr`` so `set_lr_multiplier` can apply a schedule.
    """
    groups = unwrap(model).parameter_groups()  # {"matrix", "embedding", "head", "vector"}
    kind = str(_get(cfg, "optimizer", "adamw")).lower()
    lr = float(_get(cfg, "lr", 1e-3))
    wd = float(_get(cfg, "weight_decay", 0.0))
    betas = tuple(float(b) for b in _get(cfg, "betas", (0.9, 0.95)))
    eps = float(_get(cfg, "eps", 1e-8))
    emb_lr = float(_get(cfg, "embedding_lr", lr))
    head_lr = float(_get(cfg, "head_lr", lr))
    vec_lr = float(_get(cfg, "vector_lr", lr))
    tied = not groups["head"]  # parameter_groups lists a tied head once, as the embedding
    if tied:
        emb_lr = min(emb_lr, head_lr)

    def group(params: list[nn.Parameter], glr: float, gwd: float, name: str) -> dict[str, Any]:
        return {"params": params, "lr": glr, "base_lr": glr, "weight_decay": gwd, "name": name}

    adam_groups = [
        group(groups["embedding"], emb_lr, 0.0, "embedding"),
        group(groups["head"], head_lr, wd, "head"),
        group(groups["vector"], vec_lr, 0.0, "vector"),
    ]
    if kind == "adamw":
        adam_groups.insert(0, group(groups["matrix"], float(_get(cfg, "matrix_lr", lr)), wd, "matrix"))
        adam_groups = [g for g in adam_groups if g["params"]]
        return [make_adamw(adam_groups, lr, betas, eps)]
    if kind == "muon":
        adam_groups = [g for g in adam_groups if g["params"]]
        mlr = float(_get(cfg, "matrix_lr", 0.02))
        muon_group = group(groups["matrix"], mlr, float(_get(cfg, "muon_weight_decay", wd)), "matrix")
        muon = Muon([muon_group], lr=mlr, momentum=float(_get(cfg, "muon_momentum", 0.95)))
        return [make_adamw(adam_groups, lr, betas, eps), muon]
    raise ValueError(f"unknown optimizer {kind!r}; choose 'adamw' or 'muon'")


def set_lr_multiplier(optimizers: Iterable[torch.optim.Optimizer], multiplier: float) -> None:
    """lr = base_lr · multiplier in every group (the schedule's output is the multiplier)."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g.get("base_lr", g["lr"]) * multiplier


def current_lr(optimizers: list[torch.optim.Optimizer]) -> float:
    """The learning rate of the first group of the last optimizer (Muon's matrices under "muon")."""
    return float(optimizers[-1].param_groups[0]["lr"])


# --------------------------------------------------------------------------------------------
# State <-> flat tensors + JSON (no pickle in checkpoints)
# --------------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.item()
    return v


def optimizer_state_to_tensors(
    optimizers: list[torch.optim.Optimizer], keep: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten optimizers' state dicts: tensors as ``"{opt}.{param}.{key}"`` and the rest as JSON.

    Tensor states (moments, Muon buffers, AdamW's tensor ``step``) go to the first dict; the
    param groups (learning rates, betas, …) and any non-tensor state go to the JSON object.
    Under FSDP2 the moments are DTensor shards, gathered here into full tensors (a collective:
    every rank calls this; those that will not write pass keep=False and get no tensors), so the
    file is the same as a single-process run's.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"optimizers": []}
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid in sorted(sd["state"]):  # the same order on every rank: the gathers must pair up
            for key, val in sd["state"][pid].items():
                if isinstance(val, torch.Tensor):
                    val = full_tensor(val.detach())
                    if keep:
                        tensors[f"{i}.{pid}.{key}"] = val.clone().contiguous().cpu()
                else:
                    scalars.setdefault(str(pid), {})[key] = _jsonable(val)
        groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
        meta["optimizers"].append({"class": type(opt).__name__, "param_groups": groups, "scalars": scalars})
    return tensors, meta


def load_optimizer_state(
    optimizers: list[torch.optim.Optimizer], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of `optimizer_state_to_tensors`; checks the optimizers match what was saved."""
    saved = meta["optimizers"]
    if len(saved) != len(optimizers):
        raise ValueError(
            f"checkpoint holds {len(saved)} optimizer states, the run has {len(optimizers)} optimizers"
        )
    for i, (opt, info) in enumerate(zip(optimizers, saved)):
        if info["class"] != type(opt).__name__:
            raise ValueError(f"optimizer {i} was {info['class']} when saved, now {type(opt).__name__}")
        state: dict[int, dict[str, Any]] = {}
        prefix = f"{i}."
        for name, t in tensors.items():
            if name.startswith(prefix):
                _, pid, key = name.split(".", 2)
                state.setdefault(int(pid), {})[key] = t
        for pid, st in info.get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(st)
        # under FSDP2 the parameters are DTensor shards: cut each full moment the same way
        params = [p for g in opt.param_groups for p in g["params"]]  # param id = position here
        for pid, st in state.items():
            for key, val in st.items():
                if isinstance(val, torch.Tensor) and pid < len(params) and val.shape == params[pid].shape:
                    st[key] = shard_like(val, params[pid])
        groups = []
        for g in info["param_groups"]:
            g = dict(g)
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            groups.append(g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.load_state_dict({"state": state, "param_groups": groups})
