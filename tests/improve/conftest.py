"""Fixtures for the registry and hot-swap tests (helpers in improve_helpers.py)."""

from __future__ import annotations

import pytest
from improve_helpers import make_run


@pytest.fixture
def runs(tmp_path):
    """Three runs: a champion-to-be, a better fine-tune of it, a worse one."""
    base = make_run(
        tmp_path, "base", 1, metrics={"val_loss": 2.0, "val_bpb": 2.50, "preference_accuracy": 0.50}
    )
    parent = base / "checkpoints" / "best"
    good = make_run(tmp_path, "good", 2, parent=parent,
                    metrics={"val_loss": 2.01, "val_bpb": 2.51, "preference_accuracy": 0.70})  # fmt: skip
    bad = make_run(tmp_path, "bad", 3, parent=parent,
                   metrics={"val_loss": 2.4, "val_bpb": 2.90, "preference_accuracy": 0.80})  # fmt: skip
    return {"base": base, "good": good, "bad": bad}


@pytest.fixture
def cli(capsys):
    """`fornalha ARGS` in this process (the same `main` as the console script: exit codes, one-line
    errors), for speed; returns (exit code, stdout, stderr)."""
    from fornalha.cli import main

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return call
