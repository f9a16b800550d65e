"""Direct Preference Optimization: teach a model which of two answers people prefer, without a reward model.

DPO (Rafailov et al., 2023) starts from a model π_ref (here: the run we fine-tune, frozen) and a
copy π that learns. For a prompt x with a preferred reply y_w and a dispreferred y_l:

    log π(y | x)   = Σ over the reply's tokens of log π(token | everything before)   (prompt tokens: no loss)
    reward(y)      = β · (log π(y | x) − log π_ref(y | x))          "implicit reward": how much π moved
    margin         = reward(y_w) − reward(y_l)
    loss           = −log σ(margin)                                  small when π prefers y_w more than π_ref did

β (default 0.1) sets how far π may move from π_ref: a small β needs large log-probability changes
for the same loss. π_ref never changes, so its log-probabilities of every pair are computed ONCE,
before training, and cached (RUN/cache/dpo_reference.json; a resumed run reads them back).

What is reported on the held-out pairs (prompts never trained on):

    val_loss              the DPO loss above                              (picks best/: lowest wins)
    reward_margin         mean margin; 0 at the start (π = π_ref), grows as π learns the preference
    preference_accuracy   share of pairs with margin > 0 (ties count ½): 0.5 at the start by construction
    logp_accuracy         share where π itself gives y_w a higher mean per-token log-probability than
                          y_l; needs no reference, so two models can be compared on it directly
    chosen_reward, rejected_reward    the mean implicit rewards (TRL logs the same figures)

best/ is chosen by val_loss (lowest): it is smooth, and it is what is optimized. Accuracy on a
few dozen held-out pairs moves in coarse steps and ties; it is reported at every evaluation.

The training itself is THE training loop (`fornalha.train.trainer.train`) with a DPO `Task`:
its loader yields batches of pairs (chosen rows, then rejected rows, padded), its loss is the
one above, its evaluation the held-out figures. Dropout is switched off: π_ref was scored
without it, and dropout noise in π would blur every margin. With `--lora RANK` the start
weights stay frozen and only the adapters learn (`fornalha.finetune.lora`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fornalha.errors import ConfigError
from fornalha.finetune.preference_data import EncodedReply, encode_pair
from fornalha.tokenizer.chat import SPECIAL_IDS

PAD_ID = SPECIAL_IDS["<|pad|>"]


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards) from summed reply log-probabilities [B]."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return loss, chosen_reward.detach(), rejected_reward.detach()


def reply_logps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ log π(y_t | x_≤t) over each row's reply tokens (targets of -1 add nothing): [rows]."""
    _, nll = model(x, y, loss_reduction="none")  # [rows, T]; 0 where y == -1
    return -nll.sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Batches of pairs
# --------------------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """B pairs as 2B rows: x, y [2B, T] (rows 0..B-1 chosen, B..2B-1 rejected), their reference
    log-probabilities ref [2B] and reply lengths n_reply [2B]."""

    x: torch.Tensor
    y: torch.Tensor
    ref: torch.Tensor
    n_reply: torch.Tensor

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(*(t.to(device) for t in (self.x, self.y, self.ref, self.n_reply)))


def collate(
    encoded: Sequence[tuple[EncodedReply, EncodedReply]], ref: torch.Tensor | None = None
) -> PairBatch:
    """Pad the pairs into one [2B, T] batch; x = ids[:-1], y = ids[1:] with -1 off the reply."""
    rows = [c for c, _ in encoded] + [r for _, r in encoded]
    T = max(len(r.ids) for r in rows) - 1
    x = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        ids, mask = torch.tensor(row.ids), torch.tensor(row.mask)
        n = len(row.ids) - 1
        x[i, :n] = ids[:-1]
        y[i, :n] = torch.where(mask[1:] == 1, ids[1:], -1)
    n_reply = (y >= 0).sum(dim=1)
    if ref is None:
        ref = torch.zeros(len(rows))
    return PairBatch(x, y, ref.float(), n_reply)


class PairLoader:
    """Shuffled batches of training pairs, epoch after epoch; its position is part of a checkpoint.

    Epoch e visits the pairs in the order of a permutation seeded by (seed, e), so a resumed run
    sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        encoded: list[tuple[EncodedReply, EncodedReply]],
        ref: torch.Tensor,  # [N, 2]: reference log-probs of (chosen, rejected)
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.encoded, self.ref, self.batch_size = encoded, ref, batch_size
        self.seed, self.device = seed, device
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.encoded), generator=g).tolist()

    def next_batch(self) -> PairBatch:
        if self.pos + self.batch_size > len(self._order):  # a new epoch; the short tail is dropped
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.pos : self.pos + self.batch_size]
        self.pos += len(idx)
        ref = torch.cat([self.ref[idx, 0], self.ref[idx, 1]])
        return collate([self.encoded[i] for i in idx], ref).to(self.device)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.pos = int(state["seed"]), int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


