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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; more only fight over a loaded CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
