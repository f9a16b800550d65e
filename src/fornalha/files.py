"""Two things every stage does with files: hash them, and publish them so a reader never sees half of one.

Hashing: `file_sha256` (hashlib.file_digest reads in large blocks, outside Python's loop) and
`tree_sha256` (names and bytes of several files, in sorted order: the cache key of a folder).

Publishing is write-then-rename. A writer fills a temporary sibling (same folder, so same file
system) and one `os.replace`/`os.rename` makes it visible: before it the old version is whole, after
it the new one is. `write_text_atomic` does it for one file; `publish_dir` for a folder, moving an
existing folder of that name aside first (a folder rename cannot replace a non-empty folder) and
removing it only once the new one is in place; `replacing` for a file another library writes (a plot,
a GGUF file): it hands out the temporary name and renames it into place when the block succeeds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path, "sha256")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", **params: int) -> str:
    """Hex digest of a file's bytes with a hashlib algorithm (``params``: e.g. ``digest_size=16`` for blake2b)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.new(algorithm, **params)).hexdigest()


def tree_sha256(paths: Iterable[Path], root: Path) -> str:
    """sha256 over several files: each one's path relative to ``root`` and its bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``with replacing(path) as tmp: write tmp`` — on success ``tmp`` is renamed over ``path``; on an
    error (or Ctrl-C) it is removed and ``path`` is untouched. ``tmp`` keeps ``path``'s suffix, so
    writers that choose a format by extension (matplotlib) still do."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary sibling, then rename it over ``path`` (readers see old or new, whole)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def publish_dir(
    tmp: str | os.PathLike[str], final: str | os.PathLike[str], between: Callable[[], None] | None = None
) -> Path:
    """Move the finished folder ``tmp`` to ``final``; an existing ``final`` is replaced.

    The old folder is renamed aside (as ``.NAME.old-PID``), the new one renamed into place, then the
    old one removed: at every moment either the old or the new folder is under ``final``'s name (but
    for the instant between the two renames, when a reader finds the old one aside; checkpoints use
    that). ``between`` runs in that instant (the fault-injection tests kill the process there).
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
        if between is not None:
            between()
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final
