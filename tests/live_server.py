"""`fornalha serve` in a subprocess on a free loopback port, as users meet it: the one copy the
serving, assistant, structured-output and improvement tests share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The process ids of a process's children (Linux /proc)."""
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


class Server:
    """`fornalha serve --run RUN *args` with the API key `key`; waits for /ready. One thread and no
    compiled kernel, so several servers and xdist workers share two cores predictably."""

    def __init__(
        self,
        run: Path | None,
        *args: str,
        key: str,
        env: dict[str, str] | None = None,
        model_name: str = "tiny",
        timeout: float = 90,
        new_session: bool = False,
    ) -> None:
        """run: `--run RUN` (None: the source is in args, e.g. `--registry REG`). new_session: the
        server leads a process group of its own, as in a terminal (`os.killpg` reaches all of it)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "FORNALHA_API_KEYS": key, "OMP_NUM_THREADS": "1", "FORNALHA_NO_KERNELS": "1",
                    **(env or {})}  # fmt: skip
        source = ["--run", str(run)] if run is not None else []
        cmd = [sys.executable, "-m", "fornalha.cli", "serve", *source, "--port", str(self.port),
               "--model-name", model_name, "--device", "cpu", *args]  # fmt: skip
        # The server's output goes to a file: a pipe nobody reads would block a chatty server.
        self.log_path = Path(tempfile.mkstemp(prefix="fornalha-serve-", suffix=".log")[1])
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=new_session)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready: {self.stderr()[-2000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a clean drain), then SIGKILL after `timeout` seconds; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stderr(self) -> str:
        """What the server has printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Resident memory of the server and every process under it (its fork server and engine
        process: the KV cache lives there), in KiB."""

        def rss(pid: int) -> int:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            own = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            return own + sum(rss_or_0(k) for k in children(pid))

        def rss_or_0(pid: int) -> int:  # a child may exit while it is read
            try:
                return rss(pid)
            except (OSError, StopIteration):
                return 0

        return rss(self.proc.pid)

    def engine_pid(self) -> int:
        """The pid of the server's engine process: a child of its fork server (or, spawned, its own)."""
        for child in children(self.proc.pid):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"forkserver" in cmd and children(child):
                return children(child)[0]
            if b"spawn_main" in cmd:
                return child
        raise AssertionError("no engine process found")
