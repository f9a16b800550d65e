"""Character-level tokenizer: vocabulary, unknown characters, save/load, Hugging Face loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fornalha.errors import DataError
from fornalha.tokenizer import SPECIAL_TOKENS, CharTokenizer, load_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def text() -> str:
    return (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok(text: str) -> CharTokenizer:
    return CharTokenizer.train([text])


def test_vocab(tok: CharTokenizer, text: str) -> None:
    chars = sorted(set(text))
    assert len(chars) == 65  # nanoGPT's Shakespeare vocabulary
    assert tok.vocab_size == 7 + 1 + 65
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(special) == i
    assert tok.token_to_id("<|unk|>") == 7
    assert [tok.token_to_id(c) for c in chars] == list(range(8, 8 + 65))
    sizes = tok.token_bytes()
    assert (sizes[:8] == 0).all() and (sizes[8:] == 1).all()


def test_round_trip(tok: CharTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


SHAKESPEARE_CHARS = sorted(set((SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(SHAKESPEARE_CHARS)))
def test_round_trip_any_text_of_the_alphabet(sample: str) -> None:
    tok = CharTokenizer(SHAKESPEARE_CHARS)
    ids = tok.encode(sample, strict=True)
    assert tok.decode(ids) == sample and len(ids) == len(sample)


def test_unknown_characters(tok: CharTokenizer) -> None:
    assert tok.encode("a🙂b") == [tok.token_to_id("a"), 7, tok.token_to_id("b")]
    assert tok.decode(tok.encode("a🙂")) == "a<|unk|>"
    with pytest.raises(DataError, match="not in the vocabulary"):
        tok.encode("a🙂", strict=True)


def test_multibyte_characters() -> None:
    tok = CharTokenizer.train(["ação 中文 🙂"])
    assert tok.decode(tok.encode("🙂ação")) == "🙂ação"
    assert tok.token_bytes()[tok.token_to_id("🙂")] == 4


def test_save_load_and_hf(tok: CharTokenizer, text: str, tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer) and loaded.kind == "char"
    sample = text[:5000] + "\n\n  x"
    assert loaded.encode(sample) == tok.encode(sample)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(sample, add_special_tokens=False).ids == tok.encode(sample)
    assert hf.encode("a🙂", add_special_tokens=False).ids == tok.encode("a🙂")  # unknown -> <|unk|>
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast.encode(sample, add_special_tokens=False) == tok.encode(sample)
    assert fast.decode(tok.encode(sample)) == sample


def test_empty_training_text() -> None:
    with pytest.raises(DataError):
        CharTokenizer.train([""])
