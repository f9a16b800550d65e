"""Fixtures for the data-stage tests: the shared corpora and generated inputs."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data"
)  # also tests/conftest.py's shared_data


def prose(seed: int, n_words: int = 300) -> str:
    """Natural-looking English filler that passes the prose filters (varied, no repetition)."""
    import random

    rng = random.Random(seed)
    vocab = (  # noqa: SIM905 - a sentence reads better than a list
        "the river carried small boats past quiet towns where farmers traded grain wool and "
        "stories about distant mountains while children watched herons settle along muddy banks "
        "every evening before merchants counted coins beside lanterns and sailors repaired nets "
        "under patient skies that promised rain"
    ).split()
    sentences = []
    words = 0
    while words < n_words:
        k = rng.randint(6, 14)
        sentence = " ".join(rng.choice(vocab) for _ in range(k))
        sentences.append(sentence.capitalize() + ".")
        words += k
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs) + "\n"


@pytest.fixture(scope="session")
def make_prose():
    """The `prose` text generator, as a fixture."""
    return prose


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass
