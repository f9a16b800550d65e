"""The training loop end to end on TinyShakespeare (character level, tiny models, few steps)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from fornalha.checkpoint import latest_checkpoint, load_checkpoint, load_model
from fornalha.errors import ConfigError
from fornalha.train.config import load_config
from fornalha.train.trainer import train

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=64",
    "model.mlp=relu2",
    "train.batch_size=8",
    "train.dtype=float32",
    "train.progress=false",
    "train.samples=1",
    "train.sample_tokens=20",
    "train.eval_batches=4",
    "train.log_interval=5",
]


def cfg_for(data, *extra):
    return load_config(overrides=[*TINY, f"data.path={data}", *extra])


def test_loss_falls_on_tinyshakespeare(shakespeare_shards, tmp_path):
    cfg = cfg_for(
        shakespeare_shards,
        "train.max_steps=200",
        "train.eval_interval=100",
        "train.optimizer=muon",
        "train.lr=3e-3",
        "train.schedule=wsd",
    )
    summary = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["steps"] == 200
    # uniform over 65 characters is ln 65 = 4.17 nats; a tiny model learns letters and spaces fast
    assert summary["best_val_loss"] < 2.6, summary
    assert summary["best_val_bpb"] == pytest.approx(
        summary["best_val_loss"] / math.log(2), rel=1e-6
    )  # 1 byte/char
    # the run folder holds everything later stages need
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "plots/loss.png",
        "tokenizer/tokenizer.json",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"] - 1.0
    keys = {
        "step",
        "tokens",
        "train_loss",
        "val_loss",
        "val_bpb",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "elapsed_s",
    }
    assert keys <= set(rows[0])
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [100, 200] and "gap" in evals[0]
    assert (run / "samples.jsonl").read_text().count("\n") == 2
    # the best checkpoint loads as a model, and step checkpoints are pruned to keep_checkpoints
    model, meta = load_model(run, which="best")
    assert meta["step"] == summary["best_step"] and meta["val_bpb"] == pytest.approx(summary["best_val_bpb"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step-000100", "step-000200"]


def test_early_stopping_fires_when_overfitting(tmp_path, shakespeare_text):
    """A big-for-its-data model on 3 kB of text memorises it; validation loss turns up and patience ends the run."""
    from train_fixtures import make_char_shards

    shards = make_char_shards(shakespeare_text[:3300], tmp_path / "data")
    cfg = load_config(
        overrides=[
            *TINY,
            f"data.path={shards}",
            "model.block_size=32",
            "model.n_embd=128",
            "model.n_head=4",
            "train.max_steps=400",
            "train.eval_interval=10",
            "train.patience=2",
            "train.optimizer=adamw",
            "train.lr=1e-2",
            "train.weight_decay=0.0",
            "train.schedule=constant",
            "train.warmup=0",
            "train.samples=0",
            "train.eval_batches=2",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "early_stopped", summary
    assert summary["steps"] < 400 and summary["best_step"] <= summary["steps"] - 20
    assert summary["overfitting_steps"], "the overfitting warning should have fired"
    assert summary["final_val_loss"] > summary["best_val_loss"]
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert meta["step"] == summary["best_step"]


def test_corrupt_newest_checkpoint_falls_back(small_shards, tmp_path):
    run = tmp_path / "run"
    cfg = cfg_for(small_shards, "train.max_steps=20", "train.eval_interval=10", "train.keep_checkpoints=3")
    train(cfg, run)
    newest = run / "checkpoints" / "step-000020" / "model.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="step-000020.*does not match its sha256"):
        assert latest_checkpoint(run / "checkpoints").name == "step-000010"
    more = cfg_for(small_shards, "train.max_steps=30", "train.eval_interval=10", "train.keep_checkpoints=3")
    summary = train(more, run, resume=True)
    assert summary["steps"] == 30
    # the damaged checkpoint was moved aside, not rotated away
    (damaged,) = (run / "checkpoints" / "damaged").iterdir()
    assert (
        damaged.name.startswith("step-000020-")
        and (damaged / "model.safetensors").read_bytes() == data[: len(data) // 2]
    )


def test_existing_run_needs_resume(small_shards, tmp_path):
    cfg = cfg_for(small_shards, "train.max_steps=5", "train.eval_interval=5", "train.samples=0")
    train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_missing_logger_is_a_clear_error(small_shards, tmp_path, backend, monkeypatch):
    # as if the package were not installed: importing a module mapped to None raises ImportError
    for module in ("torch.utils.tensorboard", "tensorboard") if backend == "tensorboard" else ("wandb",):
        monkeypatch.setitem(sys.modules, module, None)
    cfg = cfg_for(small_shards, "train.max_steps=2", f"train.log=[{backend}]")
    with pytest.raises(ConfigError, match=f"{backend}.*not installed.*pip install"):
        train(cfg, tmp_path / "run")


LOGGED = ("train.max_steps=6", "train.eval_interval=3", "train.log_interval=1", "train.samples=0")


def logged_metrics(run) -> dict[str, dict[int, float]]:
    """metrics.jsonl as the loggers should have it: {"train/train_loss": {step: value}, "eval/val_loss": …}."""
    out: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for key in ("train_loss", "val_loss", "val_bpb", "lr"):
            if r.get(key) is not None:
                out.setdefault(f"{r['kind']}/{key}", {})[r["step"]] = r[key]
    return out


def test_tensorboard_event_file_holds_the_metrics(small_shards, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(cfg_for(small_shards, *LOGGED, "train.log=[tensorboard]"), run)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected = logged_metrics(run)
    assert len(expected["train/train_loss"]) == 6 and len(expected["eval/val_loss"]) == 2
    for tag, by_step in expected.items():
        logged = {e.step: e.value for e in events.Scalars(tag)}  # stored as float32
        assert logged == pytest.approx(by_step, rel=1e-6), tag
    # an evaluation's interval-mean train loss is its own tag, not a second value at that step
    assert {e.step for e in events.Scalars("train/train_loss")} == set(range(1, 7))
    assert {e.step for e in events.Scalars("eval/train_loss")} == {3, 6}


def wandb_records(path):
    """The protobuf records of an offline W&B run file (run-ID.wandb): W&B's LevelDB-style log of
    32 KiB blocks, each record chunk behind a 7-byte header (crc32, length, type)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), "not a W&B run file (format changed?)"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_metrics(small_shards, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(cfg_for(small_shards, *LOGGED, "train.log=[wandb]", "train.wandb_project=fornalha-test"), run)

    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[str, dict[int, float]] = {}
    config = {}
    for record in wandb_records(run_file):
        if record.HasField("history"):
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            for key, value in row.items():
                history.setdefault(key, {})[row["_step"]] = value
        elif record.HasField("run"):
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            assert record.run.project == "fornalha-test" and record.run.display_name == "run"
    expected = logged_metrics(run)
    assert len(expected["train/train_loss"]) == 6 and len(expected["eval/val_loss"]) == 2
    for key, by_step in expected.items():
        assert history[key] == pytest.approx(by_step, rel=1e-12), key
    assert config["train"]["max_steps"] == 6 and config["model"]["n_layer"] == 2


def test_init_from_and_grad_accum(small_shards, tmp_path):
    """Fine-tuning starts from a checkpoint's weights; tokens_per_step turns into grad_accum."""
    base = cfg_for(small_shards, "train.max_steps=10", "train.eval_interval=10", "train.samples=0")
    first = train(base, tmp_path / "base")
    tuned = cfg_for(
        small_shards,
        "train.max_steps=4",
        "train.eval_interval=2",
        "train.samples=0",
        "train.tokens_per_step=1024",  # 2 micro-batches of 8 × 64
        f"train.init_from={tmp_path / 'base'}",
        "model.n_layer=5",  # ignored: the architecture comes from the checkpoint
    )
    summary = train(tuned, tmp_path / "tuned")
    assert summary["tokens_seen"] == 4 * 1024
    assert summary["best_val_loss"] < first["best_val_loss"] + 0.05
    _, meta = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "best")
    assert meta["model_config"]["n_layer"] == 2 and meta["lineage"]["parent"].endswith("best")


