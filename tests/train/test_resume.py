"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ARGS = [
    "--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32",
    "--set", "model.block_size=32", "--set", "model.dropout=0.1",  # dropout: the RNG state matters
    "--set", "train.batch_size=4", "--set", "train.dtype=float32", "--set", "train.optimizer=muon",
    "--set", "train.max_steps=60", "--set", "train.eval_interval=20", "--set", "train.checkpoint_interval=5",
    "--set", "train.eval_batches=2", "--set", "train.samples=1", "--set", "train.sample_tokens=8",
    "--set", "train.log_interval=1", "--set", "train.progress=false", "--set", "train.keep_checkpoints=20",
    "--device", "cpu",
]  # fmt: skip


def command(shards: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fornalha.cli",
        "train",
        "--data",
        str(shards),
        "--out",
        str(out),
        *ARGS,
        *extra,
    ]


def env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if r["kind"] == "train"}


def test_sigkill_then_resume_is_bit_identical(small_shards, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(command(small_shards, reference), env=env(), check=True, capture_output=True, timeout=300)

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        command(small_shards, crashed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not (crashed / "checkpoints" / "step-000025").is_dir():  # past an evaluation, mid-run
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, "the run finished before SIGKILL"
    assert not (crashed / "checkpoints" / "step-000060").exists()

    subprocess.run(
        command(small_shards, crashed, "--resume"), env=env(), check=True, capture_output=True, timeout=300
    )

    final_a = reference / "checkpoints" / "step-000060"
    final_b = crashed / "checkpoints" / "step-000060"
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(final_a / name), load_file(final_b / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    assert train_losses(reference) == train_losses(crashed)  # every step's loss, before and after the kill
    sa = json.loads((reference / "summary.json").read_text())
    sb = json.loads((crashed / "summary.json").read_text())
    assert (sa["best_step"], sa["best_val_loss"], sa["tokens_seen"]) == (
        sb["best_step"],
        sb["best_val_loss"],
        sb["tokens_seen"],
    )
    samples = lambda run: [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    assert samples(reference)[-1] == samples(crashed)[-1]
