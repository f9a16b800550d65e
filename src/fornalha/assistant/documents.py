"""The user's documents as passages: read a folder, cut each document into short pieces.

    passages, skipped = read_passages("notes/")     # -> list[Passage], list[Skipped]

Reading uses exactly the readers of `fornalha data prepare` (`fornalha.data.sources`): a folder is
walked recursively (hidden files skipped), ``.txt``/``.md``/``.rst`` files are one document each,
``.html`` pages are turned into text, every line of a ``.jsonl`` (its ``text`` field), every row of a
``.csv``/``.parquet`` (its ``text`` column) is one document, and compressed files are read through.
What cannot be read (a binary file, invalid UTF-8, a corrupt ``.gz``) is returned as a `Skipped`
record with its reason, so the caller can say what it left out.

A document is then cut into *passages* of at most ``max_words`` words, the unit retrieval ranks
and the prompt quotes:

    1. split the text into paragraphs at blank lines (hard-wrapped lines are joined back);
    2. a paragraph longer than ``max_words`` is split at sentence ends, and a sentence longer than
       that at word boundaries;
    3. consecutive pieces are packed together while the passage stays within ``max_words``.

Short passages keep the prompt small enough for a small model's context window, and keep what is
quoted on topic; a passage never spans two documents.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fornalha.data.clean import DecodeError, decode, html_to_text
from fornalha.data.sources import RawDoc, Skipped, iter_source, parse_source
from fornalha.errors import DataError

MAX_WORDS = 80

_BLANK_LINE = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Passage:
    """A piece of one document: ``id`` is ``PATH#N`` (the N-th passage of the document at PATH)."""

    id: str
    path: str
    title: str
    text: str


def read_passages(folder: str | Path, max_words: int = MAX_WORDS) -> tuple[list[Passage], list[Skipped]]:
    """Every passage of every readable document under ``folder``, and what could not be read.

    Raises `DataError` (one line, exit 2 in the CLI) when the folder is missing, is not a folder,
    cannot be listed, or holds no readable text at all.
    """
    if max_words < 1:
        raise DataError(f"passages need at least one word, got max_words={max_words}")
    root = Path(folder)
    if not root.exists():
        raise DataError(f"documents folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; --docs takes a folder of documents")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"cannot read the documents folder {root} (permission denied)")
    spec = parse_source(str(root))
    passages: list[Passage] = []
    skipped: list[Skipped] = []
    for doc_id, text in _documents(spec, skipped):
        path = doc_id.split("#", 1)[0]
        title = _title(text, path)
        for n, piece in enumerate(split_passages(text, max_words)):
            passages.append(Passage(id=f"{doc_id}#{n}", path=path, title=title, text=piece))
    if not passages:
        if skipped:
            reasons = sorted({s.reason for s in skipped})
            raise DataError(
                f"no readable text in {root}: {len(skipped)} file(s) or record(s) skipped ({'; '.join(reasons)})"
            )
        raise DataError(f"the documents folder {root} is empty (no text files found)")
    return passages, skipped


def _documents(spec, skipped: list[Skipped]) -> Iterator[tuple[str, str]]:
    """(document id, text) of each readable document; what is unreadable goes to ``skipped``."""
    for item in iter_source(spec):
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        assert isinstance(item, RawDoc)
        try:
            text = decode(item.data)
        except DecodeError as exc:
            skipped.append(Skipped(item.source, item.doc_id, str(exc)))
            continue
        if item.html:
            text = html_to_text(text)
        if text.strip():
            yield item.doc_id, text


def _title(text: str, path: str) -> str:
    """A document's first Markdown heading among its first lines, else its file name."""
    for line in text.lstrip().splitlines()[:5]:
        m = _HEADING.match(line)
        if m:
            return m.group(1)
    return os.path.basename(path) or path


def split_passages(text: str, max_words: int = MAX_WORDS) -> list[str]:
    """Cut ``text`` into passages of at most ``max_words`` words (see the module docstring)."""
    pieces: list[list[str]] = []  # each piece: its words, at most max_words of them
    for paragraph in _BLANK_LINE.split(text.replace("\r\n", "\n")):
        words = paragraph.split()
        if not words:
            continue
        if len(words) <= max_words:
            pieces.append(words)
            continue
        for sentence in _SENTENCE_END.split(" ".join(words)):
            sw = sentence.split()
            for i in range(0, len(sw), max_words):
                pieces.append(sw[i : i + max_words])
    passages: list[list[str]] = []
    for words in pieces:
        if passages and len(passages[-1]) + len(words) <= max_words:
            passages[-1].extend(words)
        else:
            passages.append(list(words))
    return [" ".join(p) for p in passages]
