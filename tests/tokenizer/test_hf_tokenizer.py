"""`HFTokenizer`: a foreign Hugging Face tokenizer behind fornalha's `Tokenizer` protocol.

The folders are built the way a downloaded model's would be: a tokenizer trained with the
`tokenizers` library, its own special tokens, saved by `transformers`' `save_pretrained`. Every
check compares against `transformers.AutoTokenizer` itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fornalha.errors import FornalhaError
from fornalha.tokenizer import BPETokenizer, HFTokenizer, Tokenizer, load_tokenizer, train_bpe
from hf_helpers import CHATML, SPECIALS, byte_level_tokenizer

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TEXTS = [
    "To be, or not to be, that is the question.",
    "Olá, coração! Ação é ótima; über naïve café 🙂 中文 日本語 한국어",
    "numbers 1234567 3.14159\n\n  indented\tand tabbed   ",
    " leading space, trailing space ",
    "emoji 👩‍👩‍👧 and 🇵🇹 flags, math ∑∫√ and ÿĀ\x00\x7f",
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Olá! Quanto é 2+2? 🙂"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "E 中文?"},
]


def corpus() -> list[str]:
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    return [text, *TEXTS * 5]


def byte_level_folder(out: Path, template: str | None = CHATML) -> Path:
    """A SmolLM2/Qwen-style folder: byte-level BPE with ChatML special tokens at ids 0..3."""
    byte_level_tokenizer(out, corpus(), vocab_size=700, template=template)
    return out


def sentencepiece_folder(out: Path) -> Path:
    """A Llama-2/TinyLlama-style folder: "▁" for spaces and <0xNN> byte-fallback tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
    tok.train_from_iterator(corpus()[:1], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    # as in Llama's files, the byte tokens are ordinary vocabulary entries, not added tokens
    path = out / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return out


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory) -> Path:
    return byte_level_folder(tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    return sentencepiece_folder(tmp_path_factory.mktemp("sp"))


def test_byte_level_encodes_and_decodes_like_transformers(chatml_dir):
    ours = load_tokenizer(chatml_dir)  # no fornalha_tokenizer.json: read as kind "hf"
    theirs = transformers.AutoTokenizer.from_pretrained(chatml_dir)
    assert isinstance(ours, HFTokenizer) and isinstance(ours, Tokenizer) and ours.kind == "hf"
    assert ours.decoding == "byte-level"
    assert ours.vocab_size == len(theirs) == 700
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text == theirs.decode(ids)
        assert ours.decode_bytes(ids) == text.encode("utf-8")
        # one token at a time (as the engine streams) gives the same bytes
        assert b"".join(ours.decode_bytes([i]) for i in ids) == text.encode("utf-8")
        assert int(ours.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
    # like transformers (and unlike fornalha's own tokenizers), special-token text is the token
    assert ours.encode("a<|im_end|>b") == theirs.encode("a<|im_end|>b", add_special_tokens=False)
    assert ours.decode([3]) == "<|im_end|>"


def test_byte_level_ids_and_token_bytes(chatml_dir):
    tok = HFTokenizer.load(chatml_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(chatml_dir)
    assert tok.special_ids == {t: i for i, t in enumerate(SPECIALS)}
    assert (tok.bos_id, tok.eos_id) == (theirs.bos_token_id, theirs.eos_token_id) == (0, 1)
    assert tok.stop_ids() == [1, 3]  # </s> and the ChatML end of turn
    sizes = tok.token_bytes()
    assert sizes.shape == (tok.vocab_size,) and sizes.dtype == np.int64
    assert list(sizes[:4]) == [0, 0, 0, 0]
    for i in range(4, tok.vocab_size):
        want = theirs.convert_tokens_to_string([theirs.convert_ids_to_tokens(i)]).encode("utf-8")
        if b"\xef\xbf\xbd" not in want:  # a partial UTF-8 character: transformers shows U+FFFD
            assert sizes[i] == len(want), i
    the = tok.encode(" the")
    assert len(the) == 1 and tok.token_to_id(" the") == the[0] == tok.token_to_id("Ġthe")
    assert tok.token_to_id("<|im_start|>") == 2 and tok.token_to_id("no such token at all") is None


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_encode_chat_equals_apply_chat_template(chatml_dir, tmp_path, where):
    folder = chatml_dir
    if where == "tokenizer_config.json":  # transformers 4 files: template inside the config
        folder = tmp_path / "v4"
        shutil.copytree(chatml_dir, folder)
        (folder / "chat_template.jinja").unlink()
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = CHATML
        config["bos_token"] = {"__type": "AddedToken", "content": "<s>", "special": True}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours = load_tokenizer(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for gen in (True, False):
        for messages in (MESSAGES, MESSAGES[1:2]):
            want = theirs.apply_chat_template(
                messages, add_generation_prompt=gen, tokenize=True, return_dict=False
            )
            assert ours.encode_chat(messages, add_generation_prompt=gen) == list(want)
    assert ours.bos_id == 0
    assert ours.render_chat(MESSAGES[1:2]).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_template_variables_and_errors(chatml_dir, tmp_path):
    folder = tmp_path / "vars"
    shutil.copytree(chatml_dir, folder)
    (folder / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}"
        "{{ m['content'] | tojson }}{{ eos_token }}{% endfor %}"
    )
    tok = HFTokenizer.load(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": 'say "olá"'}]
    assert tok.render_chat(msgs) == '<s>"say \\"olá\\""</s>'
    assert tok.encode_chat(msgs) == list(
        theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    )
    with pytest.raises(FornalhaError, match="no tools here"):
        tok.encode_chat([{"role": "tool", "content": "x"}])

    base = byte_level_folder(tmp_path / "base", template=None)
    assert not (base / "chat_template.jinja").exists()
    with pytest.raises(FornalhaError, match="no chat template"):
        load_tokenizer(base).encode_chat(MESSAGES)


def test_save_and_load_keep_kind_hf(chatml_dir, tmp_path):
    tok = HFTokenizer.load(chatml_dir).with_stop_ids([2])
    out = tok.save(tmp_path / "saved")
    meta = json.loads((out / "fornalha_tokenizer.json").read_text())
    assert meta["kind"] == "hf" and meta["vocab_size"] == 700 and meta["chat_template"] is True
    assert meta["stop_tokens"] == ["</s>", "<|im_start|>", "<|im_end|>"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (chatml_dir / name).read_bytes()
    back = load_tokenizer(out)
    assert isinstance(back, HFTokenizer) and back.stop_ids() == [1, 2, 3]
    assert back.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    # a run folder holding tokenizer/ works too
    shutil.copytree(out, tmp_path / "run" / "tokenizer")
    assert isinstance(load_tokenizer(tmp_path / "run"), HFTokenizer)


def test_fornalha_tokenizers_still_load_as_their_kind(tmp_path):
    """Our own folders also hold a tokenizer.json; fornalha_tokenizer.json decides."""
    train_bpe(TEXTS * 20, 300).save(tmp_path / "bpe")
    assert isinstance(load_tokenizer(tmp_path / "bpe"), BPETokenizer)
    with pytest.raises(FornalhaError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(FornalhaError, match="cannot read the Hugging Face tokenizer"):
        load_tokenizer(tmp_path / "broken")


def test_sentencepiece_style_bytes(sp_dir):
    tok = load_tokenizer(sp_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(sp_dir)
    assert tok.decoding == "metaspace"
    assert (tok.bos_id, tok.eos_id, tok.stop_ids()) == (1, 2, [2])
    for text in TEXTS[:5]:
        ids = tok.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == theirs.decode(ids) == text
        # bytes are per token ("▁" is a space, <0xNN> a byte): the text's first token carries the
        # space that the tokenizer's "▁" prefix added
        assert tok.decode_bytes(ids) == b" " + text.encode("utf-8")
        assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8")) + 1
    emoji = tok.encode("🙂")
    assert [theirs.convert_ids_to_tokens(i) for i in emoji] == ["▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert list(tok.token_bytes()[emoji]) == [1, 1, 1, 1, 1]
