"""Tokenizers: byte-level BPE (the default) and character-level, with reserved chat tokens.

    from fornalha.tokenizer import train_bpe, load_tokenizer
    tok = train_bpe(texts, vocab_size=4096)      # rustbpe trains, tiktoken encodes
    tok.save("tok/")                             # tokenizer.json (Hugging Face) + configs
    tok = load_tokenizer("tok/")                 # or a run folder holding tokenizer/
    ids = tok.encode("Olá, mundo!")

Every tokenizer follows the `Tokenizer` protocol below and reserves the special tokens of
`chat.py` at ids 0..6. See `bpe.py` (the fast path), `reference.py` (a readable encoder giving
the same ids), `char.py` (nanoGPT-style characters), `evaluate.py` (bytes per token).
`hf.py` reads foreign Hugging Face tokenizers (kind "hf", e.g. of a model brought in with
`fornalha import hf`) behind the same protocol, with the model's own special tokens and chat template.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fornalha.errors import ConfigError, FornalhaError
from fornalha.tokenizer.bpe import SPLIT_PATTERN, BPETokenizer, limit_bytes, train_bpe
from fornalha.tokenizer.char import CharTokenizer
from fornalha.tokenizer.chat import SPECIAL_IDS, SPECIAL_TOKENS
from fornalha.tokenizer.hf import HFTokenizer

__all__ = [
    "SPECIAL_IDS",
    "SPECIAL_TOKENS",
    "SPLIT_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "find_tokenizer_dir",
    "load_tokenizer",
    "train_bpe",
    "train_tokenizer",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What every stage may rely on (DESIGN.md section 2)."""

    kind: str
    vocab_size: int
    bos_id: int
    eos_id: int
    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...
    def token_to_id(self, token: str) -> int | None: ...
    def token_bytes(self) -> np.ndarray: ...
    def save(self, directory: str | os.PathLike[str]) -> Path: ...
    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]: ...


def find_tokenizer_dir(path: str | os.PathLike[str]) -> Path:
    """The tokenizer folder at ``path``, or at ``path/tokenizer`` (a run or shards folder).

    A folder with ``fornalha_tokenizer.json`` is preferred; failing that, one with a Hugging Face
    ``tokenizer.json`` (a foreign tokenizer, loaded as `HFTokenizer`).
    """
    path = Path(path)
    for marker in ("fornalha_tokenizer.json", "tokenizer.json"):
        for candidate in (path, path / "tokenizer"):
            if (candidate / marker).is_file():
                return candidate
    if not path.exists():
        raise FornalhaError(f"tokenizer not found: {path} does not exist")
    raise FornalhaError(
        f"{path} is not a tokenizer folder (no fornalha_tokenizer.json or tokenizer.json in it or in "
        f"{path / 'tokenizer'}); create one with `fornalha tokenizer train`"
    )


def load_tokenizer(path: str | os.PathLike[str]) -> BPETokenizer | CharTokenizer | HFTokenizer:
    """Load a saved tokenizer from its folder, or from a run/shards folder containing `tokenizer/`.

    A Hugging Face folder without ``fornalha_tokenizer.json`` loads as `HFTokenizer` (kind "hf").
    """
    directory = find_tokenizer_dir(path)
    if not (directory / "fornalha_tokenizer.json").is_file():
        return HFTokenizer.load(directory)
    try:
        meta = json.loads((directory / "fornalha_tokenizer.json").read_text())
    except (OSError, ValueError) as exc:
        raise FornalhaError(f"cannot read {directory / 'fornalha_tokenizer.json'}: {exc}") from exc
    kind = meta.get("kind")
    if kind == "bpe":
        return BPETokenizer.load(directory)
    if kind == "char":
        return CharTokenizer.load(directory)
    if kind == "hf":
        return HFTokenizer.load(directory)
    raise FornalhaError(f"unknown tokenizer kind {kind!r} in {directory / 'fornalha_tokenizer.json'}")


def train_tokenizer(
    dataset_dir: str | os.PathLike[str],
    vocab_size: int,
    kind: str = "bpe",
    max_bytes: int | None = None,
    split: str = "train",
    stats: dict[str, Any] | None = None,
    pattern: str = SPLIT_PATTERN,
) -> BPETokenizer | CharTokenizer:
    """Train a tokenizer on a prepared dataset folder's ``split`` (see `fornalha data prepare`).

    ``kind="char"`` ignores ``vocab_size`` and reads the train *and* val splits (like nanoGPT,
    so validation has no unknown characters). ``pattern`` is the BPE split regex (see `bpe.py`).
    If ``stats`` is given it receives the documents
    and bytes read and the seconds taken.
    """
    from fornalha.data.dataset import dataset_splits, iter_texts

    if kind not in ("bpe", "char"):
        raise ConfigError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'char'")
    counts = {"documents": 0, "bytes": 0}

    def counted(texts: Iterable[str]) -> Iterator[str]:
        for text in limit_bytes(texts, max_bytes):
            counts["documents"] += 1
            counts["bytes"] += len(text.encode("utf-8"))
            yield text

    def train_then_val() -> Iterator[str]:
        yield from iter_texts(dataset_dir, "train")
        if "val" in dataset_splits(dataset_dir):
            yield from iter_texts(dataset_dir, "val")

    start = time.perf_counter()
    tokenizer: BPETokenizer | CharTokenizer
    if kind == "bpe":
        tokenizer = train_bpe(counted(iter_texts(dataset_dir, split)), vocab_size, pattern=pattern)
    else:
        tokenizer = CharTokenizer.train(counted(train_then_val()))
    if stats is not None:
        stats.update(counts, seconds=time.perf_counter() - start, vocab_size=tokenizer.vocab_size)
    return tokenizer
