"""How well a tokenizer compresses text: bytes per token, next to two baselines.

A model's cost grows with the number of tokens, so a tokenizer that turns the same text into
fewer tokens lets the same model read more text per step. We report, on a dataset split:

* **bytes/token** — UTF-8 bytes of text per token (higher is better compression);
* **chars/token** — characters per token;
* the two baselines every text has: the *byte fallback* (one token per byte, bytes/token = 1,
  what a byte-level model sees before any merge) and the *character level* (one token per
  character, what a nanoGPT-style char tokenizer gives).

`compression` is how many times fewer tokens than the byte fallback: equal to bytes/token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def measure(tokenizer: Any, texts: Iterable[str], batch_docs: int = 256) -> dict[str, Any]:
    """Count tokens, bytes, characters and documents of ``texts`` under ``tokenizer``."""
    tokens = n_bytes = chars = documents = 0
    start = time.perf_counter()
    batch: list[str] = []

    def flush() -> int:
        return sum(len(ids) for ids in tokenizer.encode_batch(batch))

    for text in texts:
        batch.append(text)
        n_bytes += len(text.encode("utf-8"))
        chars += len(text)
        documents += 1
        if len(batch) >= batch_docs:
            tokens += flush()
            batch = []
    if batch:
        tokens += flush()
    seconds = time.perf_counter() - start
    return {"documents": documents, "bytes": n_bytes, "chars": chars, "tokens": tokens, "seconds": seconds}


def compare(counts: dict[str, Any], name: str = "tokenizer") -> list[dict[str, Any]]:
    """Rows for the report: the tokenizer, then the character-level and byte-fallback baselines.

    Each row: name, tokens, bytes_per_token, chars_per_token, tokens_vs_bytes (fraction of the
    byte fallback's token count; lower is better).
    """
    n_bytes, chars = counts["bytes"], counts["chars"]

    def row(label: str, tokens: int) -> dict[str, Any]:
        return {
            "name": label,
            "tokens": tokens,
            "bytes_per_token": n_bytes / tokens if tokens else 0.0,
            "chars_per_token": chars / tokens if tokens else 0.0,
            "tokens_vs_bytes": tokens / n_bytes if n_bytes else 0.0,
        }

    return [
        row(name, counts["tokens"]),
        row("char level", chars),
        row("byte fallback", n_bytes),
    ]


def evaluate_tokenizer(
    tokenizer_dir: str | Path, dataset_dir: str | Path, split: str = "val", max_bytes: int | None = None
) -> dict[str, Any]:
    """Measure a saved tokenizer on a dataset split; returns counts and the comparison rows."""
    from fornalha.data.dataset import iter_texts
    from fornalha.tokenizer import load_tokenizer
    from fornalha.tokenizer.bpe import limit_bytes

    tokenizer = load_tokenizer(tokenizer_dir)
    counts = measure(tokenizer, limit_bytes(iter_texts(dataset_dir, split), max_bytes))
    name = f"{tokenizer.kind} (vocab {tokenizer.vocab_size})"
    return {"split": split, **counts, "rows": compare(counts, name)}
