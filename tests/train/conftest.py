"""Fixtures for the training tests: TinyShakespeare as a prepared dataset and as char-level shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import make_char_shards

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.fail(f"{path} not found: the tests need ../shared/data beside the repo")
    return path.read_text()


@pytest.fixture(scope="session")
def shakespeare_shards(tmp_path_factory, shakespeare_text) -> Path:
    """Char-level shards of all of TinyShakespeare (about 1M train / 111k val tokens)."""
    return make_char_shards(shakespeare_text, tmp_path_factory.mktemp("shakespeare"))


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, shakespeare_text) -> Path:
    """Char-level shards of the first 60 kB: small enough to overfit quickly."""
    return make_char_shards(shakespeare_text[:60_000], tmp_path_factory.mktemp("small"))
