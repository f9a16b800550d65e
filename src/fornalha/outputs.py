"""Output-folder ownership: a command never deletes or overwrites what it did not create.

Every command that writes a folder (``data prepare``, ``data tokenize``, ``tokenizer train``,
``export hf``, ``pipeline``, ``sweep``) goes through this module. The rules, in order:

1. ``claim(out, command)``: a folder that does not exist or is empty becomes the command's own;
   so does one holding an ownership manifest (``.fornalha-output.json``) written by the same
   command. Anything else (a plain file, a non-empty folder of the user's, another command's
   output) is refused with an `OutputError` (exit 2, one line) before anything is written.
2. The manifest lists every file the command created (paths relative to the folder). Only
   those files are ever replaced or removed; a file the user put next to them is left alone.
3. New content is written into a staging folder ``OUT/.fornalha-tmp-<pid>/`` and then moved into
   place file by file (``publish``); the manifest is updated *before* the move so a crash in the
   middle still leaves every written file owned. Completion markers (``manifest.json``,
   ``index.json``) move last, so a half-published folder is never mistaken for a finished one.
4. Staging folders of a killed process (its pid no longer alive), and the older ``.incomplete/``
   folder of ``data prepare``, are removed by the next ``claim`` of that folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from fornalha.errors import FornalhaError

MANIFEST = ".fornalha-output.json"
STAGING_PREFIX = ".fornalha-tmp-"
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)$")
LEGACY_TEMP = (".incomplete",)  # staging folders of older versions; cleaned in owned folders only


class OutputError(FornalhaError):
    """An output location the command may not write to (someone else's files, not writable)."""


class Output:
    """A folder claimed by one command; see the module docstring for the rules."""

    def __init__(self, path: Path, command: str, owned: set[str]):
        self.path = path
        self.command = command
        self.owned = owned

    # -- ownership record ----------------------------------------------------------------------
    def _save(self) -> None:
        record = {
            "format": "fornalha-output",
            "version": 1,
            "command": self.command,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": sorted(self.owned),
        }
        tmp = self.path / (MANIFEST + ".tmp")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            tmp.replace(self.path / MANIFEST)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.path}: {exc.strerror or exc}") from None

    def record(self, names: Iterable[str]) -> None:
        """Add files the command wrote directly (not through `publish`) to what it owns."""
        self.owned |= {_rel(n) for n in names}
        self._save()

    def record_tree(self, top: str) -> None:
        """Own every file now under ``OUT/top`` (a folder a library function filled in place)."""
        root = self.path / top
        if root.is_file():
            self.record([top])
        elif root.is_dir():
            self.record(p.relative_to(self.path).as_posix() for p in root.rglob("*") if p.is_file())

    # -- writing -------------------------------------------------------------------------------
    def staging(self) -> Path:
        """A fresh, empty staging folder inside OUT for this process."""
        tmp = self.path / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._save()  # creates OUT and records the claim before anything is written
            tmp.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write to {self.path}: {exc.strerror or exc}") from None
        return tmp

    def publish(self, staged: Path, last: Iterable[str] = ()) -> list[str]:
        """Move every file of ``staged`` into OUT: the new output replaces the old one.

        Owned files that the new output does not rewrite are removed (old shards of an earlier,
        larger run); files the command does not own are never touched, and one standing where a new
        file must go stops the publish before anything moves. ``last``: names moved after all others
        (completion markers). Returns the published files.
        """
        new = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        foreign = [f for f in new if _exists(self.path / f) and f not in self.owned]
        foreign += [f for f in new if (self.path / f).is_dir()]
        for f in new:  # a plain file where one of our folders must go
            parts = f.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if (self.path / parent).is_file() or (self.path / parent).is_symlink():
                    foreign.append(parent)
        if foreign:
            shutil.rmtree(staged, ignore_errors=True)
            raise OutputError(
                f"{self.path / sorted(set(foreign))[0]} is in the way and was not written by "
                f"`fornalha {self.command}`; move it away or choose another --out"
            )
        stale = sorted(self.owned - set(new))
        self.owned |= set(new)
        self._save()  # before moving anything: a crash leaves every file accounted for
        markers = [f for f in new if f in set(last)]
        for f in markers:
            (self.path / f).unlink(missing_ok=True)
        for f in stale:
            _remove_file(self.path, f)
            self.owned.discard(f)
        for f in [f for f in new if f not in markers] + markers:
            target = self.path / f
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / f, target)
        shutil.rmtree(staged, ignore_errors=True)
        self._save()
        return new

    def remove_owned(self, tops: Iterable[str]) -> None:
        """Delete the owned files under these top-level names (``--overwrite``); keep all others."""
        tops = set(tops)
        for f in sorted(self.owned):
            if f.split("/")[0] in tops:
                _remove_file(self.path, f)
                self.owned.discard(f)
        self._save()


