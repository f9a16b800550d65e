"""Fixtures for the inference tests."""

from __future__ import annotations

import pytest
from infer_helpers import ByteTokenizer, random_model

from fornalha.model import GPT


@pytest.fixture
def tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def model() -> GPT:
    return random_model()
