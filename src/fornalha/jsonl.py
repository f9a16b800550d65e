"""JSON Lines files (one JSON object per line): inputs (prompts, evaluation examples) and logs.

`read_objects` reads an input a user wrote, so every command that takes a .jsonl file reports a bad
line the same way: `FILE, line N: not valid JSON (…)` — never a traceback. `read_log` reads a log a
program appends to (a run's metrics.jsonl), where a torn last line from a killed run is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fornalha.errors import DataError


def read_objects(
    path: str | Path, what: str = "file", items: str = "objects"
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of `path`.

    `what` names the file and `items` its lines in the messages ("evaluation file", "examples"). A missing file, a
    line that is not JSON or not a JSON object, or a file without any object is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        _read_lines(path, rows)
    except UnicodeDecodeError as exc:  # the file is read in chunks: no line number to give
        raise DataError(
            f"{path}: not UTF-8 text (undecodable byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from None
    if not rows:
        raise DataError(f"{path} holds no {items}")
    return rows


def _read_lines(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> None:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of an append-only log (e.g. RUN_DIR/metrics.jsonl); [] when there is none yet.

    A line that is not a JSON object (the torn last line of a killed run) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records
