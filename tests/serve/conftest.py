"""Fixtures: one run folder and one live server shared by the serving tests."""

from __future__ import annotations

import pytest
from serve_helpers import KEY, Server, make_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def server(run_dir):
    srv = Server(run_dir, "--max-batch", "8", "--max-queue", "64")
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=KEY, _strict_response_validation=True, max_retries=0
    )
