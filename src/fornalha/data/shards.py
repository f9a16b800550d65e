"""Token shards: a prepared dataset, tokenized once, stored as flat binary arrays of ids.

Layout of ``SHARDS_DIR`` (DESIGN.md section 3)::

    index.json            what is where, and the hashes the cache checks
    train_00000.bin ...   token ids of the train split, in document order
    val_00000.bin ...     token ids of the validation split
    tokenizer/            a copy of the tokenizer that made them

Each ``.bin`` file is a 32-byte header followed by the ids, little-endian::

    offset 0   8 bytes  magic b"FRNLSHRD"
    offset 8   uint32   format version (1)
    offset 12  uint32   dtype code: 1 = uint16, 2 = uint32
    offset 16  uint64   number of tokens
    offset 24  8 bytes  reserved (zero)
    offset 32  ids      token count x 2 or 4 bytes

The ids are uint16 when the vocabulary fits (< 65536 ids), which halves disk and memory. Every
document is preceded by `<|bos|>`, so the model always sees where a document starts; documents
run on from one shard into the next (each shard holds exactly ``shard_tokens`` ids except the
last). `open_shard` maps a file into memory without reading it.

Caching: `tokenize_dataset` writes `index.json` last; when it finds one made from the same
dataset content and the same tokenizer (sha256 of both), it returns it without work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.errors import DataError, FornalhaError

MAGIC = b"FRNLSHRD"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # 32 bytes
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000
_BATCH_BYTES = 4 << 20  # encode documents in batches of ~4 MB of text


# -- reading documents ------------------------------------------------------------------------
def iter_texts(dataset_dir: str | Path, split: str = "train") -> Iterator[str]:
    """Stream the documents of one split of a prepared dataset folder (`fornalha.data.dataset`).

    A missing folder or split is a `DataError` with a hint.
    """
    from fornalha.data.dataset import iter_texts as dataset_iter_texts

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DataError(f"dataset folder not found: {dataset_dir} (create it with `fornalha data prepare`)")
    if split not in dataset_splits(dataset_dir):
        raise DataError(f"dataset {dataset_dir} has no {split!r} split")
    return iter(dataset_iter_texts(dataset_dir, split))


def dataset_splits(dataset_dir: str | Path) -> list[str]:
    """The splits a prepared dataset has, in order (train first)."""
    from fornalha.data.dataset import load_manifest

    splits = load_manifest(dataset_dir).get("splits", {})
    return [s for s in SPLITS if s in splits]


def _sha256_files(paths: Iterable[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def dataset_sha256(dataset_dir: str | Path) -> str:
    """Hash of a dataset's split files (names and bytes), the shards cache key."""
    root = Path(dataset_dir)
    return _sha256_files(
        [p for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir() if p.is_file()], root
    )


def tokenizer_sha256(tokenizer_dir: str | Path) -> str:
    """Hash of a tokenizer folder's files."""
    root = Path(tokenizer_dir)
    return _sha256_files([p for p in root.iterdir() if p.is_file()], root)


# -- the binary format ------------------------------------------------------------------------
def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return DTYPE_CODES[1] if vocab_size <= 65536 else DTYPE_CODES[2]


def _code_of(dtype: np.dtype) -> int:
    return next(code for code, dt in DTYPE_CODES.items() if dt == dtype)


def write_shard(path: str | Path, ids: np.ndarray) -> None:
    """Write one shard file (header, then ``ids`` in their dtype, uint16 or uint32)."""
    dtype = np.dtype(ids.dtype).newbyteorder("<")
    with open(path, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, _code_of(dtype), len(ids)))
        f.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())


def read_header(path: str | Path) -> tuple[int, np.dtype, int]:
    """``(version, dtype, token_count)`` of a shard; `DataError` if it is not a valid shard."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
    except OSError as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from exc
    if len(head) < HEADER.size:
        raise DataError(f"{path} is too short to be a token shard")
    magic, version, code, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise DataError(f"{path} is not a fornalha token shard (bad magic {magic!r})")
    if version != VERSION or code not in DTYPE_CODES:
        raise DataError(f"{path}: unsupported shard version {version} / dtype code {code}")
    dtype = DTYPE_CODES[code]
    expected = HEADER.size + count * dtype.itemsize
    if path.stat().st_size != expected:
        raise DataError(f"{path} is truncated or corrupt: {path.stat().st_size} bytes, expected {expected}")
    return version, dtype, count


def open_shard(path: str | Path) -> np.memmap:
    """Memory-map a shard's ids (read-only; nothing is read until used)."""
    _, dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)  # type: ignore[return-value]
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))


def read_index(shards_dir: str | Path) -> dict[str, Any]:
    """The shards' `index.json`; `DataError` if the folder holds no shards."""
    path = Path(shards_dir) / "index.json"
    if not path.is_file():
        raise DataError(
            f"no token shards in {shards_dir} (no index.json); create them with `fornalha data tokenize`"
        )
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if index.get("format") != "fornalha-shards":
        raise DataError(f"{path} is not a fornalha shards index")
    return index


def split_counts(shards_dir: str | Path, split: str) -> tuple[int, int]:
    """``(tokens, bytes)`` of a split: its token count and the UTF-8 bytes of its text."""
    info = read_index(shards_dir)["splits"].get(split)
    if info is None:
        raise DataError(f"shards in {shards_dir} have no {split!r} split")
    return int(info["tokens"]), int(info["bytes"])


# -- writing ----------------------------------------------------------------------------------
class _ShardWriter:
    """Accumulates ids and writes a shard each time ``shard_tokens`` of them are ready."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.buffer = np.empty(shard_tokens, dtype=dtype)
        self.filled = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, ids: np.ndarray) -> None:
        while len(ids):
            take = min(len(ids), self.shard_tokens - self.filled)
            self.buffer[self.filled : self.filled + take] = ids[:take]
            self.filled += take
            ids = ids[take:]
            if self.filled == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.filled == 0 and self.shards:
            return
        name = f"{self.split}_{len(self.shards):05d}.bin"
        write_shard(self.out_dir / name, self.buffer[: self.filled])
        self.shards.append({"file": name, "tokens": int(self.filled)})
        self.filled = 0


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
    writer = _ShardWriter(out_dir, split, dtype, shard_tokens)
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
    from fornalha.tokenizer import find_tokenizer_dir, load_tokenizer

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
        if progress:
            from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

            with Progress(
                TextColumn(f"tokenizing {split}"), BarColumn(), TransferSpeedColumn(), transient=True
            ) as bar:
                task = bar.add_task(split, total=None)
                result[split] = _tokenize_split(
                    dataset_dir,
                    split,
                    tokenizer,
                    out_dir,
                    dtype,
                    shard_tokens,
                    num_threads,
                    lambda n, bar=bar, task=task: bar.advance(task, n),
                )
        else:
            result[split] = _tokenize_split(
                dataset_dir, split, tokenizer, out_dir, dtype, shard_tokens, num_threads, None
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