def claim(out: str | os.PathLike[str], command: str) -> Output:
    """Make ``out`` the output folder of ``command`` or refuse (see the module docstring)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} exists and is not a folder; choose another --out")
    if not path.exists():  # created on the first write, so a command that fails early leaves nothing
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create --out {path}: {parent} is not a writable folder")
        return Output(path, command, set())
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to --out {path}: permission denied")
    record = _read_record(path)
    if record is not None:
        if record.get("command") != command:
            raise OutputError(
                f"--out {path} holds the output of `fornalha {record.get('command')}`, not of "
                f"`fornalha {command}`; choose another --out"
            )
        output = Output(path, command, {_rel(f) for f in record.get("files", []) if isinstance(f, str)})
        _clean_stale(path, legacy=True)
        return output
    _clean_stale(path, legacy=False)
    # `data prepare --engine datatrove` may find its own work folder there (stage 1 run on a cluster first)
    own_work = {".datatrove"} if command == "data prepare" else set()
    others = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in own_work)
    if others:
        raise OutputError(
            f"--out {path} is not empty ({others[0]}{' …' if len(others) > 1 else ''}) and was not "
            f"written by `fornalha {command}`; refusing to overwrite or delete anything in it (choose a new or empty --out)"
        )
    return Output(path, command, set())


def owner(out: str | os.PathLike[str]) -> str | None:
    """The command that owns folder ``out``, or None."""
    record = _read_record(Path(out))
    return None if record is None else record.get("command")


def check_file_target(path: str | os.PathLike[str], is_ours: bool) -> None:
    """Refuse to replace an existing file that a fornalha command did not write."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    if path.exists() and not is_ours:
        raise OutputError(f"{path} exists and was not written by fornalha; refusing to overwrite it")


# -- helpers --------------------------------------------------------------------------------------
def _rel(name: str) -> str:
    rel = Path(name).as_posix()
    if rel.startswith("/") or ".." in rel.split("/"):
        raise OutputError(f"unsafe file name in an ownership manifest: {name!r}")
    return rel


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def _read_record(path: Path) -> dict | None:
    f = path / MANIFEST
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{f} is unreadable ({exc}); move it away or choose another --out") from None
    if not isinstance(record, dict) or record.get("format") != "fornalha-output":
        raise OutputError(f"{f} is not a fornalha ownership manifest; choose another --out")
    return record


def _remove_file(root: Path, rel: str) -> None:
    """Remove one owned file, then the folders above it that became empty (up to ``root``)."""
    p = root / rel
    if p.is_file() or p.is_symlink():
        p.unlink()
    parent = p.parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(path: Path, legacy: bool) -> None:
    for p in path.iterdir():
        m = _STAGING.match(p.name)
        if p.is_dir() and ((m and not _pid_alive(int(m.group(1)))) or (legacy and p.name in LEGACY_TEMP)):
            shutil.rmtree(p, ignore_errors=True)
