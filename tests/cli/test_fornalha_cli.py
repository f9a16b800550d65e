"""The top-level CLI: every stage is listed, every command's help has an example, bad usage is one line
and exit code 2, and `fornalha pipeline` runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FORNALHA = [sys.executable, "-m", "fornalha.cli"]

COMMANDS = [
    ["data", "prepare"],
    ["data", "tokenize"],
    ["tokenizer", "train"],
    ["tokenizer", "encode"],
    ["tokenizer", "decode"],
    ["tokenizer", "eval"],
    ["train"],
    ["sweep"],
    ["eval"],
    ["pipeline"],
    ["generate"],
    ["chat"],
    ["export", "hf"],
    ["import", "hf"],
    ["explain"],
    ["finetune", "sft"],
    ["finetune", "dpo"],
    ["feedback", "export"],
    ["registry", "promote"],
    ["improve"],
]


def run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([*FORNALHA, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def test_top_level_help_lists_every_stage() -> None:
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for name in (
        "data",
        "tokenizer",
        "train",
        "sweep",
        "eval",
        "pipeline",
        "generate",
        "chat",
        "export",
        "import",
    ):
        assert f" {name} " in r.stdout, f"{name} missing from fornalha --help"


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_help_has_an_example(cmd: list[str]) -> None:
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "fornalha " + " ".join(cmd) in r.stdout, f"no example of `fornalha {' '.join(cmd)}` in its help"


def test_unknown_command_exits_2() -> None:
    r = run("frobnicate")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = run("pipeline", "--out", str(tmp_path / "p"), "--set", "model.n_layers=3")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "n_layers" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3  # one message (rich may wrap a long line)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = run("--debug", "pipeline", "--out", str(tmp_path / "p"), "--set", "model.n_layers=3")
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_pipeline_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    """The whole pipeline on a slice of TinyShakespeare with a one-and-a-half-minute budget."""
    out = tmp_path / "run"
    r = run(
        "pipeline",
        "--source", str(shared_data / "tinyshakespeare.txt"),
        "--split", "tail", "--val-fraction", "0.1",
        "--max-bytes", "200000", "--vocab-size", "512",
        "--minutes", "1.5",
        "--set", "model.n_layer=2", "--set", "model.n_embd=64", "--set", "model.n_head=2",
        "--set", "train.batch_size=8", "--set", "model.block_size=64", "--set", "train.eval_interval=20",
        "--set", "train.eval_batches=4",
        "--out", str(out),
        timeout=300,
        env={"OMP_NUM_THREADS": "1"},  # one core per pytest-xdist worker
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("dataset/report.json", "dataset/manifest.json", "tokenizer/tokenizer.json", "shards/index.json",
                 "config.yaml", "metrics.jsonl", "summary.json", "plots/loss.png", "eval.json", "report.html",
                 "checkpoints/best/model.safetensors"):  # fmt: skip
        assert (out / name).is_file(), f"{name} missing"
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
    assert len(vals) >= 2 and min(vals) < vals[0], "validation loss did not fall"
    assert summary["best_val_bpb"] is not None
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    # a second run without --overwrite refuses; with it, the data caches are reused
    again = run("pipeline", "--out", str(out), "--minutes", "1.5")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_error_text_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    """Messages are not rich markup: a path like [x]/y must neither crash the printer nor vanish."""
    r = run("data", "prepare", "--source", str(tmp_path / "[bold]missing[/]"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    assert "[bold]missing[/]" in r.stderr.replace("\n", "")
