"""Fixtures: a run whose tokenizer can spell JSON, and one live `fornalha serve` for the API tests."""

from __future__ import annotations

import pytest
from structured_helpers import KEY, make_run

from live_server import Server


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("structured"))


@pytest.fixture(scope="session")
def server(run_dir):
    srv = Server(run_dir, "--max-batch", "4", "--max-queue", "32", key=KEY)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=KEY, _strict_response_validation=True, max_retries=0
    )
