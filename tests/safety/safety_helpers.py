"""Helpers shared by the safety tests: the real CLI in a subprocess, and filter-passing prose."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fornalha(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m fornalha.cli`) with this worktree's source first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True, env=env,
        input=stdin, timeout=180,
    )  # fmt: skip


def make_prose_text(seed: int, n_words: int = 300) -> str:
    """The data tests' prose generator (text that passes the quality filters)."""
    spec = importlib.util.spec_from_file_location("data_conftest", ROOT / "tests" / "data" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prose(seed, n_words)
