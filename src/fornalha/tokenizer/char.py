"""Character-level tokenizer, as in nanoGPT's Shakespeare example: one token per character.

The vocabulary is the seven special tokens (ids 0..6), then `<|unk|>` (id 7), then the sorted
set of characters (Unicode code points) of the training text. It is useful for small
nanoGPT-style comparisons; it does not generalise to text with characters it has not seen.

Unknown characters: `encode` maps a character outside the vocabulary to `<|unk|>` (id 7), so
tokenizing a validation split never fails; `<|unk|>` decodes to the literal string "<|unk|>".
Round trips are exact for text made of known characters. Pass ``strict=True`` to `encode` to
raise instead.

Saved as a Hugging Face `tokenizer.json` too: a WordLevel model over the characters, a Split
pre-tokenizer that isolates every character, and a Fuse decoder that joins them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.errors import DataError, FornalhaError
from fornalha.tokenizer.chat import BOS, EOS, SPECIAL_IDS, SPECIAL_TOKENS, hf_tokenizer_config, render_chat

UNK = "<|unk|>"


class CharTokenizer:
    """One token per character (see the module docstring)."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise FornalhaError("CharTokenizer needs single characters")
        self.special_ids: dict[str, int] = dict(SPECIAL_IDS)
        self.unk_id = len(SPECIAL_TOKENS)
        offset = self.unk_id + 1
        self._stoi = {c: offset + i for i, c in enumerate(self.chars)}
        self._itos = [*SPECIAL_TOKENS, UNK, *self.chars]
        self.vocab_size = len(self._itos)
        self.bos_id = SPECIAL_IDS[BOS]
        self.eos_id = SPECIAL_IDS[EOS]

    @classmethod
    def train(cls, texts: Iterable[str], max_bytes: int | None = None) -> CharTokenizer:
        """The vocabulary of every character in ``texts`` (up to ``max_bytes`` of text)."""
        chars: set[str] = set()
        seen = 0
        for text in texts:
            chars.update(text)
            seen += len(text.encode("utf-8"))
            if max_bytes is not None and seen >= max_bytes:
                break
        if not chars:
            raise DataError("no text to build a character vocabulary from")
        return cls(chars)

    def encode(self, text: str, strict: bool = False) -> list[int]:
        """One id per character; unknown characters give `<|unk|>` (or raise with ``strict``)."""
        if strict:
            missing = set(text) - self._stoi.keys()
            if missing:
                raise DataError(f"characters not in the vocabulary: {''.join(sorted(missing))!r}")
        stoi, unk = self._stoi, self.unk_id
        return [stoi.get(c, unk) for c in text]

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        return render_chat(self, messages, add_generation_prompt)

    def decode(self, ids: Iterable[int]) -> str:
        itos = self._itos
        return "".join(itos[i] for i in ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_ids:
            return self.special_ids[token]
        if token == UNK:
            return self.unk_id
        return self._stoi.get(token)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of each token; 0 for the special tokens and `<|unk|>`."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for c, i in self._stoi.items():
            out[i] = len(c.encode("utf-8"))
        return out

    def to_hf(self):
        """A `tokenizers.Tokenizer` with the same ids (WordLevel over single characters)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = {tok: i for i, tok in enumerate(self._itos)}
        hf = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
        # [\s\S] matches any one code point (including newlines): every character is a "word".
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated", invert=False)
        hf.decoder = decoders.Fuse()
        hf.add_special_tokens(
            [AddedToken(tok, special=True, normalized=False) for tok in [*SPECIAL_TOKENS, UNK]]
        )
        return hf

    def save(self, directory: str | os.PathLike[str]) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.to_hf().save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(
            json.dumps(hf_tokenizer_config(extra=[UNK]), indent=2) + "\n"
        )
        meta = {
            "format": "fornalha-tokenizer",
            "version": 1,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": {**SPECIAL_IDS, UNK: self.unk_id},
            "chars": "".join(self.chars),
        }
        (out / "fornalha_tokenizer.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CharTokenizer:
        try:
            meta = json.loads((Path(directory) / "fornalha_tokenizer.json").read_text())
            return cls(meta["chars"])
        except (OSError, ValueError, KeyError) as exc:
            raise FornalhaError(f"cannot read char tokenizer in {directory}: {exc}") from exc

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
