"""`fornalha eval`: a real run folder end to end, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from evalhelpers import make_run

from fornalha.cli import main
from fornalha.data.dataset import write_dataset

TEXT = "Era uma vez um gato que sabia ler. The cat sat on the mat. " * 20


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([*args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def run_dir(tmp_path):
    run, _, _ = make_run(tmp_path / "run", TEXT, steps=0)
    return run


def test_eval_writes_json_table_and_report(tmp_path, run_dir, capsys):
    data = write_dataset(tmp_path / "ds", {"train": [TEXT], "val": ["The cat sat.", "Um gato leu."]})
    blimp = tmp_path / "blimp.jsonl"
    blimp.write_text(
        "".join(
            json.dumps({"sentence_good": g, "sentence_bad": b}) + "\n"
            for g, b in [("The cat.", "cat The."), ("Um gato.", "gato Um.")]
        )
    )
    hs = tmp_path / "hs.jsonl"
    hs.write_text(
        json.dumps({"ctx": "The cat", "endings": ["sat.", "mat.", "ler.", "um."], "label": 0}) + "\n"
    )
    code, out, err = run_cli(
        ["eval", "--run", str(run_dir), "--data", str(data), "--blimp", str(blimp), "--hellaswag", str(hs),
         "--json", str(tmp_path / "out.json"), "--report", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    for word in (
        "bits per byte",
        "perplexity",
        "blimp accuracy",
        "hellaswag acc_norm",
        "chance level",
        "50 %",
    ):
        assert word in out
    results = json.loads((run_dir / "eval.json").read_text())
    assert results == json.loads((tmp_path / "out.json").read_text())
    assert results["format"] == "fornalha-eval" and results["step"] == 0
    assert results["loss"]["tokens"] == len("The cat sat.") + len("Um gato leu.") + 1
    assert (
        results["multiple_choice"]["blimp"]["n"] == 2 and results["multiple_choice"]["blimp"]["chance"] == 0.5
    )
    assert len(results["samples"]) == 3
    assert '<section id="evaluation">' in (run_dir / "report.html").read_text()


def test_cli_errors_are_one_line_with_exit_2(tmp_path, run_dir, capsys):
    code, _, err = run_cli(["eval", "--run", str(tmp_path / "nope"), "--blimp", "x.jsonl"], capsys)
    assert code == 2 and "run folder not found" in err and "Traceback" not in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n{oops\n")
    code, _, err = run_cli(["eval", "--run", str(run_dir), "--blimp", str(bad), "--device", "cpu"], capsys)
    assert code == 2 and "line 2" in err and "not valid JSON" in err

    code, _, err = run_cli(["eval", "--run", str(run_dir)], capsys)
    assert code == 2 and "nothing to evaluate" in err

    code, _, err = run_cli(["eval", "--run", str(run_dir), "--blimp", str(bad), "--limit", "0"], capsys)
    assert code == 2 and "--limit must be positive" in err

    code, _, err = run_cli(
        ["eval", "--run", str(run_dir), "--blimp", str(bad), "--checkpoint", "newest"], capsys
    )
    assert code == 2 and "best or last" in err

    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    code, _, err = run_cli(["eval", "--run", str(not_a_run), "--blimp", str(bad), "--device", "cpu"], capsys)
    assert code == 2 and "not a run folder" in err


def test_help_shows_an_example(capsys):
    code, out, _ = run_cli(["eval", "--help"], capsys)
    assert code == 0 and "Example" in out and "--hellaswag" in out
