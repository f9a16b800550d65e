"""Validation loss, perplexity and bits per byte.

Three numbers describe how well a language model predicts held-out text:

* **loss**: the mean negative log-likelihood of each target token, in nats
  (``-ln p(token | everything before it)``), averaged over the scored tokens;
* **perplexity** = ``exp(loss)``: "the model is as unsure as a uniform choice among this many
  tokens";
* **bits per byte (bpb)**: the same information measured per UTF-8 byte of text instead of per
  token. Loss per token depends on the tokenizer (a BPE token carries ~4 bytes, a character ~1),
  so two models with different tokenizers can only be compared in bpb::

      bpb = sum of nats over the scored target tokens / (ln 2 · their UTF-8 bytes)

  ``ln 2`` turns nats into bits. The bytes of each target token come from
  ``tokenizer.token_bytes()``. Special tokens such as ``<|bos|>`` have 0 bytes: predicting a
  document boundary adds nats but no bytes, exactly as in training's validation (so the bpb here
  equals the run's ``val_bpb`` on the same windows, and errs on the pessimistic side).

Long texts are scored in windows of the model's context length ``seq_len``. With a ``stride``
smaller than ``seq_len`` the windows overlap and each token is predicted with more context; every
target token is still scored exactly once (the overlap only provides context)::

    tokens   t0 t1 t2 t3 t4 t5 t6 t7 t8 ...      seq_len = 4, stride = 2
    window 1 [t0 t1 t2 t3] -> scores t1 t2 t3 t4
    window 2       [t2 t3 t4 t5] -> scores t5 t6   (t3, t4 already scored: context only)
    window 3             [t4 t5 t6 t7] -> scores t7 t8

The default stride equals ``seq_len`` (non-overlapping windows), which is what training's
validation does, so the numbers here match the run's loss curve.

Everything is deterministic: the model runs in eval mode under ``torch.no_grad`` and sums are
accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fornalha.errors import DataError
from fornalha.model.scoring import LN2, ScoreSums, bits_per_byte

__all__ = ["LN2", "bits_per_byte"]  # re-exported: `fornalha.evaluate.loss.bits_per_byte` is public


@dataclass
class LossResult:
    """What `evaluate_*` returns. All sums are over the scored target tokens.

    tokens: scored target tokens; nats: their summed negative log-likelihood (the numerator of
    bpb); bytes: UTF-8 bytes of those targets (0 for specials). bpb is None when the byte lengths
    are unknown.
    """

    loss: float
    ppl: float
    bpb: float | None
    tokens: int
    nats: float
    bytes: int
    source: str | None = None
    split: str | None = None

    @property
    def bytes_per_token(self) -> float | None:
        """Average UTF-8 bytes per scored token (the tokenizer's compression on this text)."""
        return self.bytes / self.tokens if self.tokens and self.bytes else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bytes_per_token"] = self.bytes_per_token
        return d


class _Accumulator(ScoreSums):
    """`ScoreSums` that also turns into a `LossResult` at the end."""

    def result(self, source: str | None = None, split: str | None = None) -> LossResult:
        nats, tokens, n_bytes = self.totals()
        if tokens == 0:
            raise DataError(f"nothing to evaluate: no target tokens in {source or 'the input'}")
        loss = nats / tokens
        bpb = bits_per_byte(nats, n_bytes) if n_bytes > 0 else None
        return LossResult(
            loss=loss,
            ppl=math.exp(min(loss, 700.0)),
            bpb=bpb,
            tokens=tokens,
            nats=nats,
            bytes=n_bytes,
            source=source,
            split=split,
        )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _per_token_nll(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [B, T]; 0 where y == -1."""
    _, nll = model(x, y, loss_reduction="none")
    return nll


# --------------------------------------------------------------------------------------------
# (b) token batches
# --------------------------------------------------------------------------------------------


def evaluate_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: np.ndarray | None = None,
    *,
    max_tokens: int | None = None,
    source: str | None = None,
    split: str | None = None,
) -> LossResult:
    """Loss, perplexity and bpb over an iterator of (x, y) batches (y = x shifted, -1 ignored).

    This is how token shards are evaluated (`fornalha.data.loader.iter_eval_batches`): each row is
    an independent window, every target in it is scored. ``max_tokens`` scores exactly the first
    that many targets (in row-major order) and stops.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    acc = _Accumulator(device, None if token_bytes is None else torch.as_tensor(np.asarray(token_bytes)))
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if max_tokens is not None:
                left = max_tokens - acc.tokens
                if left <= 0:
                    break
                keep = (y >= 0).flatten().cumsum(0).view_as(y) <= left
                y = torch.where(keep, y, torch.full_like(y, -1))
            acc.add(_per_token_nll(model, x, y), y)
    finally:
        model.train(was_training)
    return acc.result(source, split)


# --------------------------------------------------------------------------------------------
# (a) a stream of tokens, in strided windows
# --------------------------------------------------------------------------------------------


def iter_windows(
    chunks: Iterable[Sequence[int]], seq_len: int, stride: int | None = None
) -> Iterator[tuple[list[int], list[int]]]:
    """Cut a token stream (given as chunks, e.g. one per document) into scoring windows.

    Yields (inputs, targets): inputs are up to ``seq_len`` tokens, targets the next tokens with
    -1 where a target was already scored by an earlier window. Every token of the stream except
    the first is a target exactly once. The last window may be shorter than ``seq_len``.
    """
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}")
    overlap = seq_len - stride  # targets at the start of every later window that are context only
    buf: list[int] = []
    first = True
    for chunk in chunks:
        buf.extend(chunk)
        while len(buf) >= seq_len + 1:
            done = 0 if first else overlap
            yield buf[:seq_len], [-1] * done + buf[done + 1 : seq_len + 1]
            first = False
            del buf[:stride]
    done = 0 if first else overlap
    if len(buf) - 1 > done:  # a tail with targets not yet scored
        yield buf[:-1], [-1] * done + buf[done + 1 :]


def _take(chunks: Iterable[Sequence[int]], n: int) -> Iterator[Sequence[int]]:
    """The first ``n`` tokens of a chunked stream."""
    left = n
    for chunk in chunks:
        if left <= 0:
            return
        chunk = chunk[:left]
        left -= len(chunk)
        yield chunk


def evaluate_token_stream(
    model: torch.nn.Module,
    chunks: Iterable[Sequence[int]],
    token_bytes: np.ndarray | None = None,
    *,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    source: str | None = None,
    split: str | None = None,
) -> LossResult:
    """Score a token stream in windows of ``seq_len`` (default: the model's block_size).

    ``chunks`` are consecutive pieces of one stream (documents with their `<|bos|>`). Windows are
    batched ``batch_size`` at a time; a short last window is padded with ignored targets, which
    cannot change the other positions because attention is causal. ``max_tokens`` scores exactly
    the first ``max_tokens`` targets.
    """
    seq_len = seq_len or model.config.block_size
    if max_tokens is not None:
        chunks = _take(chunks, max_tokens + 1)  # n + 1 tokens hold n targets
    was_training = model.training
    model.eval()
    device = _model_device(model)
    acc = _Accumulator(device, None if token_bytes is None else torch.as_tensor(np.asarray(token_bytes)))

    def flush(rows: list[tuple[list[int], list[int]]]) -> None:
        width = max(len(x) for x, _ in rows)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        y = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, (xs, ys) in enumerate(rows):
            x[i, : len(xs)] = torch.tensor(xs)
            y[i, : len(ys)] = torch.tensor(ys)
        x, y = x.to(device), y.to(device)
        acc.add(_per_token_nll(model, x, y), y)

    try:
        rows: list[tuple[list[int], list[int]]] = []
        for window in iter_windows(chunks, seq_len, stride):
            rows.append(window)
            if len(rows) == batch_size:
                flush(rows)
                rows = []
        if rows:
            flush(rows)
    finally:
        model.train(was_training)
    return acc.result(source, split)


def iter_document_tokens(tokenizer: Any, texts: Iterable[str], batch_docs: int = 256) -> Iterator[list[int]]:
    """Each document's ids with `<|bos|>` in front, encoding ``batch_docs`` documents at a time
    (``encode_batch`` runs on several threads when the tokenizer has it)."""

    def encode_many(docs: list[str]) -> list[list[int]]:
        if hasattr(tokenizer, "encode_batch"):
            return tokenizer.encode_batch(docs)
        return [tokenizer.encode(d) for d in docs]

    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_docs:
            for ids in encode_many(batch):
                yield [tokenizer.bos_id, *ids]
            batch = []
    if batch:
        for ids in encode_many(batch):
            yield [tokenizer.bos_id, *ids]


def evaluate_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    source: str | None = None,
    split: str | None = None,
) -> LossResult:
    """Loss, perplexity and bpb of ``model`` on documents, tokenized with ``tokenizer``.

    The documents are joined into one stream, `<|bos|>` before each (as in the token shards), and
    scored with `evaluate_token_stream`.
    """
    return evaluate_token_stream(
        model,
        iter_document_tokens(tokenizer, texts),
        tokenizer.token_bytes(),
        seq_len=seq_len,
        stride=stride,
        batch_size=batch_size,
        max_tokens=max_tokens,
        source=source,
        split=split,
    )