def fixed_batches(
    encoded: list[tuple[EncodedReply, EncodedReply]], ref: torch.Tensor | None, batch_size: int
) -> list[PairBatch]:
    """The held-out pairs in order, in batches: the same batches at every evaluation."""
    out = []
    for start in range(0, len(encoded), batch_size):
        part = ref[start : start + batch_size] if ref is not None else None
        out.append(collate(encoded[start : start + batch_size], None if part is None else part.T.reshape(-1)))
    return out


@torch.no_grad()
def score_pairs(model: nn.Module, batches: Sequence[PairBatch], device: torch.device) -> torch.Tensor:
    """[N, 2] summed reply log-probabilities (chosen, rejected) of every pair, in order."""
    model.eval()
    out = []
    for batch in batches:
        b = batch.to(device)
        logps = reply_logps(model, b.x, b.y).double().cpu()
        half = logps.numel() // 2
        out.append(torch.stack([logps[:half], logps[half:]], dim=1))
    return torch.cat(out)


def preference_metrics(
    policy: torch.Tensor, ref: torch.Tensor, n_reply: torch.Tensor, beta: float
) -> dict[str, float]:
    """The held-out figures (module docstring) from [N, 2] log-probs of policy and reference and
    [N, 2] reply lengths."""
    loss, chosen, rejected = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
    margin = chosen - rejected
    tie = margin.abs() < 1e-6
    mean_logp = policy / n_reply.clamp(min=1)
    own = mean_logp[:, 0] - mean_logp[:, 1]
    return {
        "val_loss": float(loss),
        "reward_margin": float(margin.mean()),
        "preference_accuracy": float(((margin > 0) & ~tie).double().mean() + 0.5 * tie.double().mean()),
        "logp_accuracy": float((own > 0).double().mean() + 0.5 * (own == 0).double().mean()),
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
    }


# --------------------------------------------------------------------------------------------
# The Task the training loop runs
# --------------------------------------------------------------------------------------------


