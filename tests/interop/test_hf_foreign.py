"""A foreign model end to end: `import hf` a Llama saved by transformers with its own tokenizer
(byte-level BPE, `<s>` `</s>` `<|im_start|>` `<|im_end|>`, a ChatML template), then load, generate
and chat with the run as with any other.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from fornalha.checkpoint import load_run
from fornalha.cli import main
from fornalha.infer import Engine, SamplingParams
from fornalha.interop import import_hf
from fornalha.tokenizer import HFTokenizer
from hf_helpers import CHATML, byte_level_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Olá, coração! café 🙂 中文", "To be, or not to be, that is the question.", "numbers 12345\n\tx"]


def foreign_model(out: Path, template: str | None = CHATML) -> Path:
    """What a user has on disk for a small public Llama (SmolLM2-style), at toy size."""
    fast = byte_level_tokenizer(out, TEXTS * 30, vocab_size=400, template=template)
    config = transformers.LlamaConfig(
        vocab_size=len(fast) + 8,  # padded past the tokenizer, as many models are
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = [1, 3]  # like an instruct model: </s> and <|im_end|>
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("foreign")
    model_dir = foreign_model(root / "hf")
    return model_dir, import_hf(model_dir, root / "run")


def test_import_writes_kind_hf_and_load_run_works(imported):
    model_dir, run = imported
    assert (run / "tokenizer" / "chat_template.jinja").is_file()
    meta = json.loads((run / "tokenizer" / "fornalha_tokenizer.json").read_text())
    assert meta["kind"] == "hf" and meta["stop_tokens"] == ["</s>", "<|im_end|>"]
    report = json.loads((run / "import.json").read_text())["tokenizer"]
    assert report["kind"] == "hf" and report["chat_template"] is True
    assert report["fornalha_special_tokens"] is False
    assert "note" not in report  # the model chats with its own template

    model, tok, _ = load_run(run)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == model.config.vocab_size - 8
    theirs = transformers.AutoTokenizer.from_pretrained(model_dir)
    for text in TEXTS:
        assert tok.encode(text) == theirs.encode(text, add_special_tokens=False)
    msgs = [{"role": "user", "content": "Olá!"}]
    assert tok.encode_chat(msgs) == list(
        theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    )

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode_chat(msgs)])
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() <= 1e-4


def test_engine_stops_at_the_models_end_of_turn(imported):
    _, run = imported
    model, tok, _ = load_run(run)
    engine = Engine(model, tok, max_batch_size=1)
    prompt = [tok.bos_id, *tok.encode("Olá, coração!")]  # no <|im_end|> inside
    assert 3 not in prompt
    greedy = SamplingParams(temperature=0, max_new_tokens=4)
    top = engine.generate([prompt], greedy)[0].completions[0].token_ids[0]
    # tied embeddings: doubling <|im_end|>'s row from the greedy token's doubles its logit, so
    # <|im_end|> becomes the greedy next token (the prompt does not use that row)
    with torch.no_grad():
        model.wte.weight[3] = 2 * model.wte.weight[top]
    done = engine.generate([prompt], greedy)[0].completions[0]
    assert done.finish_reason == "stop" and done.token_ids == [] and done.text == ""
    more = engine.generate([prompt], greedy.with_(ignore_eos=True))[0].completions[0]
    assert more.finish_reason == "length" and more.token_ids[0] == 3


def test_cli_generate_and_chat(imported, capsys, monkeypatch):
    _, run = imported
    args = ["--run", str(run), "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompt", "Olá, coração!", *args])
    out, err = capsys.readouterr()
    assert exit_.value.code in (0, None), err
    assert out.strip() and "Traceback" not in err

    monkeypatch.setattr("sys.stdin", io.StringIO("Olá!\n"))
    with pytest.raises(SystemExit) as exit_:
        main(["chat", *args])
    out, err = capsys.readouterr()
    assert exit_.value.code in (0, None), err
    assert "<|im_" not in out  # special tokens never reach the text


def test_base_model_without_template_keeps_the_note(tmp_path):
    run = import_hf(foreign_model(tmp_path / "hf", template=None), tmp_path / "run")
    report = json.loads((run / "import.json").read_text())["tokenizer"]
    assert report["kind"] == "hf" and report["chat_template"] is False
    assert "chat template does not apply" in report["note"]
    _, tok, _ = load_run(run)
    assert tok.encode(TEXTS[0]) and tok.decode(tok.encode(TEXTS[0])) == TEXTS[0]


def test_chat_with_a_base_model_says_why(tmp_path, capsys, monkeypatch):
    run = import_hf(foreign_model(tmp_path / "hf", template=None), tmp_path / "run")
    monkeypatch.setattr("sys.stdin", io.StringIO("Olá!\n"))
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--run", str(run), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "no chat template" in err and "Traceback" not in err
