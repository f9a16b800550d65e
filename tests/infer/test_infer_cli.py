"""`fornalha generate` and `fornalha chat` on a small run folder (random weights, char tokenizer)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from infer_helpers import tiny_config

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.cli import main
from fornalha.infer import Engine, SamplingParams
from fornalha.model import GPT
from fornalha.tokenizer import load_tokenizer
from fornalha.tokenizer.char import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    tok = CharTokenizer.train([TEXT])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, block_size=48, init_std=0.3))
    save_checkpoint(
        run / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": model.config.to_dict(), "step": 0},
    )
    return run


def cli(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def expected(run_dir, prompt: str, **kw) -> str:
    from fornalha.checkpoint import load_model

    model, _ = load_model(run_dir)
    engine = Engine(model, load_tokenizer(run_dir / "tokenizer"), max_batch_size=1)
    return engine.generate([prompt], SamplingParams(**kw))[0].text


def test_generate_prints_only_the_text(run_dir, capsys):
    code, out, err = cli(
        capsys,
        "generate",
        "--run",
        str(run_dir),
        "--prompt",
        "the fox",
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
        "--device",
        "cpu",
    )
    assert code == 0
    assert out == expected(run_dir, "the fox", temperature=0, max_new_tokens=20) + "\n"
    assert "device" in err  # diagnostics on stderr
    assert "KV cache fp16" in err  # the CPU default: a float16 cache read by the compiled kernel
    code, streamed, _ = cli(
        capsys,
        "generate",
        "--run",
        str(run_dir),
        "-p",
        "the fox",
        "-t",
        "0",
        "--max-new-tokens",
        "20",
        "--stream",
        "--device",
        "cpu",
    )
    assert code == 0 and streamed == out


def test_generate_prompts_file_jsonl(run_dir, capsys, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"prompt": "the"}) + "\n" + json.dumps({"prompt": "a dog", "max_new_tokens": 3}) + "\n"
    )
    code, out, _ = cli(
        capsys,
        "generate",
        "--run",
        str(run_dir),
        "--prompts-file",
        str(f),
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
        "--device",
        "cpu",
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in lines] == ["the", "a dog"]
    assert lines[0]["text"] == expected(run_dir, "the", temperature=0, max_new_tokens=10)
    assert lines[1]["tokens"] <= 3


def test_generate_errors(run_dir, capsys, tmp_path):
    code, out, err = cli(capsys, "generate", "--run", str(tmp_path / "nope"), "--prompt", "x")
    assert code == 2 and out == "" and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(
        capsys, "generate", "--run", str(run_dir), "--prompt", "the fox " * 10, "--device", "cpu"
    )
    assert code == 2 and out == "" and "does not fit the context" in err
    code, _, err = cli(capsys, "generate", "--run", str(run_dir), "--prompt", "x", "--top-p", "0")
    assert code == 2 and "top_p" in err
    code, out, err = cli(capsys, "generate", "--run", str(run_dir), "--prompt", "x", "--kv-cache", "int4")
    assert code == 2 and out == "" and "unknown --kv-cache 'int4'" in err
    code, out, _ = cli(
        capsys,
        "generate",
        "--run",
        str(run_dir),
        "-p",
        "x",
        "-t",
        "0",
        "--kv-cache",
        "model",
        "--device",
        "cpu",
    )
    assert code == 0 and out.strip()
    bad = tmp_path / "bad.jsonl"
    for text, message in (
        ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not valid JSON"),
        ('{"prompt": "a"}\n["b"]\n', "line 2: expected a JSON object"),
        ('{"text": "a"}\n', 'line 1: expected {"prompt"'),
        ('{"prompt": "a", "temperature": -1}\n', "line 1: "),
        ("\n\n", "holds no prompts"),
    ):
        bad.write_text(text)
        code, out, err = cli(capsys, "generate", "--run", str(run_dir), "--prompts-file", str(bad))
        assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, (text, err)
    code, _, err = cli(
        capsys, "generate", "--run", str(run_dir), "--prompts-file", str(tmp_path / "none.jsonl")
    )
    assert code == 2 and "prompts file" in err and "does not exist" in err


def test_chat_reads_lines_resets_and_saves(run_dir, capsys, monkeypatch, tmp_path):
    save = tmp_path / "chat.json"
    stdin = f"hello\nhow are you\n/reset\nagain\n/save {save}\n/exit\nnever read\n"
    code, out, err = cli(
        capsys,
        "chat",
        "--run",
        str(run_dir),
        "--system",
        "be brief",
        "-t",
        "0",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        stdin=stdin,
        monkeypatch=monkeypatch,
    )
    assert code == 0
    data = json.loads(save.read_text())
    last = data["messages"][-1]["content"]
    assert out.endswith(last + "\n") and out.count("\n") >= 3 + last.count("\n")  # replies may hold newlines
    assert data["system"] == "be brief"
    assert [m["role"] for m in data["messages"]] == [
        "system",
        "user",
        "assistant",
    ]  # reset forgot the first two
    assert data["messages"][1]["content"] == "again"
    assert last and data["messages"][2]["content"] == last
    # the 2nd turn no longer fits the 48-token context with room for an 8-token reply: the first exchange went
    assert "(2 oldest messages left out" in err
    assert "reset" in err