@dataclass
class DPOData:
    """Encoded pairs with their cached reference log-probabilities."""

    train: list[tuple[EncodedReply, EncodedReply]]
    held_out: list[tuple[EncodedReply, EncodedReply]]
    train_ref: torch.Tensor  # [N_train, 2]
    held_out_ref: torch.Tensor  # [N_held_out, 2]


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (attention's dropout_p and the residual nn.Dropout layers)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    if hasattr(model, "config") and hasattr(model.config, "dropout"):
        model.config.dropout = 0.0


def dpo_task(
    data: DPOData,
    beta: float,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    tokenizer_dir: Path,
    vocab_size: int,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    extra_files: dict[str, Any] | None = None,
    say=print,
):
    """The `Task` for `fornalha.train.trainer.train`: pairs in, DPO loss out, held-out figures back."""
    from fornalha.train.task import Task

    if beta <= 0 or not math.isfinite(beta):
        raise ConfigError(f"--beta must be a positive number, got {beta}")
    held_out = fixed_batches(data.held_out, data.held_out_ref, batch_size)
    n_reply = torch.cat([torch.stack(b.n_reply.chunk(2), dim=1) for b in held_out])

    def loss_fn(model: nn.Module, batch: PairBatch) -> torch.Tensor:
        logps = reply_logps(model, batch.x, batch.y)
        half = logps.numel() // 2
        loss, _, _ = dpo_loss(logps[:half], logps[half:], batch.ref[:half], batch.ref[half:], beta)
        return loss

    def evaluate(model: nn.Module) -> dict[str, float]:
        policy = score_pairs(model, held_out, torch.device(device))
        return preference_metrics(policy, data.held_out_ref.double(), n_reply, beta)

    def prepare_model(model: nn.Module) -> None:
        disable_dropout(model)
        if lora_rank:
            from fornalha.finetune.lora import add_lora

            n = add_lora(model, lora_rank, lora_alpha)
            total = sum(p.numel() for p in model.parameters())
            say(f"LoRA rank {lora_rank}: {n:,} trainable parameters of {total:,} ({n / total:.1%})")

    return Task(
        train_loader=PairLoader(data.train, data.train_ref, batch_size, seed=seed, device=device),
        evaluate=evaluate,
        loss_fn=loss_fn,
        batch_tokens=lambda b: int((b.x != PAD_ID).sum()),
        best_metric="val_loss",
        best_mode="min",
        vocab_size=vocab_size,
        tokenizer_dir=tokenizer_dir,
        extra_files=extra_files or {},
        prepare_model=prepare_model,
    )


# --------------------------------------------------------------------------------------------
# Reference log-probabilities, computed once and cached
# --------------------------------------------------------------------------------------------


def encode_all(tokenizer, pairs, max_len: int) -> tuple[list[tuple[EncodedReply, EncodedReply]], int]:
    """(encoded pairs, how many were truncated to the context)."""
    encoded = [encode_pair(tokenizer, p, max_len) for p in pairs]
    return encoded, sum(c.truncated or r.truncated for c, r in encoded)


def reference_logps(
    model: nn.Module,
    data: dict[str, list[tuple[EncodedReply, EncodedReply]]],
    batch_size: int,
    device: torch.device,
    cache: Path,
    key: str,
    say=print,
) -> dict[str, torch.Tensor]:
    """{split: [N, 2] reference log-probs}: read from `cache` when its key matches, else computed
    with `model` (the frozen start model) and written there."""
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                say(f"reference log-probabilities: cached in {cache}")
                return {k: torch.tensor(v, dtype=torch.float64) for k, v in saved["logps"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    out = {}
    for split, encoded in data.items():
        out[split] = score_pairs(model, fixed_batches(encoded, None, batch_size), device)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "logps": {k: v.tolist() for k, v in out.items()}}))
    tmp.replace(cache)
    say(
        f"reference log-probabilities of {sum(len(v) for v in data.values())} pairs computed once; cached in {cache}"
    )
    return out


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class DPOSettings:
    beta: float = 0.1
    held_out: float = 0.1
    lora: int | None = None
    lora_alpha: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# `fornalha finetune dpo`: config, data, reference, the loop, the report
# --------------------------------------------------------------------------------------------

#: DPO's starting config on top of the start run's config.yaml (any --set wins over these).
#: AdamW for every parameter (Muon's orthogonalised steps are too large for small moves away from
#: π_ref, and LoRA's thin matrices); no time-budget or samples inherited from pre-training.
DPO_DEFAULTS: tuple[str, ...] = (
    "train.optimizer=adamw", "train.lr=3e-4", "train.matrix_lr=null", "train.embedding_lr=null",
    "train.head_lr=null", "train.vector_lr=null", "train.weight_decay=0.0", "train.batch_size=8",
    "train.grad_accum=1", "train.tokens_per_step=null", "train.max_steps=200", "train.schedule=cosine",
    "train.warmup=0.05", "train.eval_interval=25", "train.checkpoint_interval=null", "train.samples=0",
    "train.patience=null", "train.time_budget_minutes=null",
)  # fmt: skip


