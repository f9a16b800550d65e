"""Fixtures: the documents folder, a tiny run folder and one live `fornalha serve --docs` for the module."""

from __future__ import annotations

import pytest
from assistant_helpers import ALPHABET, KEY, Server, make_run, write_docs


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("assistant-docs"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("assistant-run"))


@pytest.fixture(scope="session")
def tokenizer():
    """The run's character tokenizer (the same vocabulary as make_run's), without building the run."""
    from fornalha.tokenizer.char import CharTokenizer

    return CharTokenizer.train([ALPHABET])


@pytest.fixture(scope="module")
def server(run_dir, docs_dir):
    srv = Server(run_dir, "--docs", str(docs_dir), "--docs-top-k", "2")
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=KEY, _strict_response_validation=True, max_retries=0
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model runs fastest on one thread; more only fight over a loaded CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
