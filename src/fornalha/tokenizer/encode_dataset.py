"""Tokenizing a prepared dataset into token shards: `fornalha data tokenize`.

    dataset folder ─► documents, in batches of ~4 MB ─► tokenizer.encode_batch ─► <|bos|> + ids
                  ─► ShardWriter (fixed-size .bin files) ─► index.json, written last

The shard *format* (header, reading, memory-mapping, the index) lives in `fornalha.data.shards`, below
the tokenizer, so the training loader reads shards without knowing any tokenizer; this module sits
above both because it needs a dataset *and* a tokenizer.

Caching: `index.json` is written last; when one made from the same dataset content and the same
tokenizer (sha256 of both) and the same shard size is found, it is returned without work.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.data.dataset import dataset_splits, iter_texts
from fornalha.data.shards import (
    HEADER,
    VERSION,
    ShardWriter,
    dataset_sha256,
    dtype_for_vocab,
    read_index,
    tokenizer_sha256,
)
from fornalha.errors import DataError, FornalhaError
from fornalha.progress import byte_progress
from fornalha.tokenizer import find_tokenizer_dir, load_tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000
_BATCH_BYTES = 4 << 20  # encode documents in batches of ~4 MB of text


def _batches(texts: Iterable[str], batch_bytes: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize_split(
    dataset_dir: Path,
    split: str,
    tokenizer: Any,
    out_dir: Path,
    dtype: np.dtype,
    shard_tokens: int,
    num_threads: int | None,
    on_progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    writer = ShardWriter(out_dir, split, dtype, shard_tokens)
    documents = n_bytes = 0
    bos = np.array([tokenizer.bos_id], dtype=dtype)
    for batch in _batches(iter_texts(dataset_dir, split), _BATCH_BYTES):
        encoded = tokenizer.encode_batch(batch, num_threads=num_threads)
        batch_bytes = 0
        for text, ids in zip(batch, encoded):
            writer.add(bos)
            writer.add(np.asarray(ids, dtype=dtype))
            batch_bytes += len(text.encode("utf-8"))
        n_bytes += batch_bytes
        documents += len(batch)
        if on_progress:
            on_progress(batch_bytes)
    writer.flush()
    return {
        "shards": writer.shards,
        "tokens": sum(s["tokens"] for s in writer.shards),
        "bytes": n_bytes,
        "documents": documents,
    }


def tokenize_dataset(
    dataset_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    num_threads: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Tokenize every split of a prepared dataset into ``out_dir`` and return the index.

    Reuses existing shards made from the same dataset and tokenizer unless ``force``.
    ``num_threads`` is the encoder's thread count (default: all cores).
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if shard_tokens < 1:
        raise FornalhaError(f"shard_tokens must be positive, got {shard_tokens}")
    if not dataset_dir.is_dir():
        raise DataError(f"dataset folder not found: {dataset_dir} (create it with `fornalha data prepare`)")
    tokenizer_dir = find_tokenizer_dir(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    keys = {
        "dataset_sha256": dataset_sha256(dataset_dir),
        "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
    }

    from fornalha.outputs import claim

    owned = claim(out_dir, "data tokenize")  # a folder that is not ours is refused, untouched
    index_path = out_dir / "index.json"
    if index_path.is_file() and not force:
        try:
            old = read_index(out_dir)
        except DataError:
            old = {}
        if all(old.get(k) == v for k, v in keys.items()) and old.get("shard_tokens") == shard_tokens:
            old["cached"] = True
            return old

    splits = dataset_splits(dataset_dir)
    if "train" not in splits:
        raise DataError(f"dataset {dataset_dir} has no train split")
    stage = owned.staging()  # shards are written here, then published with index.json last
    try:
        shutil.copytree(tokenizer_dir, stage / "tokenizer")
        index = _write_shards(
            dataset_dir, splits, tokenizer, stage, keys, shard_tokens, num_threads, progress
        )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    owned.publish(stage, last=["index.json"])
    index["cached"] = False
    return index


def _write_shards(
    dataset_dir: Path,
    splits: list[str],
    tokenizer: Any,
    out_dir: Path,
    keys: dict[str, str],
    shard_tokens: int,
    num_threads: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize every split into ``out_dir`` (a staging folder) and write its index.json."""
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    start = time.perf_counter()
    result: dict[str, Any] = {}
    for split in splits:
        with byte_progress(f"tokenizing {split}", enabled=progress) as advance:
            result[split] = _tokenize_split(
                dataset_dir, split, tokenizer, out_dir, dtype, shard_tokens, num_threads, advance
            )
    seconds = time.perf_counter() - start
    total_bytes = sum(s["bytes"] for s in result.values())
    index = {
        "format": "fornalha-shards",
        "version": VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "bos_id": tokenizer.bos_id,
        **keys,
        "shard_tokens": shard_tokens,
        "header_bytes": HEADER.size,
        "splits": result,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2),
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index
