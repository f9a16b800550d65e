"""No lost work: one writer per run folder, foreign folders refused, Ctrl-C saves a checkpoint,
damaged checkpoints are kept aside, a crash during a checkpoint write leaves a usable run, and
user errors are one line and exit code 2. All through the real entry point, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fornalha.checkpoint import load_model, verify_checkpoint

SMALL = [
    "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32", "--set", "model.block_size=32",
    "--set", "train.batch_size=4", "--set", "train.samples=0", "--set", "train.eval_batches=2",
    "--set", "train.progress=false", "--set", "train.log_interval=1", "--device", "cpu",
]  # fmt: skip


def fornalha(*args, env_extra: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "COLUMNS": "400"} | (env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *map(str, args)], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def train_cmd(shards, out, *extra) -> list:
    return ["train", "--data", shards, "--out", out, *SMALL, *extra]


def one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    joined = " ".join(proc.stderr[proc.stderr.index("error:") :].split())  # rich wraps long lines
    assert fragment in joined, joined


# ---- one writer per run folder; foreign folders are refused ------------------------------------


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(small_shards, tmp_path):
    from fornalha.train.lock import RunLock

    run = tmp_path / "run"
    with RunLock(run):  # another "process" is writing this run (flock is per open file)
        proc = fornalha(*train_cmd(small_shards, run, "--set", "train.max_steps=2"))
    one_line_error(proc, f"is being written by another fornalha process (pid {os.getpid()}")
    assert not (run / "checkpoints").exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".fornalha-lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"})
    )
    proc = fornalha(*train_cmd(small_shards, run, "--set", "train.max_steps=2"))
    assert proc.returncode == 0, proc.stderr
    assert "took over a stale lock" in " ".join(proc.stderr.split())
    assert not (run / ".fornalha-lock").exists()  # released at exit


def test_a_foreign_folder_is_refused_untouched(small_shards, tmp_path):
    notes = tmp_path / "notes"
    (notes / "train").mkdir(parents=True)
    (notes / "train" / "mine.txt").write_text("precious")
    proc = fornalha(*train_cmd(small_shards, notes, "--set", "train.max_steps=2"))
    one_line_error(proc, "is not empty and not a fornalha run folder")
    assert sorted(p.name for p in notes.rglob("*")) == ["mine.txt", "train"]


# ---- Ctrl-C / SIGTERM ----------------------------------------------------------------------------


def start_long_run(shards, run) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fornalha.cli", *train_cmd(shards, run, "--set", "train.max_steps=100000",
         "--set", "train.eval_interval=100000")],
        env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_and_says_how_to_resume(small_shards, tmp_path, sig):
    run = tmp_path / "run"
    proc = start_long_run(small_shards, run)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    err = " ".join(err.split())
    assert f"resume with: fornalha train --out {run} --resume" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] >= 3
    ckpt = run / "checkpoints" / f"step-{summary['steps']:06d}"
    assert verify_checkpoint(ckpt)["step"] == summary["steps"]  # nothing since the last line is lost
    assert not (run / ".fornalha-lock").exists()


def test_a_second_ctrl_c_aborts_at_once(small_shards, tmp_path):
    run = tmp_path / "run"
    proc = start_long_run(small_shards, run)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    proc.communicate(timeout=300)
    assert proc.returncode == 130 and time.time() - t0 < 20


# ---- --resume: damaged checkpoints, --restart, best/ -------------------------------------------


def test_resume_refuses_when_every_checkpoint_is_damaged(small_shards, tmp_path):
    run = tmp_path / "run"
    args = ("--set", "train.max_steps=4", "--set", "train.eval_interval=2")
    assert fornalha(*train_cmd(small_shards, run, *args)).returncode == 0
    best_before = verify_checkpoint(run / "checkpoints" / "best")
    for step in ("step-000002", "step-000004"):
        (run / "checkpoints" / step / "model.safetensors").write_bytes(b"garbage")
    proc = fornalha("train", "--out", run, "--resume")
    one_line_error(proc, "no valid checkpoint to resume")
    assert "pass --restart" in " ".join(proc.stderr.split())
    damaged = sorted(p.name[:11] for p in (run / "checkpoints" / "damaged").iterdir())
    assert damaged == ["step-000002", "step-000004"]  # kept, moved aside

    proc = fornalha("train", "--out", run, "--resume", "--restart", "--set", "train.lr=1e-6")
    assert proc.returncode == 0, proc.stderr
    assert (
        sorted(p.name[:11] for p in (run / "checkpoints" / "damaged").iterdir()) == damaged
    )  # never rotated away
    # the restarted run barely learns, so it is never better: best/ is the one from before
    assert verify_checkpoint(run / "checkpoints" / "best")["saved_at"] == best_before["saved_at"]


# ---- a crash in the middle of a checkpoint write ---------------------------------------------------


def test_a_kill_between_the_renames_of_best_leaves_a_usable_run(small_shards, tmp_path):
    run = tmp_path / "run"
    args = ("--set", "train.max_steps=6", "--set", "train.eval_interval=2", "--set", "train.lr=3e-3")
    proc = fornalha(
        *train_cmd(small_shards, run, *args), env_extra={"FORNALHA_FAULT": "between-renames:best"}
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpts = run / "checkpoints"
    assert not (ckpts / "best").exists() and list(ckpts.glob(".best.old-*"))  # today's failure mode
    model, meta = load_model(run)  # what generate/eval/export --run use
    assert meta["step"] == 2
    gen = fornalha(
        "generate",
        "--run",
        run,
        "--prompt",
        "To be",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        env_extra={"FORNALHA_NO_KERNELS": "1"},
    )  # the checkpoint is the point, not the C++ kernel
    assert gen.returncode == 0, gen.stderr

    proc = fornalha("train", "--out", run, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "restored best/" in " ".join(proc.stderr.split())
    assert verify_checkpoint(ckpts / "best")["step"] >= 2 and not list(ckpts.glob(".*"))
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_a_kill_between_file_writes_is_cleaned_on_resume(small_shards, tmp_path):
    run = tmp_path / "run"
    args = ("--set", "train.max_steps=6", "--set", "train.eval_interval=2")
    proc = fornalha(
        *train_cmd(small_shards, run, *args), env_extra={"FORNALHA_FAULT": "after-model:step-000004"}
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpts = run / "checkpoints"
    (tmp,) = ckpts.glob(".step-000004.tmp-*")
    assert [p.name for p in tmp.iterdir()] == ["model.safetensors"]  # half written, never published
    proc = fornalha("train", "--out", run, "--resume")
    assert proc.returncode == 0, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "removed .step-000004.tmp-" in err and "step-000002 (step 2," in err
    assert not list(ckpts.glob(".*")) and verify_checkpoint(ckpts / "step-000006")["step"] == 6


# ---- user errors through the real entry point: exit 2, one line ----------------------------------


def test_train_user_errors_are_one_line_exit_2(small_shards, shakespeare_text, tmp_path):
    from fornalha.tokenizer import CharTokenizer

    other = tmp_path / "other-tok"
    CharTokenizer.train(["xyz"]).save(other)
    one_line_error(fornalha(*train_cmd(small_shards, tmp_path / "a", "--tokenizer", other)),
                   "were made with another tokenizer")  # fmt: skip
    one_line_error(fornalha(*train_cmd(small_shards, tmp_path / "b", "--set", "model.vocab_size=20")),
                   "but the model's vocabulary is 20")  # fmt: skip
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "notes.txt").write_text("hello")
    one_line_error(fornalha(*train_cmd(neither, tmp_path / "c")), "is neither a prepared dataset")

    run = tmp_path / "d"
    assert fornalha(*train_cmd(small_shards, run, "--set", "train.max_steps=2")).returncode == 0
    one_line_error(fornalha("train", "--out", run, "--resume", "--set", "model.n_layer=2"),
                   "was trained with another model config (differs in n_layer)")  # fmt: skip


def test_a_diverging_run_stops_with_exit_2_and_keeps_the_last_good_checkpoint(small_shards, tmp_path):
    run = tmp_path / "run"
    args = ("--set", "train.max_steps=10", "--set", "train.eval_interval=5")
    proc = fornalha(*train_cmd(small_shards, run, *args), env_extra={"FORNALHA_FAULT": "nan-loss:7"})
    one_line_error(proc, "training diverged at step 7 (loss nan); the last good checkpoint is")
    assert verify_checkpoint(run / "checkpoints" / "step-000005")["step"] == 5
    assert not (run / "checkpoints" / "step-000007").exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
