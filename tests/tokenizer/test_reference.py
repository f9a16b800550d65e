"""The pure-Python reference encoder gives exactly the fast encoder's ids on the shared corpora."""

from __future__ import annotations

from pathlib import Path

import pytest

from fornalha.tokenizer import BPETokenizer, train_bpe
from fornalha.tokenizer.reference import ReferenceBPE, bpe_merge

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    files = [SHARED / "tinyshakespeare.txt", *sorted((SHARED / "pt").glob("*.txt"))]
    # 40 KB from the middle of each file keeps the pure-Python encoder under a second or two
    out = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        middle = len(text) // 2
        out[path.name] = text[middle : middle + 40_000]
    out["tricky"] = "Olá 🙂 中文 \x00\x1b tab\t\r\n 12345 it's   done\n\n"
    return out


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    texts = [
        p.read_text(encoding="utf-8")
        for p in [SHARED / "tinyshakespeare.txt", *(SHARED / "pt").glob("*.txt")]
    ]
    return train_bpe(texts, 1500)


def test_reference_equals_fast(tok: BPETokenizer, corpora: dict[str, str]) -> None:
    ref = ReferenceBPE(tok.ranks, tok.pattern)
    fast = tok.encode_batch(list(corpora.values()))
    for (name, text), ids in zip(corpora.items(), fast):
        assert ref.encode(text) == ids, name
        assert ref.decode(ids) == text


def test_bpe_merge_by_hand() -> None:
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    ranks[b"bc"] = 257
    ranks[b"abc"] = 258
    # "ab" has the lower rank, so it merges first; then "ab"+"c" is a token
    assert bpe_merge(ranks, b"abc") == [b"abc"]
    assert bpe_merge(ranks, b"abc", max_rank=258) == [b"ab", b"c"]
    assert bpe_merge(ranks, b"bcd") == [b"bc", b"d"]
    assert ReferenceBPE(ranks, r"\S+|\s+").encode("abc bcd") == [258, 32, 257, 100]
