"""Data parallelism on 2 CPU processes (gloo): DDP and FSDP2 give the same run as 1 process with
twice the gradient accumulation; FSDP2 checkpoints are single-process checkpoints, and resume."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fornalha.checkpoint import load_model

ARGS = [
    "--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32", "--set", "model.mlp=relu2",
    "--set", "model.block_size=32", "--set", "train.batch_size=4", "--set", "train.dtype=float32",
    "--set", "train.max_steps=8", "--set", "train.eval_interval=4", "--set", "train.eval_batches=4",
    "--set", "train.samples=0", "--set", "train.log_interval=1", "--set", "train.progress=false",
    "--set", "train.optimizer=muon", "--set", "model.dropout=0.0", "--device", "cpu",  # dropout masks differ per rank: equivalence needs a deterministic model
]  # fmt: skip

# FSDP2 runs also exercise what a sharded model makes delicate: evaluation over the whole val split
# (47 batches: the two ranks get 24 and 23, and still run the same number of forward passes),
# sample generation (a forward on every rank), step checkpoints at 4 and 8 and the best one, and
# gradient clipping (the default 1.0 clips several of these steps).
FSDP_ARGS = [
    *ARGS, "--set", "train.eval_batches=1000", "--set", "train.samples=1", "--set", "train.sample_tokens=8",
    "--set", "train.checkpoint_interval=4", "--set", "train.keep_checkpoints=5",
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


def env() -> dict[str, str]:
    e = os.environ | {"OMP_NUM_THREADS": "1"}
    e.pop("PYTEST_XDIST_WORKER", None)
    return e


def train(
    shards: Path, out: Path, args: list[str], *extra: str, nproc: int = 1, timeout: float = 150
) -> None:
    """`fornalha train` in 1 process, or under torchrun in `nproc` gloo processes."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += [
            "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        ]  # fmt: skip
    cmd = [*launcher, "-m", "fornalha.cli", "train", "--data", str(shards), *args, "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # ranks waiting on each other: a deadlock
        proc.terminate()  # torchrun passes SIGTERM on to its workers (their own sessions) and exits
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr = "(no output: torchrun did not stop)"
        pytest.fail(f"training did not finish in {timeout}s (ranks deadlocked?):\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]


def assert_same_losses(a: Path, b: Path, rel: float) -> None:
    ta, tb = rows(a, "train"), rows(b, "train")
    assert [r["step"] for r in ta] == [r["step"] for r in tb] == list(range(1, 9))
    assert [r["tokens"] for r in ta] == [r["tokens"] for r in tb]
    assert [r["train_loss"] for r in tb] == pytest.approx([r["train_loss"] for r in ta], rel=rel, abs=1e-5)
    va, vb = rows(a, "eval"), rows(b, "eval")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [4, 8]
    assert [r["val_loss"] for r in vb] == pytest.approx([r["val_loss"] for r in va], rel=rel)


def test_ddp_two_processes_match_one_process_with_double_accumulation(small_shards, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(small_shards, single, ARGS, "--set", "train.grad_accum=2")
    train(small_shards, ddp, ARGS, "--set", "train.grad_accum=1", nproc=2)
    assert_same_losses(single, ddp, rel=1e-4)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def fsdp_runs(small_shards, tmp_path_factory):
    """{optimizer: (single-process run, 2-process FSDP2 run)}, trained once per test worker."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(optimizer: str) -> tuple[Path, Path]:
        if optimizer not in cache:
            root = tmp_path_factory.mktemp(f"fsdp-{optimizer}")
            opt = ["--set", f"train.optimizer={optimizer}"]
            train(small_shards, root / "single", FSDP_ARGS, *opt, "--set", "train.grad_accum=2")
            fsdp = ["--set", "train.fsdp=true", "--set", "train.grad_accum=1"]
            train(small_shards, root / "fsdp", FSDP_ARGS, *opt, *fsdp, nproc=2)
            cache[optimizer] = root / "single", root / "fsdp"
        return cache[optimizer]

    return get


@pytest.mark.xdist_group("fsdp")
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_fsdp_two_processes_match_one_process_with_double_accumulation(fsdp_runs, optimizer):
    single, fsdp = fsdp_runs(optimizer)
    assert_same_losses(single, fsdp, rel=1e-3)
    train_losses = [r["train_loss"] for r in rows(fsdp, "train")]
    assert train_losses[-1] < train_losses[0] - 0.15  # the sharded parameters really are being trained
    summary = json.loads((fsdp / "summary.json").read_text())
    assert (summary["world_size"], summary["status"], summary["best_step"]) == (2, "completed", 8)

    # checkpoints: plain full tensors, the same names and shapes as a single-process run's
    files = [(c, n) for c in ("step-000004", "step-000008") for n in ("model", "optimizer")] + [
        ("best", "model")
    ]
    for ckpt, name in files:
        a = load_file(single / "checkpoints" / ckpt / f"{name}.safetensors")
        b = load_file(fsdp / "checkpoints" / ckpt / f"{name}.safetensors")
        assert {k: v.shape for k, v in b.items()} == {k: v.shape for k, v in a.items()}, f"{ckpt}/{name}"
        for k in a:
            assert torch.allclose(b[k], a[k], rtol=1e-3, atol=1e-4), f"{ckpt}/{name}:{k}"
    opt_a = json.loads((single / "checkpoints" / "step-000008" / "optimizer.json").read_text())
    opt_b = json.loads((fsdp / "checkpoints" / "step-000008" / "optimizer.json").read_text())
    assert opt_b == opt_a

    # the run folder works for everything downstream (`fornalha eval/generate --run`, export)
    model, meta = load_model(fsdp)
    assert meta["step"] == 8 and model.num_params() == load_model(single)[0].num_params()

    # samples: generated by both ranks in step, written once (by rank 0)
    samples = [json.loads(line) for line in (fsdp / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [4, 8]


@pytest.mark.xdist_group("fsdp")
def test_fsdp_resume_is_bit_identical(fsdp_runs, small_shards, tmp_path):
    _, fsdp = fsdp_runs("muon")
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000008")  # as if killed between steps 4 and 8
    fsdp_args = ["--set", "train.fsdp=true", "--set", "train.grad_accum=1"]
    train(small_shards, resumed, FSDP_ARGS, *fsdp_args, "--resume", nproc=2)

    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(fsdp / "checkpoints" / "step-000008" / name)
        b = load_file(resumed / "checkpoints" / "step-000008" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    assert rows(resumed, "train") != [] and [r["train_loss"] for r in rows(resumed, "train")] == [
        r["train_loss"] for r in rows(fsdp, "train")
    ]
    assert [r["val_loss"] for r in rows(resumed, "eval")] == [r["val_loss"] for r in rows(fsdp, "eval")]
