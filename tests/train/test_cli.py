"""`fornalha train` / `fornalha sweep` from the command line: errors are one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from fornalha.cli import main

SMALL = [
    "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32", "--set", "model.block_size=32",
    "--set", "train.batch_size=4", "--set", "train.dtype=float32", "--set", "train.samples=0",
    "--set", "train.eval_batches=2", "--set", "train.progress=false", "--device", "cpu",
]  # fmt: skip


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def ok(args: list[str]) -> None:
    """Run the CLI and expect success (typer exits with code 0 in standalone mode)."""
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), f"exit code {exc.code}"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
        (["--set", "train.lr=-1"], "train.lr"),
        (["--preset", "giant"], "unknown preset 'giant'"),
        (["--data", "/definitely/not/here"], "does not exist"),
    ],
)
def test_train_errors_are_one_line_exit_2(args, fragment, capsys, tmp_path):
    code, _, err = run_cli(["train", "--out", str(tmp_path / "run"), *args], capsys)
    assert code == 2
    assert fragment in err and "Traceback" not in err


def test_print_config_resolves_overrides(capsys, tmp_path):
    ok(["train", "--out", str(tmp_path / "r"), "--preset", "tiny", "--set", "depth=3", "--print-config"])
    text = capsys.readouterr().out
    assert "n_embd: 192" in text and "n_layer: 3" in text
    ok(["train", "--preset", "tiny", "--set", "depth=3", "--print-config"])  # no --out: nothing is written
    assert "n_layer: 3" in capsys.readouterr().out
    code, _, err = run_cli(["train", "--preset", "tiny"], capsys)
    assert code == 2 and "--out is required" in err and "Traceback" not in err


def test_train_from_a_dataset_folder_trains_and_caches_a_bpe_tokenizer(tmp_path, shakespeare_text, capsys):
    from train_fixtures import make_dataset

    dataset = make_dataset(shakespeare_text[:40_000], tmp_path / "ds", docs=20)
    args = ["train", "--data", str(dataset), "--vocab-size", "300", *SMALL, "--set", "train.max_steps=4",
            "--set", "train.eval_interval=4"]  # fmt: skip
    ok([*args, "--out", str(tmp_path / "a")])
    ok([*args, "--out", str(tmp_path / "b")])
    cache = dataset / ".fornalha-cache"
    assert len(list(cache.glob("tokenizer-bpe-300-*"))) == 1 and len(list(cache.glob("tokens-*"))) == 1
    tok = json.loads((tmp_path / "a" / "tokenizer" / "fornalha_tokenizer.json").read_text())
    assert tok["kind"] == "bpe" and tok["vocab_size"] == 300
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "completed"


def test_resume_uses_the_runs_config(small_shards, tmp_path, capsys):
    out = tmp_path / "run"
    ok(["train", "--data", str(small_shards), "--out", str(out), *SMALL, "--set", "train.max_steps=4",
          "--set", "train.eval_interval=2"])  # fmt: skip
    (out / "checkpoints" / "step-000004").rename(out / "checkpoints" / "step-000004-gone")  # as if killed
    before = (out / "metrics.jsonl").read_text().splitlines()
    capsys.readouterr()
    ok(["train", "--out", str(out), "--resume"])
    err = " ".join(capsys.readouterr().err.split())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["status"] == "completed"
    # it really continued from its saved step: the lines up to step 2 are the first run's, untouched,
    # and step 4 was trained and evaluated once more (a restart from scratch would have rewritten them all)
    assert "step-000002 (step 2, 256 tokens)" in err
    after = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in after]
    kept = [x for x, r in zip(before, [json.loads(x) for x in before], strict=True) if r["step"] <= 2]
    assert kept and after[: len(kept)] == kept and [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]


def test_depth_override_that_cannot_apply_is_an_error(tmp_path, capsys):
    my = tmp_path / "my.yaml"
    my.write_text("model:\n  n_layer: 4\n  n_embd: 256\n  n_head: 4\n")
    code, _, err = run_cli(["train", "--out", str(tmp_path / "r"), "--config", str(my), "--set", "depth=6",
                            "--print-config"], capsys)  # fmt: skip
    assert code == 2 and "--set depth=6 cannot apply" in " ".join(err.split()) and "model.n_layer=4" in err
    ok(["train", "--out", str(tmp_path / "r"), "--preset", "tiny", "--set", "depth=6", "--print-config"])
    assert "n_layer: 6" in capsys.readouterr().out


def test_init_from_flag_fine_tunes_a_run(small_shards, tmp_path, capsys):
    base = tmp_path / "base"
    ok(["train", "--data", str(small_shards), "--out", str(base), *SMALL, "--set", "train.max_steps=2",
        "--set", "train.eval_interval=2"])  # fmt: skip
    ok(["train", "--data", str(small_shards), "--out", str(tmp_path / "tuned"), *SMALL, "--init-from", str(base),
        "--set", "train.max_steps=2", "--set", "train.eval_interval=2"])  # fmt: skip
    meta = json.loads((tmp_path / "tuned" / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["lineage"]["parent"] == str(base / "checkpoints" / "best")
    assert meta["run_config"]["train"]["init_from"] == str(base)


def test_max_steps_is_an_upper_bound_under_a_time_budget(small_shards, tmp_path, capsys):
    out = tmp_path / "run"
    ok(["train", "--data", str(small_shards), "--out", str(out), *SMALL, "--time-budget", "5",
        "--set", "train.max_steps=7"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 7 and summary["status"] == "completed" and summary["wall_time_s"] < 120


def test_sweep_grid_writes_table_csv_and_plot(small_shards, tmp_path, capsys):
    out = tmp_path / "sweep"
    ok(["sweep", "--data", str(small_shards), "--out", str(out), *SMALL, "--set", "train.max_steps=6",
          "--set", "train.eval_interval=3", "--param", "model.n_layer=1,2", "--param", "train.lr=1e-3,3e-3",
          "--random", "3"])  # fmt: skip
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 3 and all(r["best_val_bpb"] > 0 for r in rows)
    assert {(r["model.n_layer"], r["train.lr"]) for r in rows} <= {(1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)}
    assert (out / "sweep.csv").read_text().count("\n") == 4 and (out / "sweep.png").is_file()
    assert "val bpb" in capsys.readouterr().err
    code, _, err = run_cli(["sweep", "--out", str(out), "--param", "train.bogus=1,2"], capsys)
    assert code == 2 and "unknown config key" in err
