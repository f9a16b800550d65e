"""What a training run learns: a `Task` is a data source, a loss and a held-out evaluation.

The training loop (trainer.py) only knows how to step an optimizer. Everything that depends on
*what* is learned comes from a Task:

    batch  = task.train_loader.next_batch()        # (x, y) token windows, item sequences, pairs, ...
    loss   = task.loss_fn(model, batch)            # None: next-token cross-entropy, model(x, y)
    scores = task.evaluate(model)                  # {"val_loss": ..., maybe "val_bpb", "ndcg@10", ...}

Pre-training a language model is one Task (`language_model_task`, built from `cfg.data`);
fine-tuning (SFT, DPO) and the sequential recommender plug in as others, through the same loop:
the same schedules, checkpoints, exact resume, metrics, best/ selection and Ctrl-C handling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fornalha.errors import ConfigError
from fornalha.model.scoring import ScoreSums, bits_per_byte
from fornalha.train import distributed as D


@dataclass
class Task:
    """What a training run learns: where its batches come from, its loss, and its held-out evaluation."""

    train_loader: Any  # .next_batch() -> batch; .state_dict() -> JSON-able dict; .load_state_dict(d)
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # eval mode, no grad; must include "val_loss"
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None  # None: next-token cross-entropy
    batch_tokens: Callable[[Any], int] | None = None  # tokens in a batch for tokens/s; None: x.numel()
    best_metric: str = "val_loss"  # which evaluate() key chooses best/ and drives early stopping
    best_mode: str = "min"  # "min" or "max"
    vocab_size: int | None = None  # model vocabulary when there is no text tokenizer (e.g. item ids)
    tokenizer_dir: Path | None = None  # copied into RUN/tokenizer when given
    samples: Callable[[torch.nn.Module], list[str]] | None = None  # text samples shown at evaluations
    extra_files: dict[str, Any] = field(default_factory=dict)  # JSON files written into the run folder
    # changes the model once its start weights are in, before resume and the optimizers (e.g. LoRA adapters)
    prepare_model: Callable[[torch.nn.Module], None] | None = None
    # the command that continues this run, printed at Ctrl-C ({out}: the run folder)
    resume_command: str = "fornalha train --out {out} --resume"

    def __post_init__(self) -> None:
        if self.best_mode not in ("min", "max"):
            raise ConfigError(f"Task.best_mode must be 'min' or 'max', got {self.best_mode!r}")


def next_token_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The default loss: mean cross-entropy of each next token (targets of -1 are ignored)."""
    x, y = batch
    _, loss = model(x, y)
    return loss


def count_tokens(batch: Any) -> int:
    """The default batch size in tokens: the inputs' element count."""
    return int(batch[0].numel())


# --------------------------------------------------------------------------------------------
# The language-model task: token shards, a BPE (or char) tokenizer, val loss and bits per byte
# --------------------------------------------------------------------------------------------


def language_model_task(
    cfg, run_dir: Path, device: torch.device, dist: D.DistInfo, say=print
) -> tuple[Task, Any]:
    """(Task, tokenizer) for pre-training on `cfg.data`: a prepared dataset or a shards folder.

    Rank 0 trains the tokenizer and tokenizes first; the other ranks then find it all cached.
    """
    from fornalha.data.loader import TokenLoader
    from fornalha.data.shards import read_index
    from fornalha.tokenizer import load_tokenizer
    from fornalha.train.data import resolve_data

    t = cfg.train
    if dist.is_main:
        shards_dir, tok_dir = resolve_data(
            cfg.data.path, cfg.data.tokenizer, cfg.data.vocab_size, run_dir, t.progress
        )
    D.barrier(dist)
    if not dist.is_main:
        shards_dir, tok_dir = resolve_data(
            cfg.data.path, cfg.data.tokenizer, cfg.data.vocab_size, run_dir, False
        )
    tokenizer = load_tokenizer(tok_dir)
    val_split = "val" if "val" in read_index(shards_dir)["splits"] else "train"
    if val_split == "train":
        say("[yellow]warning:[/] the data has no val split; validating on the start of train (not held out)")
    loader = TokenLoader(
        shards_dir, "train", t.batch_size, cfg.seq_len, seed=t.seed, rank=dist.rank,
        world_size=dist.world_size, device=str(device),
    )  # fmt: skip
    token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.float64, device=device)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        loss, bpb = validation_loss(
            model, shards_dir, val_split, t.batch_size, cfg.seq_len, t.eval_batches, token_bytes, device, dist
        )
        return {"val_loss": loss, "val_bpb": bpb}

    def samples(model: torch.nn.Module) -> list[str]:
        prompt = [tokenizer.bos_id] + tokenizer.encode(t.sample_prompt)
        prompt = prompt[-(model.config.block_size // 2) :]
        idx = torch.tensor([prompt] * t.samples, dtype=torch.long, device=device)
        out = model.generate(idx, t.sample_tokens, temperature=t.sample_temperature, top_k=200)
        specials = set(tokenizer.special_ids.values())
        return [
            t.sample_prompt + tokenizer.decode([i for i in row[len(prompt) :] if i not in specials])
            for row in out.tolist()
        ]

    task = Task(
        train_loader=loader,
        evaluate=evaluate,
        vocab_size=tokenizer.vocab_size,
        tokenizer_dir=tok_dir,
        samples=samples if t.samples else None,
    )
    return task, tokenizer


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    shards_dir: Path,
    split: str,
    batch_size: int,
    seq_len: int,
    max_batches: int,
    token_bytes: torch.Tensor,
    device: torch.device,
    dist: D.DistInfo,
) -> tuple[float, float]:
    """(mean loss in nats per token, bits per byte) over the first `max_batches` batches of `split`.

    The same batches every time, so evaluations within a run are comparable. Bits per byte does
    not depend on the tokenizer: total nats over target tokens / (ln 2 · total UTF-8 bytes of
    those tokens). Targets of -1 (masked) and special tokens (0 bytes) count as nats but add no bytes.
    """
    from fornalha.data.loader import iter_eval_batches

    per_rank = math.ceil(max_batches / dist.world_size)
    sums = ScoreSums(device, token_bytes)
    batches = iter_eval_batches(
        shards_dir, split, batch_size, seq_len, max_batches=per_rank, device=str(device),
        rank=dist.rank, world_size=dist.world_size,
    )  # fmt: skip
    while True:
        batch = next(batches, None)
        # Under FSDP2 every forward is a collective, so all ranks run the same number: a rank whose
        # share of a short split ran out runs fully masked batches (targets -1 add nothing).
        if not D.any_rank(batch is not None, dist, device):
            break
        if batch is None:
            x = torch.zeros(1, seq_len, dtype=torch.long, device=device)
            batch = x, torch.full_like(x, -1)
        x, y = batch
        _, nll = model(x, y, loss_reduction="none")
        sums.add(nll, y)
    D.all_reduce_sum(sums.sums, dist)
    nats, count, n_bytes = sums.totals()
    if count == 0:
        raise ConfigError(
            f"the {split} split has too few tokens for one evaluation batch of {seq_len} tokens"
        )
    return nats / count, bits_per_byte(nats, max(n_bytes, 1))
