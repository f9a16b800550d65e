"""Byte-level BPE: trained with `rustbpe`, encoded with `tiktoken`, saved for Hugging Face.

Three well-kept pieces do the work; this module glues them and keeps them in agreement:

* **Training** — `rustbpe` (the trainer of Karpathy's nanochat): the text is split with the
  pre-tokenization regex and the chunks are counted in parallel in Rust, then the most frequent
  adjacent pair is merged until the vocabulary is full. Its result is a list of *mergeable ranks*:
  token bytes -> rank, where the 256 single bytes come first and each later token is a merge.
* **Encoding** — a `tiktoken.Encoding` built from those ranks (same algorithm as
  `reference.py`, in Rust, multi-threaded over a batch).
* **Saving** — a standard Hugging Face `tokenizer.json` (a BPE model over the GPT-2 byte
  alphabet, with the merge list recovered from the ranks) that `tokenizers` and `transformers`
  load and that gives the same ids as tiktoken (tested on the standard library and on books).
  Loading never needs rustbpe: the ranks are read back from `tokenizer.json`'s vocabulary.

Ids: the seven special tokens take ids 0..6 (see `chat.py`); the 256 bytes and the learned
merges follow from id 7, in rank order. ``vocab_size`` counts everything.

Split pattern: GPT-4's (cl100k) pattern, which Llama 3 also uses: contractions, letter runs
with one leading non-letter, numbers in runs of at most three digits, punctuation runs,
newlines, spaces. llama.cpp implements it natively as its ``llama-bpe`` pre-tokenizer, so a
GGUF export can name it (`fornalha.interop.gguf`) and llama.cpp cuts text exactly as we do.
Tokenizers trained before this choice used nanochat's variant with digit runs of at most
**two** (``\\p{N}{1,2}``, and ``\\s*[\\r\\n]`` for newlines); llama.cpp implements no pattern
like it. Such tokenizers still load and work (the pattern is saved with the tokenizer), but
cannot be exported to GGUF. ``--pattern gpt4-2digit`` still trains one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.errors import ConfigError, DataError, FornalhaError
from fornalha.tokenizer.chat import (
    BOS,
    EOS,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    hf_tokenizer_config,
    render_chat,
)
from fornalha.tokenizer.reference import bpe_merge

#: GPT-4's cl100k pattern as Llama 3 writes it: llama.cpp's "llama-bpe" pre-tokenizer (the default).
LLAMA3_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPLIT_PATTERN = LLAMA3_SPLIT_PATTERN
#: nanochat's variant (digit runs of at most two), the default of tokenizers trained before; no GGUF export.
GPT4_2DIGIT_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
#: The same with three digits; trained by older `--pattern gpt4` (no GGUF export: one newline per chunk).
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
#: Named patterns for the CLI's ``--pattern`` ("gpt4" is cl100k itself, i.e. llama3).
PATTERNS = {
    "llama3": LLAMA3_SPLIT_PATTERN,
    "gpt4": LLAMA3_SPLIT_PATTERN,
    "gpt4-2digit": GPT4_2DIGIT_SPLIT_PATTERN,
}
N_SPECIAL = len(SPECIAL_TOKENS)
MIN_VOCAB_SIZE = N_SPECIAL + 256


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Hugging Face byte-level BPE stores tokens as strings; each byte becomes one visible character
    (printable ASCII and Latin-1 stay themselves, the rest are shifted past U+0100), so a token's
    string in `tokenizer.json` is the byte-wise image of its bytes.
    """
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    visible += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in visible}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _to_hf_string(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


@cache
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _from_hf_string(token: str) -> bytes:
    inverse = _unicode_to_bytes()
    return bytes(inverse[c] for c in token)


class BPETokenizer:
    """A byte-level BPE tokenizer (see the module docstring). Lossless for any text.

    ``ranks`` maps token bytes -> id for the non-special tokens (ids start at 7).
    """

    kind = "bpe"

    def __init__(self, ranks: Mapping[bytes, int], pattern: str = SPLIT_PATTERN):
        import tiktoken

        self.ranks: dict[bytes, int] = dict(ranks)
        self.pattern = pattern
        if (
            min(self.ranks.values()) != N_SPECIAL
            or len(self.ranks) + N_SPECIAL != max(self.ranks.values()) + 1
        ):
            raise FornalhaError("BPE ranks must be dense and start after the special tokens (id 7)")
        self.vocab_size = N_SPECIAL + len(self.ranks)
        self._enc = tiktoken.Encoding(
            name="fornalha",
            pat_str=pattern,
            mergeable_ranks=self.ranks,
            special_tokens=dict(SPECIAL_IDS),
            explicit_n_vocab=self.vocab_size,
        )
        self.special_ids: dict[str, int] = dict(SPECIAL_IDS)
        self.bos_id = SPECIAL_IDS[BOS]
        self.eos_id = SPECIAL_IDS[EOS]

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; special-token strings in the text are encoded as ordinary text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts in parallel (tiktoken releases the GIL; default: one thread per core)."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads or os.cpu_count() or 1)

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Render a conversation in the chat format (see `fornalha.tokenizer.chat`)."""
        return render_chat(self, messages, add_generation_prompt)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (a token may hold part of a UTF-8 character)."""
        return self._enc.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Decode to text; bytes that do not form valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        """Id of a special token or of a token whose bytes are ``token``'s UTF-8, else None."""
        if token in self.special_ids:
            return self.special_ids[token]
        return self.ranks.get(token.encode("utf-8"))

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each token (0 for special tokens), for bits-per-byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for token, rank in self.ranks.items():
            out[rank] = len(token)
        return out

    # -- Hugging Face and saving ------------------------------------------------------------
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merge list, in rank order: the two parts each multi-byte token is built from.

        Running the reference merge on a token's own bytes, allowed only merges of lower rank,
        stops exactly one step short: at the pair that training merged into it.
        """
        out = []
        for token, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            if len(token) < 2:
                continue
            parts = bpe_merge(self.ranks, token, max_rank=rank)
            if len(parts) != 2:  # pragma: no cover - cannot happen for ranks learned by BPE
                raise FornalhaError(f"token {token!r} is not the merge of two lower-ranked tokens")
            out.append((parts[0], parts[1]))
        return out

    def to_hf(self):
        """A `tokenizers.Tokenizer` that gives the same ids as `encode` (for ordinary text)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = {tok: i for tok, i in SPECIAL_IDS.items()}
        vocab.update({_to_hf_string(token): rank for token, rank in self.ranks.items()})
        merges = [(_to_hf_string(a), _to_hf_string(b)) for a, b in self.merges()]
        # ignore_merges: a chunk that is itself a token is taken whole, as tiktoken does.
        hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(self.pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS])
        return hf

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json` and `fornalha_tokenizer.json`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.to_hf().save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer_config(), indent=2) + "\n")
        meta = {
            "format": "fornalha-tokenizer",
            "version": 1,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(SPECIAL_IDS),
            "pattern": self.pattern,
            "n_merges": len(self.ranks) - 256,
        }
        (out / "fornalha_tokenizer.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BPETokenizer:
        """Rebuild from a saved folder: ranks from `tokenizer.json`'s vocabulary (no rustbpe)."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "fornalha_tokenizer.json").read_text())
            hf = json.loads((directory / "tokenizer.json").read_text())
            vocab: dict[str, int] = hf["model"]["vocab"]
        except (OSError, ValueError, KeyError) as exc:
            raise FornalhaError(f"cannot read BPE tokenizer in {directory}: {exc}") from exc
        ranks = {_from_hf_string(tok): i for tok, i in vocab.items() if tok not in SPECIAL_IDS}
        # a tokenizer saved without its pattern predates the Llama-3 default: it used nanochat's
        return cls(ranks, meta.get("pattern", GPT4_2DIGIT_SPLIT_PATTERN))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def limit_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """Yield texts until ``max_bytes`` UTF-8 bytes have been seen (the last one is cut)."""
    if max_bytes is None:
        yield from texts
        return
    left = max_bytes
    for text in texts:
        if left <= 0:
            return
        size = len(text.encode("utf-8"))
        if size > left:
            text = text.encode("utf-8")[:left].decode("utf-8", errors="ignore")
            size = left
        left -= size
        yield text


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    pattern: str = SPLIT_PATTERN,
    max_bytes: int | None = None,
    buffer_size: int = 8192,
) -> BPETokenizer:
    """Train a byte-level BPE tokenizer of ``vocab_size`` tokens (specials included) on ``texts``.

    ``texts`` is streamed (any iterator of documents); ``max_bytes`` stops after that many
    bytes of text. The result's vocabulary may be smaller than asked if the text runs out of
    pairs to merge.
    """
    import rustbpe

    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab size must be at least {MIN_VOCAB_SIZE} (7 special + 256 byte tokens), got {vocab_size}"
        )
    seen = [0]

    def counted() -> Iterator[str]:
        for text in limit_bytes(texts, max_bytes):
            seen[0] += 1
            yield text

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(counted(), vocab_size - N_SPECIAL, buffer_size=buffer_size, pattern=pattern)
    if seen[0] == 0:
        raise DataError("no text to train the tokenizer on (the dataset split is empty)")
    # rustbpe numbers tokens from 0 with bytes first; shift past the specials. A byte string
    # learned twice (possible in principle when two different pairs concatenate to it) keeps
    # its first, lowest rank; ids are then renumbered densely.
    ranks: dict[bytes, int] = {}
    for token, _ in sorted(trainer.get_mergeable_ranks(), key=lambda kv: kv[1]):
        ranks.setdefault(bytes(token), N_SPECIAL + len(ranks))
    return BPETokenizer(ranks, pattern)
