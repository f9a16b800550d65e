"""Run state and exact resume: what a step checkpoint holds, how it is saved, chosen and restored.

A step checkpoint (RUN/checkpoints/step-NNNNNN/) holds the weights, the optimizer moments, the
`TrainState` (step, tokens, best so far, early-stopping counter, ...), every random-number
generator of every process and the data loader's position. The learning-rate schedule is a pure
function of the step (or elapsed time), so restoring these makes a resumed run bit-identical on
CPU to one that was never interrupted (tests/train/test_resume.py kills one with SIGKILL).

How `--resume` chooses a checkpoint (`choose_checkpoint`):

    1. leftovers of a killed writer are tidied: .NAME.tmp-PID folders are removed, and a best/
       whose replacement was cut between its two renames is put back from .best.old-PID;
    2. the newest step-* folder whose files all match their sha256 is taken; damaged ones are
       moved to checkpoints/damaged/ (kept for inspection, never rotated away);
    3. step folders exist but none is valid: refuse (CheckpointError, exit 2), unless --restart.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fornalha.checkpoint import (
    LORA_BASE,
    fold_lora,
    load_checkpoint,
    load_extra,
    lora_adapters,
    lora_base_reference,
    prune_checkpoints,
    read_meta,
    save_checkpoint,
    step_checkpoints,
    verify_checkpoint,
    with_lora_base,
)
from fornalha.errors import CheckpointError
from fornalha.train import distributed as D
from fornalha.train.optim import load_optimizer_state, optimizer_state_to_tensors


@dataclass
class TrainState:
    """Everything about the run's progress that is not weights or optimizer state (saved as JSON)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens consumed (all processes)
    elapsed_s: float = 0.0  # wall time spent in earlier sessions of this run (before a resume)
    best: dict[str, float] | None = None  # the evaluate() results of the best evaluation
    best_step: int | None = None
    last_eval: dict[str, float] | None = None  # the latest evaluation
    evals_since_best: int = 0  # early-stopping counter
    prev_train_loss: float | None = None  # mean training loss before the latest evaluation
    interval_loss_sum: float = 0.0  # training losses since the last evaluation
    interval_loss_count: int = 0
    next_eval_s: float = 0.0  # time-budget mode: when the next evaluation is due
    overfit_steps: list[int] = field(default_factory=list)
    status: str = "running"

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainState:
        if "best" not in saved and saved.get("best_val_loss") is not None:  # a checkpoint of fornalha <= 0.x
            saved["best"] = {"val_loss": saved["best_val_loss"], "val_bpb": saved.get("best_val_bpb")}
            saved["last_eval"] = {"val_loss": saved.get("prev_val_loss")}
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def gathered_weights(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The state dict as plain CPU tensors, without a tied LM head (safetensors stores each tensor once).

    Under FSDP2 the parameters are DTensor shards: each one is all-gathered into the full tensor,
    a collective, so every rank calls this; ranks that will not write pass keep=False and get {}.
    """
    model = D.unwrap(model)
    sd = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    out = {}
    for k, v in sd.items():
        v = D.full_tensor(v.detach())
        if keep:
            out[k] = v.contiguous().cpu()
    return out


def checkpoint_meta(
    model, state: TrainState, cfg, metrics: dict | None, init_meta: dict | None
) -> dict[str, Any]:
    metrics = metrics or {}
    return {
        "model_config": model.config.to_dict(),
        "step": state.step,
        "tokens_seen": state.tokens,
        "val_loss": metrics.get("val_loss"),
        "val_bpb": metrics.get("val_bpb"),
        "metrics": metrics,
        "run_config": cfg.to_dict(),
        "lineage": {
            "parent": init_meta.get("path") if init_meta else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }


def save_step_checkpoint(run) -> None:
    """RUN/checkpoints/step-NNNNNN/: weights, optimizer, TrainState, RNG and loader state; keep K newest.

    Every rank calls this (RNG states and FSDP2 shards are gathered); rank 0 writes.
    """
    dist = run.dist
    rngs = D.gather_objects(rng_state(), dist)  # every rank's generators, so each resumes its own
    weights = gathered_weights(run.raw_model, keep=dist.is_main)
    opt_tensors, opt_json = optimizer_state_to_tensors(run.optimizers, keep=dist.is_main)
    if not dist.is_main:
        return
    rng_tensors = {f"{r}.{k}": v for r, s in enumerate(rngs) for k, v in s["tensors"].items()}
    state = run.state
    root = run.dir / "checkpoints"
    meta = checkpoint_meta(run.raw_model, state, run.cfg, state.last_eval, run.init_meta)
    adapters = lora_adapters(weights)
    if adapters and run.init_meta is not None:  # LoRA: the frozen weights are the base's, by reference
        weights, meta[LORA_BASE] = adapters, lora_base_reference(run.init_meta)
    save_checkpoint(
        root / f"step-{state.step:06d}",
        weights,
        meta,
        extra_tensors={"optimizer": opt_tensors, "rng": rng_tensors},
        extra_json={
            "optimizer": opt_json,
            "state": asdict(state) | {"elapsed_s": run.clock.elapsed()},
            "rng": [s["json"] for s in rngs],
            "loader": run.task.train_loader.state_dict(),
        },
    )
    prune_checkpoints(root, run.cfg.train.keep_checkpoints)


def is_better(value: float, than: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if than is None:
        return True
    return value < than - min_delta if mode == "min" else value > than + min_delta


def save_best(run, metrics: dict[str, float]) -> bool:
    """Publish the model as RUN/checkpoints/best unless the best/ already there scored better
    (e.g. from before a --restart). Every rank calls this (FSDP2 shards are gathered)."""
    # best/ is what gets served and exported: LoRA adapters are folded into their weights
    weights = fold_lora(gathered_weights(run.raw_model, keep=run.dist.is_main))
    if not run.dist.is_main:
        return True
    best_dir = run.dir / "checkpoints" / "best"
    key, mode = run.task.best_metric, run.task.best_mode
    try:
        old = read_meta(best_dir).get("metrics", {}).get(key) if best_dir.is_dir() else None
    except CheckpointError:
        old = None
    if old is not None and is_better(old, metrics[key], mode):  # strictly better: kept
        if not getattr(run, "_said_best_kept", False):
            run.say(f"[yellow]note:[/] {best_dir} ({key} {old:.4f}) is better than this run so far; kept")
            run._said_best_kept = True
        return False
    save_checkpoint(
        best_dir, weights, checkpoint_meta(run.raw_model, run.state, run.cfg, metrics, run.init_meta)
    )
    return True


# --------------------------------------------------------------------------------------------
# Choosing and restoring
# --------------------------------------------------------------------------------------------

_LEFTOVER = re.compile(r"^\.(?P<name>best|step-\d{6})\.(?P<kind>tmp|old)-\d+$")


def tidy_checkpoints(root: Path, say=print) -> None:
    """Clean what a killed writer left in `root` (only names save_checkpoint creates).

    .NAME.tmp-PID: an unfinished write, removed. .NAME.old-PID: the previous NAME moved aside
    while being replaced; put back if NAME itself is missing (a kill between the two renames),
    removed otherwise. Called under the run lock, so no other writer is at work.
    """
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        m = _LEFTOVER.match(path.name)
        if not m or not path.is_dir():
            continue
        target = root / m["name"]
        if m["kind"] == "old" and not target.exists():
            try:
                verify_checkpoint(path)
            except CheckpointError:
                continue
            os.rename(path, target)
            say(f"restored {target.name}/ from {path.name} (its replacement was interrupted)")
        else:
            shutil.rmtree(path, ignore_errors=True)
            say(f"removed {path.name} (left by an interrupted checkpoint write)")


def choose_checkpoint(root: Path, restart: bool, say=print) -> Path | None:
    """The newest valid step checkpoint; damaged ones move to root/damaged/. See the module docstring."""
    tidy_checkpoints(root, say)
    problems = []
    for path in step_checkpoints(root):
        try:
            verify_checkpoint(path)
            load_checkpoint(path)  # also readable as safetensors
        except CheckpointError as exc:
            problems.append(str(exc))
            aside = root / "damaged" / f"{path.name}-{time.strftime('%Y%m%dT%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            os.rename(path, aside)
            say(f"[yellow]warning:[/] {exc}; moved it to {aside.relative_to(root.parent)}")
            continue
        return path
    if problems and not restart:
        raise CheckpointError(
            f"no valid checkpoint to resume in {root}: {'; '.join(problems)} "
            "(the damaged ones were moved to checkpoints/damaged/); pass --restart to train again from step 0"
        )
    return None


def restore_weights(ckpt: Path, model) -> None:
    """Load a step checkpoint's weights into the (not yet sharded or wrapped) model."""
    weights, meta = load_checkpoint(ckpt)
    weights = with_lora_base(weights, meta)  # an adapter-only LoRA checkpoint: the base's weights + adapters
    if meta["model_config"] != model.config.to_dict():
        changed = sorted(k for k, v in model.config.to_dict().items() if meta["model_config"].get(k) != v)
        raise CheckpointError(
            f"checkpoint {ckpt} was trained with another model config (differs in {', '.join(changed)}); "
            "resume with the run's own config.yaml (drop the --set/--config that change the model)"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit the model: missing {missing}, unexpected {unexpected}"
        )


def restore(ckpt: Path, optimizers, loader, dist: D.DistInfo) -> TrainState:
    """Load a step checkpoint into the optimizers (sharded like their parameters under FSDP2), the
    loader and the RNGs; return its TrainState. The weights went in first (`restore_weights`)."""
    load_optimizer_state(
        optimizers, load_extra(ckpt, "optimizer"), json.loads((ckpt / "optimizer.json").read_text())
    )
    loader_state = dict(load_extra(ckpt, "loader"))
    if "rank" in loader_state:
        loader_state["rank"] = dist.rank  # rank 0 saved it; every rank is at the same position
    loader.load_state_dict(loader_state)
    rng_json = json.loads((ckpt / "rng.json").read_text())
    rng_tensors = load_extra(ckpt, "rng")
    rank = dist.rank if dist.rank < len(rng_json) else 0
    set_rng_state(
        rng_json[rank], {k.split(".", 1)[1]: v for k, v in rng_tensors.items() if k.startswith(f"{rank}.")}
    )
    return TrainState.from_json(json.loads((ckpt / "state.json").read_text()))


# --------------------------------------------------------------------------------------------
# Random-number generators
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, split into JSON and tensors."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return {
        "json": {
            "python": [version, list(mt), gauss],
            "numpy": [
                np_state[0],
                np_state[1].tolist(),
                int(np_state[2]),
                int(np_state[3]),
                float(np_state[4]),
            ],
        },
        "tensors": tensors,
    }


def set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, mt, gauss = js["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