def reply_lengths(encoded: Sequence[tuple[EncodedReply, EncodedReply]]) -> torch.Tensor:
    """[N, 2] reply tokens (targets) of each (chosen, rejected)."""
    return torch.tensor([[sum(c.mask[1:]), sum(r.mask[1:])] for c, r in encoded], dtype=torch.float64)


def finetune_dpo(
    run: Path,
    data: Path,
    out: Path,
    settings: DPOSettings,
    sets: Sequence[str] = (),
    time_budget: float | None = None,
    device: str | None = None,
    resume: bool = False,
    console=None,
) -> dict[str, Any]:
    """Fine-tune `run`'s best model with DPO on the pairs in `data` into the run folder `out`.

    Returns the report also written to OUT/dpo_report.json: data counts, and the held-out figures
    of the start model (`before`) and of best/ (`after`).
    """
    from rich.console import Console

    from fornalha.checkpoint import load_run, resolve_checkpoint
    from fornalha.device import pick_device
    from fornalha.errors import DataError
    from fornalha.finetune.preference_data import read_preference_file, split_pairs
    from fornalha.train.config import load_config
    from fornalha.train.lock import check_out_folder
    from fornalha.train.trainer import train

    console = console or Console(stderr=True)
    say = console.print
    run, data, out = Path(run), Path(data), Path(out)
    if not (run / "tokenizer").is_dir():
        raise ConfigError(f"--run {run} is not a run folder (no tokenizer/ inside)")
    resolve_checkpoint(run, "best")  # CheckpointError (exit 2) when it holds no checkpoint
    if settings.beta <= 0 or not math.isfinite(settings.beta):
        raise ConfigError(f"--beta must be a positive number, got {settings.beta}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # PairLoader does not shard pairs across processes
        raise ConfigError("fornalha finetune dpo runs in one process; launch it without torchrun")
    if settings.lora is not None and settings.lora < 1:
        raise ConfigError(f"--lora rank must be a positive integer, got {settings.lora}")
    check_out_folder(out)
    if not resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and (out / "dpo_settings.json").is_file():  # a resumed run keeps its own settings
        saved = json.loads((out / "dpo_settings.json").read_text())
        settings = DPOSettings(**{k: saved[k] for k in DPOSettings.__dataclass_fields__ if k in saved})

    # a fresh run: the start run's config with DPO's defaults; a resumed one: its own config.yaml
    own = resume and (out / "config.yaml").is_file()
    config_file = out / "config.yaml" if own else run / "config.yaml"
    preset = None if config_file.is_file() else "tiny"  # a run without config.yaml: tiny's train settings
    overrides = [*(() if own else DPO_DEFAULTS), *sets, f"train.init_from={json.dumps(str(run))}"]
    if time_budget is not None:
        overrides.append(f"train.time_budget_minutes={time_budget}")
    if device is not None:
        overrides.append(f"train.device={device}")
    cfg = load_config(preset, config_file if preset is None else None, overrides)
    t = cfg.train

    # the pairs: read (bad lines counted), split by prompt, encoded to the model's context
    pf = read_preference_file(data)
    shown = "; ".join(f"line {n}: {why}" for n, why in pf.bad[:5]) + ("; …" if len(pf.bad) > 5 else "")
    if not pf.pairs:
        raise DataError(f"--data {data} holds no valid preference pair ({len(pf.bad)} bad line(s): {shown})")
    if pf.bad:
        say(f"[yellow]{len(pf.bad)} bad record(s) skipped[/] in {data} ({shown})", soft_wrap=True)
    train_pairs, held_pairs = split_pairs(pf.pairs, settings.held_out, t.seed)
    if len(train_pairs) < t.batch_size:
        raise DataError(
            f"{len(train_pairs)} training pairs are fewer than one batch (train.batch_size={t.batch_size})"
        )
    start_model, tokenizer, start_meta = load_run(run, "best")
    max_len = start_model.config.block_size + 1  # x and y are the ids shifted by one
    enc_train, trunc_train = encode_all(tokenizer, train_pairs, max_len)
    enc_held, trunc_held = encode_all(tokenizer, held_pairs, max_len)
    say(
        f"{len(pf.pairs)} pairs from {data} ({', '.join(f'{v} {k}' for k, v in pf.shapes.items())}): "
        f"{len(train_pairs)} train, {len(held_pairs)} held out (by prompt); "
        f"{trunc_train + trunc_held} cut to the {max_len - 1}-token context"
    )

    # π_ref: the start model, scored once (cached for a resume)
    dev = pick_device(t.device, announce=False)  # the training loop announces it
    start_model.to(dev)
    key = cache_key(
        pf.sha256, start_meta.get("files"), start_meta.get("path"), max_len, settings.held_out, t.seed
    )
    refs = reference_logps(
        start_model, {"train": enc_train, "held_out": enc_held}, t.batch_size, dev,
        out / "cache" / "dpo_reference.json", key, say,
    )  # fmt: skip
    del start_model
    n_reply = reply_lengths(enc_held)
    before = preference_metrics(refs["held_out"], refs["held_out"], n_reply, settings.beta)

    data_report = {
        "data": str(data), "sha256": pf.sha256, "pairs": len(pf.pairs), "shapes": pf.shapes,
        "bad": len(pf.bad), "bad_lines": [{"line": n, "reason": why} for n, why in pf.bad[:100]],
        "train_pairs": len(train_pairs), "held_out_pairs": len(held_pairs),
        "truncated": trunc_train + trunc_held, "max_tokens": max_len - 1,
    }  # fmt: skip
    task = dpo_task(
        DPOData(enc_train, enc_held, refs["train"], refs["held_out"]),
        settings.beta, t.batch_size, t.seed, dev, run / "tokenizer", tokenizer.vocab_size,
        settings.lora, settings.lora_alpha,
        extra_files={"dpo_settings.json": settings.to_dict() | {"start_run": str(run)}, "dpo_data.json": data_report},
        say=say,
    )  # fmt: skip
    task.resume_command = f"fornalha finetune dpo --run {run} --data {data} --out {{out}} --resume"
    summary = train(cfg, out, resume=resume, console=console, task=task)

    after = summary.get("best") or {}
    report = {
        "start_run": str(run),
        "settings": settings.to_dict(),
        "data": data_report,
        "before": before,
        "after": after,
        "final": None,
        "best_step": summary.get("best_step"),
        "steps": summary.get("steps"),
        "status": summary.get("status"),
        "best_checkpoint": summary.get("best_checkpoint"),
    }
    if (out / "metrics.jsonl").is_file():
        from fornalha.train.monitor import read_metrics

        evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "eval"]
        if evals:
            report["final"] = {k: evals[-1].get(k) for k in before}
    (out / "dpo_report.json").write_text(json.dumps(report, indent=2) + "\n")
    show_report(report, console)
    return report


def show_report(report: dict[str, Any], console) -> None:
    """Before/after table of the held-out figures."""
    from rich.table import Table

    table = Table(title="DPO, held-out pairs", title_justify="left")
    table.add_column("metric")
    table.add_column("start model", justify="right")
    table.add_column(f"best (step {report['best_step']})", justify="right")
    for key in ("preference_accuracy", "logp_accuracy", "reward_margin", "val_loss"):
        after = report["after"].get(key)
        table.add_row(key, f"{report['before'][key]:.4f}", "n/a" if after is None else f"{after:.4f}")
    console.print(table)