def _dataset_iter_texts(dataset_dir: Path, split: str) -> Iterator[str]:
    """The data stage's document reader (a missing folder or split is a DataError)."""
    from fornalha.data.dataset import iter_texts

    return iter_texts(dataset_dir, split)


def evaluate_dataset(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset_dir: str | Path,
    split: str = "val",
    *,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> LossResult:
    """Evaluate on one split of a prepared dataset folder (`fornalha data prepare`) or of a token
    shards folder (`fornalha data tokenize`, recognised by its index.json).

    A dataset folder is tokenized here with the run's tokenizer, so any prepared text works; a
    shards folder must have been made with a tokenizer of the same vocabulary.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DataError(f"dataset folder not found: {dataset_dir}")
    if (dataset_dir / "index.json").is_file():
        return _evaluate_shards(model, tokenizer, dataset_dir, split, seq_len, batch_size, max_tokens)
    if not (dataset_dir / split).is_dir():
        raise DataError(f"{dataset_dir} has no {split!r} split (expected a folder {dataset_dir / split})")
    return evaluate_texts(
        model,
        tokenizer,
        _dataset_iter_texts(dataset_dir, split),
        seq_len=seq_len,
        stride=stride,
        batch_size=batch_size,
        max_tokens=max_tokens,
        source=str(dataset_dir),
        split=split,
    )


def _evaluate_shards(
    model: torch.nn.Module,
    tokenizer: Any,
    shards_dir: Path,
    split: str,
    seq_len: int | None,
    batch_size: int,
    max_tokens: int | None,
) -> LossResult:
    import json

    from fornalha.data.loader import iter_eval_batches

    index = json.loads((shards_dir / "index.json").read_text())
    vocab = index.get("vocab_size")
    if vocab is not None and vocab != tokenizer.vocab_size:
        raise DataError(
            f"shards in {shards_dir} use a vocabulary of {vocab} tokens, the run's tokenizer has "
            f"{tokenizer.vocab_size}: evaluate on the prepared dataset folder instead"
        )
    seq_len = seq_len or model.config.block_size
    batches = iter_eval_batches(shards_dir, split, batch_size, seq_len)
    return evaluate_batches(
        model, batches, tokenizer.token_bytes(), max_tokens=max_tokens, source=str(shards_dir), split=split
    )
