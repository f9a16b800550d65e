"""DDP: 2 CPU processes (gloo) give the same losses as 1 process with twice the gradient accumulation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = [
    "--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32",
    "--set", "model.block_size=32", "--set", "train.batch_size=4", "--set", "train.dtype=float32",
    "--set", "train.max_steps=8", "--set", "train.eval_interval=4", "--set", "train.eval_batches=4",
    "--set", "train.samples=0", "--set", "train.log_interval=1", "--set", "train.progress=false",
    "--set", "train.optimizer=muon", "--set", "model.dropout=0.0", "--device", "cpu",  # dropout masks differ per rank: equivalence needs a deterministic model
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(run: Path, kind: str) -> list[dict]:
    return [
        r
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if (r := json.loads(line))["kind"] == kind
    ]


def test_ddp_two_processes_match_one_process_with_double_accumulation(small_shards, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    base = [str(small_shards), *ARGS]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "fornalha.cli", "train", "--data", *base, "--out", str(single), "--set", "train.grad_accum=2"],
        env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}",
            "-m", "fornalha.cli", "train", "--data", *base, "--out", str(ddp), "--set", "train.grad_accum=1",
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = rows(single, "train"), rows(ddp, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4, abs=1e-5)
    va, vb = rows(single, "eval"), rows(ddp, "eval")
    assert [r["val_loss"] for r in vb] == pytest.approx([r["val_loss"] for r in va], rel=1e-4)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2