def test_time_budget_ends_the_run(small_shards, tmp_path):
    cfg = cfg_for(
        small_shards, "train.time_budget_minutes=0.05", "train.samples=0", "train.evals_per_budget=2"
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "time_budget"
    assert 3.0 <= summary["wall_time_s"] < 3.0 + 10
    assert torch.isfinite(torch.tensor(summary["best_val_loss"]))


def test_peak_flops_cache_keeps_the_best_measurement(tmp_path, monkeypatch):
    """A peak first measured on a busy machine must not stay the MFU denominator for good: each
    call measures again and the cache keeps the maximum (and never lowers a better figure)."""
    from fornalha.train import monitor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu = torch.device("cpu")
    key = f"cpu|{monitor.platform.processor() or monitor.platform.machine()}|{torch.get_num_threads()}|torch.float32"
    path = tmp_path / "fornalha" / "peak_flops.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({key: 1.0}))  # a "measurement" taken under heavy load
    first = monitor.peak_flops(cpu, torch.float32)
    assert first > 1e6 and json.loads(path.read_text())[key] == first
    path.write_text(json.dumps({key: 1e18}))  # a better figure than this call can measure
    torch.manual_seed(5)
    assert monitor.peak_flops(cpu, torch.float32) == 1e18
    assert json.loads(path.read_text())[key] == 1e18
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3))  # the measurement leaves the run's random stream alone


def test_training_val_loss_is_fornalha_evals_on_the_same_tokens(small_shards, tmp_path):
    """summary.json's best_val_loss is `fornalha eval`'s loss on the first val_tokens_per_eval tokens
    of the same split (float32): one measurement, two sample sizes (docs/train.md)."""
    from fornalha.evaluate import evaluate_run

    cfg = cfg_for(small_shards, "train.max_steps=10", "train.eval_interval=10", "train.samples=0")
    summary = train(cfg, tmp_path / "run")
    assert summary["val_tokens_per_eval"] == 4 * 8 * 64
    result = evaluate_run(
        tmp_path / "run", data=small_shards, split="val", max_tokens=summary["val_tokens_per_eval"]
    )
    assert result["loss"]["loss"] == pytest.approx(summary["best_val_loss"], rel=1e-9)
    assert result["loss"]["bpb"] == pytest.approx(summary["best_val_bpb"], rel=1e-9)
