"""Chat format: exact ids, generation prompt, loss mask, and HF apply_chat_template agreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from fornalha.errors import DataError
from fornalha.tokenizer import BPETokenizer, CharTokenizer, train_bpe
from fornalha.tokenizer.chat import CHAT_TEMPLATE, render_chat_with_mask, stop_ids

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END = range(7)
MESSAGES = [
    {"role": "system", "content": "Você é um assistente prestável."},
    {"role": "user", "content": "Quem escreveu Dom Casmurro?"},
    {"role": "assistant", "content": "Machado de Assis, em 1899."},
    {"role": "user", "content": "E <|end|> o resto?"},
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return train_bpe([(SHARED / "pt" / "machado_dom_casmurro.txt").read_text()], 600)


def test_render_exact_ids(tok: BPETokenizer) -> None:
    e = tok.encode
    expected = (
        [BOS, SYSTEM, *e(MESSAGES[0]["content"]), END]
        + [USER, *e(MESSAGES[1]["content"]), END]
        + [ASSISTANT, *e(MESSAGES[2]["content"]), END]
        + [USER, *e(MESSAGES[3]["content"]), END]
    )
    assert tok.encode_chat(MESSAGES, add_generation_prompt=False) == expected
    assert tok.encode_chat(MESSAGES) == [*expected, ASSISTANT]
    # "<|end|>" typed by a user is text, not the control token
    assert tok.encode_chat(MESSAGES[3:], add_generation_prompt=False).count(END) == 1
    assert stop_ids() == {END, EOS}


def test_loss_mask(tok: BPETokenizer) -> None:
    ids, mask = render_chat_with_mask(tok, MESSAGES[:3])
    assert len(ids) == len(mask)
    answer = tok.encode(MESSAGES[2]["content"])
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == [*answer, END]  # the reply and the end that closes it, nothing else
    assert mask[ids.index(ASSISTANT)] == 0


def test_bad_messages(tok: BPETokenizer) -> None:
    with pytest.raises(DataError, match="role"):
        tok.encode_chat([{"role": "tool", "content": "x"}])
    with pytest.raises(DataError):
        tok.encode_chat([{"content": "x"}])


def test_char_tokenizer_chat() -> None:
    tok = CharTokenizer.train(["abc"])
    assert tok.encode_chat([{"role": "user", "content": "ab"}]) == [BOS, USER, 8, 9, END, ASSISTANT]


def test_hf_apply_chat_template_matches(tok: BPETokenizer, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok.save(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert hf.chat_template == CHAT_TEMPLATE
    for gen in (True, False):
        hf_ids = hf.apply_chat_template(MESSAGES[:3], add_generation_prompt=gen, tokenize=True)
        if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys"):  # transformers 5 returns a BatchEncoding
            hf_ids = hf_ids["input_ids"]
        assert list(hf_ids) == tok.encode_chat(MESSAGES[:3], add_generation_prompt=gen)
    text = hf.apply_chat_template(MESSAGES[:2], add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|bos|><|system|>Você é um assistente prestável.<|end|>"
        "<|user|>Quem escreveu Dom Casmurro?<|end|><|assistant|>"
    )
