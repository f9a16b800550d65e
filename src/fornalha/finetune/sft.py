"""Supervised fine-tuning for chat (SFT): teach a pre-trained model to answer, with THE training loop.

    base run (best checkpoint + tokenizer) ──┐
    chat files ─► conversations ─► held-out split by question ─► ids + mask ─► packed rows
                                                                                 │
    train(cfg, out, task=Task(loader, loss, evaluate))  ◄────────────────────────┘
      loss     = cross-entropy on assistant tokens only (targets -1 elsewhere), documents masked
      evaluate = the same loss on the held-out conversations ("val_loss": nats per answer token)
    RUN/sft_report.json: held-out answer loss before (the base model) and after (best/) fine-tuning

Nothing here is a second trainer: schedules, evaluation cadence, early stopping, best/,
checkpoints, exact resume, the run lock and Ctrl-C all come from `fornalha.train.trainer.train`.

Packing. A conversation is short (a question and an answer: ~100 tokens) and a row is long (the
model's context), so a row holds several conversations one after another; `doc_ids` tells the
model which tokens belong together, and attention never crosses from one conversation into
another (`GPT.forward(..., doc_ids=...)`): each conversation is computed exactly as if alone,
without the padding a row per conversation would waste. `pack=False` gives one padded
conversation per row (the baseline the packing is measured against in benchmarks/LOG.md).

A conversation longer than the context keeps its first `seq_len + 1` tokens (counted as
truncated); one whose answer starts beyond that has nothing to learn and is dropped (counted).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fornalha.errors import ConfigError, DataError
from fornalha.finetune.chat_data import (
    ChatData,
    Example,
    prompt_ids,
    read_chat_data,
    render_with_mask,
    split_examples,
)
from fornalha.train.task import Task

SFT_DEFAULTS = "sft.yaml"  # src/fornalha/configs/sft.yaml: the train keys fine-tuning starts from
SETTINGS_FILE = "sft.json"
REPORT_FILE = "sft_report.json"

Tokenized = tuple[list[int], list[int]]  # (ids, mask)


@dataclass
class SFTSettings:
    """What `fornalha finetune sft` was asked; saved as RUN/sft.json so --resume reads the same data."""

    base_run: str
    data: list[str]
    val_fraction: float = 0.1
    pack: bool = True
    split_seed: int = 0
    lora: int | None = None  # LoRA rank (adapters only learn; merged into best/), None: every weight
    lora_alpha: float | None = None


# --------------------------------------------------------------------------------------------
# Conversations -> token rows
# --------------------------------------------------------------------------------------------


@dataclass
class Tokenization:
    seqs: list[Tokenized] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0


def tokenize_examples(tokenizer: Any, examples: Sequence[Example], seq_len: int) -> Tokenization:
    """Ids and masks of each conversation, cut to seq_len + 1 tokens (the row's inputs and targets)."""
    out = Tokenization()
    for ex in examples:
        ids, mask = render_with_mask(tokenizer, ex.messages)
        if len(ids) > seq_len + 1:
            ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
            out.truncated += 1
        if sum(mask[1:]) == 0:  # the answer starts beyond the context: nothing to learn
            out.dropped += 1
            continue
        out.seqs.append((ids, mask))
    return out


def pack_rows(
    seqs: Sequence[Tokenized], seq_len: int, pad_id: int, pack: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (x, y, doc) of shape [rows, seq_len], in the order given.

    Conversation i contributes inputs ids[:-1] and targets ids[1:] (-1 where mask is 0), under
    document id i. With pack, conversations follow each other in a row until the next one does not
    fit, which starts a new row; without, one per row. The rest of a row is padding (target -1,
    its own document id -1, so it attends only to other padding)."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    x: list[int] = []
    y: list[int] = []
    doc: list[int] = []
    for i, (ids, mask) in enumerate(seqs):
        n = len(ids) - 1
        if x and (not pack or len(x) + n > seq_len):
            rows.append((x, y, doc))
            x, y, doc = [], [], []
        x += ids[:-1]
        y += [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        doc += [i] * n
    if x:
        rows.append((x, y, doc))
    pad = [(seq_len - len(r[0])) for r in rows]
    return (
        torch.tensor([r[0] + [pad_id] * p for r, p in zip(rows, pad)], dtype=torch.long),
        torch.tensor([r[1] + [-1] * p for r, p in zip(rows, pad)], dtype=torch.long),
        torch.tensor([r[2] + [-1] * p for r, p in zip(rows, pad)], dtype=torch.long),
    )


class ChatLoader:
    """Batches of packed conversation rows, reshuffled every epoch; deterministic and resumable.

    Epoch e shuffles the conversations with seed + e, packs them into rows and hands them out
    batch_size at a time (under torchrun, rank r takes rows r, r + world, ...). The position is
    (epoch, row), which is all `state_dict` needs for exact resume."""

    def __init__(
        self,
        seqs: Sequence[Tokenized],
        batch_size: int,
        seq_len: int,
        pad_id: int,
        seed: int = 0,
        pack: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        self.seqs, self.batch_size, self.seq_len, self.pad_id = list(seqs), batch_size, seq_len, pad_id
        self.seed, self.pack, self.device = seed, pack, torch.device(device)
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.epoch, self.pos = 0, 0
        self._rows: tuple[torch.Tensor, ...] | None = None

    def _epoch_rows(self) -> tuple[torch.Tensor, ...]:
        if self._rows is None:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.seqs), generator=gen).tolist()
            rows = pack_rows([self.seqs[i] for i in order], self.seq_len, self.pad_id, self.pack)
            self._rows = tuple(r[self.rank :: self.world] for r in rows)
            if len(self._rows[0]) == 0:
                raise DataError("too few training conversations for one row per process")
        return self._rows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        picked: list[list[torch.Tensor]] = [[], [], []]
        need = self.batch_size
        while need:
            rows = self._epoch_rows()
            take = min(need, len(rows[0]) - self.pos)
            for part, r in zip(picked, rows):
                part.append(r[self.pos : self.pos + take])
            self.pos += take
            need -= take
            if self.pos == len(rows[0]):
                self.epoch, self.pos, self._rows = self.epoch + 1, 0, None
        x, y, doc = (torch.cat(p).to(self.device, non_blocking=True) for p in picked)
        return x, y, doc

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos, self._rows = int(state["epoch"]), int(state["pos"]), None


# --------------------------------------------------------------------------------------------
# Loss and held-out evaluation
# --------------------------------------------------------------------------------------------


def chat_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy over the assistant tokens of a batch of packed rows."""
    x, y, doc = batch
    _, loss = model(x, y, doc_ids=doc)
    return loss


@torch.no_grad()
def answer_loss(
    model: torch.nn.Module,
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    batch_size: int,
    device: str | torch.device,
    max_batches: int | None = None,
) -> float:
    """Mean nats per assistant token over held-out rows (the same rows, in order, every time)."""
    nats, count = 0.0, 0
    x_all, y_all, doc_all = rows
    for b, start in enumerate(range(0, len(x_all), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        x, y, doc = (t[start : start + batch_size].to(device) for t in (x_all, y_all, doc_all))
        _, loss = model(x, y, doc_ids=doc, loss_reduction="none")
        keep = y >= 0
        nats += loss.double()[keep].sum().item()
        count += int(keep.sum())
    if count == 0:
        raise DataError("the held-out conversations have no answer tokens to evaluate")
    return nats / count


def sft_task(
    tokenizer: Any,
    tokenizer_dir: Path,
    train_seqs: Sequence[Tokenized],
    val_seqs: Sequence[Tokenized],
    val_prompts: Sequence[list[int]],
    cfg: Any,
    device: torch.device,
    pack: bool = True,
    extra_files: dict[str, Any] | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
) -> Task:
    """The fine-tuning Task: packed chat rows, assistant-only loss, held-out answer loss; with
    ``lora_rank`` only LoRA adapters learn (`fornalha.finetune.lora`, merged into best/)."""
    t = cfg.train
    pad_id = _pad_id(tokenizer)
    loader = ChatLoader(train_seqs, t.batch_size, cfg.seq_len, pad_id, seed=t.seed, pack=pack, device=device)
    val_rows = pack_rows(val_seqs, cfg.seq_len, pad_id, pack)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": answer_loss(model, val_rows, t.batch_size, device, t.eval_batches)}

    def samples(model: torch.nn.Module) -> list[str]:
        """Answers to the first held-out questions, sampled as at every evaluation of a run."""
        texts = []
        for prompt in val_prompts[: t.samples]:
            idx = torch.tensor([prompt], dtype=torch.long, device=device)
            out = model.generate(idx, t.sample_tokens, temperature=t.sample_temperature, top_k=50)[0]
            specials = set((getattr(tokenizer, "special_ids", None) or {}).values())
            answer = [i for i in _until_stop(out[len(prompt) :].tolist(), tokenizer) if i not in specials]
            texts.append(tokenizer.decode(answer))
        return texts

    return Task(
        train_loader=loader,
        evaluate=evaluate,
        loss_fn=chat_loss,
        batch_tokens=lambda batch: int((batch[2] >= 0).sum()),  # real tokens, padding excluded
        vocab_size=tokenizer.vocab_size,
        tokenizer_dir=tokenizer_dir,
        samples=samples if t.samples and val_prompts else None,
        extra_files=extra_files or {},
        prepare_model=_lora_adder(lora_rank, lora_alpha) if lora_rank else None,
        resume_command="fornalha finetune sft --out {out} --resume",
    )


def _lora_adder(rank: int, alpha: float | None) -> Callable[[torch.nn.Module], None]:
    def add(model: torch.nn.Module) -> None:
        from fornalha.finetune.lora import add_lora

        n = add_lora(model, rank, alpha)
        total = sum(p.numel() for p in model.parameters())
        print(f"LoRA rank {rank}: {n:,} trainable parameters of {total:,} ({n / total:.1%})", file=sys.stderr)

    return add


def _pad_id(tokenizer: Any) -> int:
    specials = getattr(tokenizer, "special_ids", {}) or {}
    for name in ("<|pad|>", "<pad>", "<|endoftext|>"):
        if name in specials:
            return specials[name]
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def stop_ids_of(tokenizer: Any) -> set[int]:
    """Where an answer ends: the tokenizer's stop ids (fornalha: <|end|>, <|endoftext|>)."""
    if hasattr(tokenizer, "stop_ids"):
        return set(tokenizer.stop_ids())
    from fornalha.tokenizer.chat import stop_ids

    return stop_ids()


def _until_stop(ids: list[int], tokenizer: Any) -> list[int]:
    stops = stop_ids_of(tokenizer)
    for i, tok in enumerate(ids):
        if tok in stops:
            return ids[:i]
    return ids


# --------------------------------------------------------------------------------------------
# The command: fornalha finetune sft
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Everything read and tokenized, ready for the Task (and for the pipeline's answer evaluation)."""

    data: ChatData
    train: list[Example]
    held_out: list[Example]
    train_tok: Tokenization
    val_tok: Tokenization


def prepare_data(settings: SFTSettings, tokenizer: Any, seq_len: int) -> PreparedData:
    """Read, split (held-out by question), tokenize."""
    data = read_chat_data(settings.data)
    train, held = split_examples(data.examples, settings.val_fraction, settings.split_seed)
    train_tok = tokenize_examples(tokenizer, train, seq_len)
    val_tok = tokenize_examples(tokenizer, held, seq_len)
    if not train_tok.seqs or not val_tok.seqs:
        raise DataError(
            f"no conversation has an answer within the first {seq_len} tokens "
            f"({'train' if not train_tok.seqs else 'held-out'} side); raise train.seq_len or use shorter prompts"
        )
    return PreparedData(data, train, held, train_tok, val_tok)


def sft_config(settings: SFTSettings, out: Path, overrides: Sequence[str], resume: bool, meta: dict):
    """The run config: configs/sft.yaml (or the run's own config.yaml on --resume), the base model's
    shape, then --set overrides."""
    from importlib import resources

    from fornalha.train.config import ModelSection, load_config

    own = out / "config.yaml"
    source = (
        own if resume and own.is_file() else Path(str(resources.files("fornalha") / "configs" / SFT_DEFAULTS))
    )
    cfg = load_config(None, source, [*overrides, f"train.init_from={json.dumps(settings.base_run)}"])
    model = ModelSection(**{k: v for k, v in meta["model_config"].items() if k in ModelSection.model_fields})
    cfg = cfg.model_copy(update={"model": model})
    if cfg.seq_len > model.block_size:
        raise ConfigError(
            f"train.seq_len ({cfg.seq_len}) exceeds the base model's block_size ({model.block_size})"
        )
    return cfg


def finetune_sft(
    settings: SFTSettings,
    out: str | Path,
    overrides: Sequence[str] = (),
    resume: bool = False,
    restart: bool = False,
    console: Any = None,
) -> dict[str, Any]:
    """Fine-tune `settings.base_run` on chat data into run folder `out`; returns the SFT report.

    The report (also RUN/sft_report.json) holds the held-out answer loss before and after."""
    from rich.console import Console

    from fornalha.checkpoint import load_run
    from fornalha.device import pick_device
    from fornalha.tokenizer import find_tokenizer_dir
    from fornalha.train.trainer import train

    console = console or Console(stderr=True)
    out = Path(out)
    base_model, tokenizer, meta = load_run(settings.base_run)
    cfg = sft_config(settings, out, overrides, resume, meta)
    prepared = prepare_data(settings, tokenizer, cfg.seq_len)
    console.print(prepared.data.summary())
    console.print(
        f"split by question: {len(prepared.train):,} train / {len(prepared.held_out):,} held-out conversations; "
        f"truncated to {cfg.seq_len + 1} tokens: {prepared.train_tok.truncated + prepared.val_tok.truncated}, "
        f"dropped (answer beyond the context): {prepared.train_tok.dropped + prepared.val_tok.dropped}"
    )
    device = pick_device(cfg.train.device, announce=False)
    val_rows = pack_rows(prepared.val_tok.seqs, cfg.seq_len, _pad_id(tokenizer), settings.pack)
    before = answer_loss(
        base_model.to(device), val_rows, cfg.train.batch_size, device, cfg.train.eval_batches
    )
    del base_model
    console.print(f"held-out answer loss of the base model: {before:.4f} nats/token")

    prompts = [prompt_ids(tokenizer, ex.messages[:-1]) for ex in prepared.held_out[:8]]
    prompts = [p for p in prompts if len(p) < cfg.seq_len // 2]
    task = sft_task(
        tokenizer, find_tokenizer_dir(settings.base_run), prepared.train_tok.seqs, prepared.val_tok.seqs,
        prompts, cfg, device, settings.pack, extra_files={SETTINGS_FILE: asdict(settings)},
        lora_rank=settings.lora, lora_alpha=settings.lora_alpha,
    )  # fmt: skip
    summary = train(cfg, out, resume=resume, restart=restart, console=console, task=task)
    after = summary.get("best_val_loss")
    report = {
        "base_run": settings.base_run,
        "data": prepared.data.files,
        "conversations": len(prepared.data.examples),
        "train_conversations": len(prepared.train_tok.seqs),
        "held_out_conversations": len(prepared.val_tok.seqs),
        "val_fraction": settings.val_fraction,
        "packed": settings.pack,
        "truncated": prepared.train_tok.truncated + prepared.val_tok.truncated,
        "dropped_too_long": prepared.train_tok.dropped + prepared.val_tok.dropped,
        "bad_records": len(prepared.data.skipped),
        "bad_record_lines": [f"{w}: {why}" for w, why in prepared.data.skipped[:100]],
        "answer_loss_before": before,
        "answer_loss_after": after,
        "answer_ppl_before": math.exp(min(before, 50)),
        "answer_ppl_after": None if after is None else math.exp(min(after, 50)),
        "status": summary.get("status"),
        "steps": summary.get("steps"),
        "best_step": summary.get("best_step"),
        "wall_time_s": summary.get("wall_time_s"),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    console.print(
        f"[bold]held-out answer loss[/]: before {before:.4f} -> after {_fmt(after)} nats/token "
        f"({len(prepared.val_tok.seqs)} conversations); bad records skipped: {len(prepared.data.skipped)}"
        + (f" (first: {prepared.data.skipped[0][0]})" if prepared.data.skipped else "")
        + f"; report: {out / REPORT_FILE}"
    )
    return report


def load_settings(out: Path) -> SFTSettings:
    """The settings an SFT run was started with (for --resume)."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise ConfigError(f"{out} holds no {SETTINGS_FILE}: it is not a `fornalha finetune sft` run")
    try:
        return SFTSettings(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged: {exc}") from None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
