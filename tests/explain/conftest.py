"""Fixtures for the explain tests: a tiny run folder (char tokenizer, random weights) and Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from explain_helpers import make_run

CHROMIUM = os.environ.get("FORNALHA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artifacts" / "explain"


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    return make_run(tmp_path)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def artifacts_dir() -> Path:
    """Screenshots are kept here after the run (tmp/artifacts/explain under the repo root)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
