"""Fixtures: one run folder and one live server shared by the serving tests."""

from __future__ import annotations

import pytest
from serve_helpers import KEY, Server, make_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def server(run_dir):
    # The default engine, as users run it (float16 KV cache and its compiled kernel; the first build,
    # ~25 s, may happen here); the other live-server tests turn the kernel off to start quicker.
    srv = Server(
        run_dir, "--max-batch", "8", "--max-queue", "64", env={"FORNALHA_NO_KERNELS": "0"}, timeout=300
    )
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=KEY, _strict_response_validation=True, max_retries=0
    )
