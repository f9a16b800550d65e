"""Byte-level BPE: training, special ids, save/load, Hugging Face compatibility, round trips."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fornalha.errors import ConfigError, DataError
from fornalha.tokenizer import SPECIAL_TOKENS, BPETokenizer, load_tokenizer, train_bpe

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRICKY = [
    "Olá, coração! Ação é ótima; über naïve café.",
    "emoji 🙂👍🏽👨‍👩‍👧 and flags 🇵🇹",
    "中文字符 日本語のテキスト 한국어",
    "control \x00\x01\x07\x1b[31m tab\tcr\r\nnul\x7f\u200b\ufeff",
    "numbers 1234567 3.14159 -0x1F  trailing spaces   \n\n\n",
    "<|bos|> literal specials <|end|> stay text",
]


def books() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((SHARED / "pt").glob("*.txt"))}


def stdlib_sample(n_files: int = 40) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(root.glob("*.py"))][:n_files]
    return [p.read_text(encoding="utf-8") for p in paths]


@pytest.fixture(scope="module")
def pt_tok() -> BPETokenizer:
    """Trained on all the Portuguese books (about 5.5 MB, well under a second)."""
    return train_bpe(books().values(), 2048)


@pytest.fixture(scope="module")
def saved(pt_tok: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pt_tok.save(tmp_path_factory.mktemp("tok"))


def test_vocab_layout(pt_tok: BPETokenizer) -> None:
    assert pt_tok.vocab_size == 2048
    for i, tok in enumerate(SPECIAL_TOKENS):
        assert pt_tok.token_to_id(tok) == i
        assert pt_tok.special_ids[tok] == i
    assert (pt_tok.bos_id, pt_tok.eos_id) == (0, 1)
    # the 256 single bytes are always there, right after the specials
    assert sorted(pt_tok.ranks[bytes([b])] for b in range(256)) == list(range(7, 263))
    assert sorted(pt_tok.ranks.values()) == list(range(7, 2048))
    sizes = pt_tok.token_bytes()
    assert sizes.shape == (2048,) and sizes.dtype == np.int64
    assert (sizes[:7] == 0).all() and (sizes[7:263] == 1).all() and (sizes[263:] >= 2).all()
    assert pt_tok.token_to_id(" que") is not None  # a frequent Portuguese word is one token


def test_every_book_round_trips_exactly(pt_tok: BPETokenizer) -> None:
    """Done-when of issue 2: the tokenizer trained on the books round-trips every book."""
    texts = books()
    for name, ids in zip(texts, pt_tok.encode_batch(list(texts.values()))):
        assert pt_tok.decode(ids) == texts[name], name
        assert pt_tok.decode_bytes(ids) == texts[name].encode("utf-8")
        assert len(ids) < len(texts[name].encode("utf-8")) / 2.5  # it actually compresses


def test_encode_batch_equals_encode(pt_tok: BPETokenizer) -> None:
    assert pt_tok.encode_batch(TRICKY, num_threads=2) == [pt_tok.encode(t) for t in TRICKY]


def test_special_strings_in_text_are_ordinary(pt_tok: BPETokenizer) -> None:
    ids = pt_tok.encode("<|bos|><|end|>")
    assert not set(ids) & set(range(7))
    assert pt_tok.decode(ids) == "<|bos|><|end|>"


def test_merges_are_consistent(pt_tok: BPETokenizer) -> None:
    merges = pt_tok.merges()
    assert len(merges) == 2048 - 7 - 256
    for (a, b), rank in zip(merges, range(263, 2048)):
        assert pt_tok.ranks[a + b] == rank
        assert pt_tok.ranks[a] < rank and pt_tok.ranks[b] < rank


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    tok = _tiny()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(7 <= i < tok.vocab_size for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_hf_matches_tiktoken_any_text(text: str) -> None:
    # HF's encode turns special-token strings in the text into special ids; ours never does
    assume(not any(special in text for special in SPECIAL_TOKENS))
    tok = _tiny()
    assert _tiny_hf().encode(text, add_special_tokens=False).ids == tok.encode(text)


_CACHE: dict[str, object] = {}


def _tiny() -> BPETokenizer:
    if "tok" not in _CACHE:
        _CACHE["tok"] = train_bpe([(SHARED / "tinyshakespeare.txt").read_text(), *TRICKY], 400)
    return _CACHE["tok"]  # type: ignore[return-value]


def _tiny_hf():
    if "hf" not in _CACHE:
        _CACHE["hf"] = _tiny().to_hf()
    return _CACHE["hf"]


def test_save_writes_the_three_files(saved: Path) -> None:
    import json

    assert {p.name for p in saved.iterdir()} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "fornalha_tokenizer.json",
    }
    meta = json.loads((saved / "fornalha_tokenizer.json").read_text())
    assert meta["kind"] == "bpe" and meta["vocab_size"] == 2048
    assert meta["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|bos|>",
        "<|endoftext|>",
        "<|pad|>",
    )
    assert "chat_template" in config


def test_load_without_rustbpe(saved: Path, pt_tok: BPETokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rustbpe", None)  # importing it would now fail
    loaded = load_tokenizer(saved)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.ranks == pt_tok.ranks and loaded.pattern == pt_tok.pattern
    assert loaded.encode_batch(TRICKY) == pt_tok.encode_batch(TRICKY)


def test_load_from_run_dir(saved: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(saved, tmp_path / "run" / "tokenizer")
    assert load_tokenizer(tmp_path / "run").vocab_size == 2048


def test_hf_tokenizers_gives_identical_ids(saved: Path, pt_tok: BPETokenizer) -> None:
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(saved / "tokenizer.json"))
    assert hf.get_vocab_size() == 2048
    for i, tok in enumerate(SPECIAL_TOKENS):
        assert hf.token_to_id(tok) == i
    # HF is slow on megabyte-long strings (about 0.5 MB/s here): 150 KB of each book is plenty
    corpus = (
        [t[len(t) // 3 : len(t) // 3 + 150_000] for t in books().values()] + stdlib_sample() + TRICKY[:-1]
    )
    ours = pt_tok.encode_batch(corpus)
    theirs = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
    for text, a, b in zip(corpus, ours, theirs):
        assert a == b, text[:80]
    assert hf.decode(ours[0], skip_special_tokens=False) == corpus[0]


def test_transformers_fast_tokenizer(saved: Path, pt_tok: BPETokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"))
    text = books()["machado_dom_casmurro.txt"][:20000] + TRICKY[1] + TRICKY[2]
    assert hf.encode(text, add_special_tokens=False) == pt_tok.encode(text)
    assert hf.decode(pt_tok.encode(text)) == text
    # the folder form reads tokenizer_config.json: special tokens and chat template included
    auto = PreTrainedTokenizerFast.from_pretrained(str(saved))
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (0, 1, 2)
    assert auto(text)["input_ids"] == pt_tok.encode(text)
    assert auto.decode([0, *pt_tok.encode("Olá")]) == "<|bos|>Olá"


def test_training_errors() -> None:
    with pytest.raises(ConfigError, match="at least 263"):
        train_bpe(["abc"], 100)
    with pytest.raises(DataError, match="no text"):
        train_bpe([], 300)


def test_max_bytes_limits_training() -> None:
    text = (SHARED / "tinyshakespeare.txt").read_text()
    small = train_bpe([text], 1000, max_bytes=2000)
    full = train_bpe([text], 1000)
    assert small.vocab_size < 1000 <= full.vocab_size  # 2 KB of text runs out of pairs to merge
    assert small.decode(small.encode(text[:5000])) == text[:5000]
