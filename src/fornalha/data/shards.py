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

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.data.dataset import SPLITS
from fornalha.errors import DataError
from fornalha.files import tree_sha256

MAGIC = b"FRNLSHRD"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # 32 bytes
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<u4")}


def dataset_sha256(dataset_dir: str | Path) -> str:
    """Hash of a dataset's split files (names and bytes), the shards cache key."""
    root = Path(dataset_dir)
    return tree_sha256(
        [p for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir() if p.is_file()], root
    )


def tokenizer_sha256(tokenizer_dir: str | Path) -> str:
    """Hash of a tokenizer folder's files."""
    root = Path(tokenizer_dir)
    return tree_sha256([p for p in root.iterdir() if p.is_file()], root)


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
class ShardWriter:
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
