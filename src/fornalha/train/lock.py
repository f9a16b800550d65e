"""Keeping a run folder safe: one writer at a time, no foreign folder, a clean stop on Ctrl-C.

* `RunLock`: RUN/.fornalha-lock is held (an exclusive `flock`) for the training process's life
  and names its holder (pid, host, start time). A second `fornalha train` on the same folder
  stops with one line naming the holder. The kernel drops the lock when its process dies (even
  by SIGKILL), so a stale lock file left by a dead process is simply taken over.
* `check_out_folder`: `--out` must be new, empty, or a fornalha run folder; anything else (a
  folder of notes, a dataset) is refused rather than written into.
* `StopSignals`: the first SIGINT/SIGTERM asks the loop to stop after the current step (it then
  saves a checkpoint and says how to resume); a second one aborts at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from fornalha.errors import ConfigError

LOCK_FILE = ".fornalha-lock"
# what a run folder holds (DESIGN.md §5): a folder with only these is fornalha's own
RUN_ENTRIES = {
    "config.yaml", "tokenizer", "checkpoints", "metrics.jsonl", "summary.json", "plots", "samples.jsonl",
    "cache", "tensorboard", "wandb", LOCK_FILE,
}  # fmt: skip


def check_out_folder(out: Path) -> None:
    """Refuse an `--out` that exists, is not empty and is not a fornalha run folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a new folder for the run")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    header = out / "config.yaml"
    is_run = header.is_file() and header.read_text(errors="replace").startswith("# fornalha run config")
    if not is_run and not names <= RUN_ENTRIES:
        shown = ", ".join(sorted(names - RUN_ENTRIES)[:3])
        raise ConfigError(
            f"--out {out} is not empty and not a fornalha run folder (it holds {shown}); "
            "nothing is written there: choose a new or empty folder"
        )


class RunLock:
    """An exclusive lock on a run folder for as long as this process trains into it."""

    def __init__(self, run_dir: Path, say=print) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.say = say

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ConfigError(
                    f"{self.path.parent} is being written by another fornalha process ({holder}); "
                    "wait for it to finish or stop it, or choose another --out"
                ) from None
            # the file may have been unlinked by the previous holder between our open and flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous != "unknown holder":
            self.say(
                f"[yellow]note:[/] took over a stale lock on {self.path.parent} ({previous}, no longer running)"
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (ValueError, KeyError, OSError):
        return "unknown holder"


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a request (`.requested`), the second into KeyboardInterrupt.

    Only the main thread can install signal handlers; elsewhere (a library call from a worker
    thread) this does nothing and Ctrl-C keeps Python's default behaviour.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # the second one: abort at once
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
