"""`fornalha improve` refusals: one line, exit 2, nothing written, nothing promoted (no server needed)."""

from __future__ import annotations

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
    code, _, err = cli("improve", "--registry", registry, "--db", db, "--out", work, "--val-data", tmp_path / "nope")
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
    code, _, err = cli("improve", "--registry", tmp_path / "base", "--db", db, "--out", work, "--val-data", tmp_path)
    _one_line_error(code, err, "not a model registry")
    # someone else's work folder is refused untouched
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = cli("improve", "--registry", registry, "--db", db, "--out", tmp_path / "mine", "--val-data", tmp_path)
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
