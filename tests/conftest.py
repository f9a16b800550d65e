"""Shared test setup: the shared data folder, and one torch thread per pytest-xdist worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Under xdist each worker gets one core; more threads would only fight over it. The environment
    # variable reaches the subprocesses the tests start (CLI runs, servers): on 2 cores with two
    # workers, a 2-thread torch process waits on OpenMP barriers whose other thread is descheduled —
    # a training step measured 4x slower than with one thread.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared data folder not found at {SHARED_DATA}: the tests need ../shared/data beside the repo"
        )
    return SHARED_DATA
