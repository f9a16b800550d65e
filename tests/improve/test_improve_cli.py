"""`fornalha improve` refusals: one line, exit 2, nothing written, nothing promoted (no server needed)."""

from __future__ import annotations

import json

import pytest
from improve_helpers import make_run

from fornalha.improve.loop import noise_margin
from fornalha.improve.registry import Registry


@pytest.fixture
def registry(tmp_path):
    reg = Registry.open(tmp_path / "reg", create=True)
    reg.register(make_run(tmp_path, "base", 1))
    reg.close()
    return tmp_path / "reg"


def _one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err, err


def test_bad_input_is_refused_before_anything_is_written(tmp_path, cli, registry):
    db = f"sqlite:///{registry / 'fornalha.db'}"
    work = tmp_path / "work"
    code, _, err = cli("improve", "--registry", registry, "--db", db, "--out", work, "--method", "ppo")
    _one_line_error(code, err, "--method")
    # the champion names no dataset on this machine: the bpb check could not run
    code, _, err = cli("improve", "--registry", registry, "--db", db, "--out", work)
    _one_line_error(code, err, "--val-data")
    code, _, err = cli(
        "improve", "--registry", registry, "--db", db, "--out", work, "--val-data", tmp_path / "nope"
    )
    _one_line_error(code, err, "nope")
    # a mistyped store is an error, never a new empty database
    code, _, err = cli("improve", "--registry", registry, "--db", f"sqlite:///{tmp_path}/typo.db", "--out", work,
                       "--val-data", tmp_path)  # fmt: skip
    _one_line_error(code, err, "no such database")
    assert not (tmp_path / "typo.db").exists()
    # a store without ratings: too little feedback
    code, _, err = cli("improve", "--registry", registry, "--db", db, "--out", work, "--val-data", tmp_path)
    _one_line_error(code, err, "too little feedback", "0 training")
    # not a registry
    code, _, err = cli(
        "improve", "--registry", tmp_path / "base", "--db", db, "--out", work, "--val-data", tmp_path
    )
    _one_line_error(code, err, "not a model registry")
    # someone else's work folder is refused untouched
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = cli(
        "improve", "--registry", registry, "--db", db, "--out", tmp_path / "mine", "--val-data", tmp_path
    )
    _one_line_error(code, err, "not empty")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    assert not work.exists()
    reg = Registry(registry)
    assert [v["id"] for v in reg.versions()] == ["v1"] and reg.alias("champion") == "v1"
    assert [d["action"] for d in reg.data()["decisions"]] == ["initial"]
    reg.close()


def test_noise_margin_is_two_standard_errors_of_a_coin():
    assert noise_margin(4) == pytest.approx(2 * (0.25 / 4) ** 0.5) == pytest.approx(0.5)
    assert noise_margin(100) == pytest.approx(0.1)


def test_method_both_runs_sft_then_dpo_from_it_and_records_the_decision(tmp_path, cli, registry):
    """--method both: SFT on the liked answers, DPO on top of the SFT run, the challenger's parent is
    the champion, and the gate's decision (either way) is recorded with its numbers."""
    from test_improve import val_dataset

    from fornalha.serve.store import Store

    db = f"sqlite:///{registry / 'fornalha.db'}"
    store = Store(db)
    for i in range(40):
        chat = {"model": "tiny", "messages": [{"role": "user", "content": f"question {i}: say a vowel"}]}
        for k, answer in enumerate(["aeiou aeiou", "xyz qrst"]):
            store.record_completion({"id": f"c{i}-{k}", "model": "tiny", "request": chat, "output": [answer]})
    store.close()
    store = Store(db)
    for i in range(40):
        store.record_feedback(f"c{i}-0", 1)
        store.record_feedback(f"c{i}-1", -1)
    store.close()
    work = tmp_path / "work"
    code, out, err = cli("improve", "--registry", registry, "--db", db, "--out", work, "--method", "both",
                         "--val-data", val_dataset(tmp_path / "val"), "--since", "all", "--set", "train.max_steps=4",
                         "--set", "train.batch_size=4", "--set", "train.eval_interval=2")  # fmt: skip
    assert code in (0, 3), err
    assert (work / "sft" / "sft_report.json").is_file()
    dpo_settings = json.loads((work / "dpo" / "dpo_settings.json").read_text())
    assert dpo_settings["start_run"] == str(work / "sft")  # DPO started from the SFT result
    summary = json.loads((work / "improve.json").read_text())
    assert set(summary["finetune"]) == {"sft", "dpo"}
    assert (
        summary["feedback"]["counts"]["train"]["sft"] + summary["feedback"]["counts"]["held_out"]["sft"] == 40
    )
    reg = Registry(registry)
    v2, decision = reg.version("v2"), reg.data()["decisions"][-1]
    assert v2["parent"] == "v1" and decision["challenger"] == "v2" and decision["promoted"] == (code == 0)
    assert {c["name"] for c in decision["numbers"]["checks"]} == {"validation bpb", "preference_accuracy"}
    assert reg.alias("champion") == ("v2" if code == 0 else "v1")
    reg.close()
