"""The engine's decode loop in a process of its own: what `fornalha serve` runs by default.

`AsyncEngine` (async_engine.py) runs the loop in a thread of the server's process. That thread and
the HTTP side then share one interpreter lock (GIL): a decode step is ~150 small PyTorch calls,
each of which gives the lock up and must take it back, and whenever the HTTP side is formatting
and writing a burst of stream chunks the step waits for it. On 2 cores under 16 streams the step
took 6.0 ms in the server against 3.7 ms alone, and a Python thread busy 20 % of the time cost
the engine ~20 % of its tokens (benchmarks/LOG.md, 2026-12-01). vLLM moved its engine core into
a separate process for the same reason.

So here the loop runs in a child process (forked from a fork server that imported PyTorch once)
that builds its own copy of the engine (`engine.recipe`,
set by whoever loaded the engine from a run folder) and owns the KV cache::

    server process                                   engine process
    ──────────────                                   ──────────────
    generate(): ("add", key, ids, params)  ── pipe ─►  add_request
    leaving early: ("abort", key)          ── pipe ─►  abort
                                                      step() while anything runs
    reader thread: events → asyncio queues ◄─ pipe ──  ("events", [(key, Event)], stats) per step

The server keeps its own `Engine` for what is not the decode loop — embeddings, retrieval, the
explain view, the checks of a hot swap (`call` runs them on one worker thread of the server) —
built with one cache slot. The asyncio side (`reserve`, `generate`, timeouts, aborts, back-pressure)
is `AsyncEngine`'s, unchanged. If the engine process dies, every request in flight and every later
one fails at once with `EngineStopped` (a 503), as when the engine thread dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing as mp
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from fornalha.infer.engine import Engine
from fornalha.serve.async_engine import (
    AsyncEngine,
    EngineStopped,
    Requests,
    _Handle,
    engine_stopped,
    fail_all,
    freeze_startup_objects,
    hand_over,
)


@dataclass
class EngineStats:
    """What `on_step` reads of the engine process after each step (the metrics' gauges)."""

    num_waiting: int = 0
    num_running: int = 0
    prefix_hit_tokens: int = 0


def _child_main(recipe: Callable[[], Engine], threads: int | None, conn: Connection) -> None:
    """The engine process: build the engine, then run commands and steps until told to stop."""
    # Ctrl-C in a terminal (and systemd's stop) signal the whole process group: the server drains
    # its requests, which needs this process to go on decoding; it ends on "stop" or when the
    # server's end of the pipe closes (the server died).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        engine = recipe()
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which fails to start
        conn.send(("dead", f"{type(exc).__name__}: {exc}"))
        return
    freeze_startup_objects()  # no full collection walks the model between two decode steps
    conn.send(("ready", engine.max_batch_size))
    requests = Requests(engine)
    last = (0, 0, 0)  # the gauges last sent

    def gauges() -> tuple[int, int, int]:
        return engine.num_waiting, engine.num_running, engine.prefix_hit_tokens

    def send_first(first: list) -> None:
        """The admitted requests' first tokens, sent before the decode step, not after it."""
        conn.send(("events", first, gauges()))

    try:
        while True:
            wait: float | None = 0.0 if engine.has_unfinished() else None  # idle: sleep until a command
            while conn.poll(wait):
                wait = 0.0
                cmd = conn.recv()
                if cmd[0] == "add":
                    try:
                        requests.add(*cmd[1:])
                    except Exception as exc:  # bad input the server did not catch: that request fails
                        try:
                            conn.send(("failed", cmd[1], exc))
                        except Exception:  # an exception that does not pickle: its message then
                            conn.send(("failed", cmd[1], RuntimeError(f"{type(exc).__name__}: {exc}")))
                elif cmd[0] == "abort":
                    requests.abort(cmd[1])
                elif cmd[0] == "stop":
                    return
            out = requests.step(send_first) if engine.has_unfinished() else []
            stats = gauges()
            if out or stats != last:  # (an abort that emptied the batch: the gauges say so, no step)
                conn.send(("events", out, stats))
                last = stats
    except (EOFError, OSError):  # the server went away
        return
    except BaseException:  # noqa: BLE001 - the engine broke: say why, then exit
        conn.send(("dead", traceback.format_exc()))


def _context() -> mp.context.BaseContext:
    """Where engine processes come from: a fork server that imported PyTorch and fornalha once,
    single-threaded, so each engine process (one per hot-swapped version) is a fork of it that
    only loads its checkpoint — never a fork of the server, whose PyTorch thread pools a fork
    would break. Where there is no fork server (Windows, macOS defaults aside): spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "fornalha.infer.engine", "fornalha.serve.engine_process"])
    return ctx


class ProcessEngine(AsyncEngine):
    """`AsyncEngine` with the decode loop in a child process built from `engine.recipe`.

    engine: the server's own copy (for `call`); its `recipe` builds the child's.
    threads: PyTorch threads of the child (None: PyTorch's default).
    start_timeout: seconds the child may take to load the model.
    """

    def __init__(
        self,
        engine: Engine,
        max_queue: int = 64,
        request_timeout: float | None = None,
        on_step: Callable[[Any], None] | None = None,
        threads: int | None = None,
        start_timeout: float = 300.0,
    ) -> None:
        if engine.recipe is None:
            raise ValueError("ProcessEngine needs an engine loaded from a run folder (engine.recipe)")
        super().__init__(engine, max_queue, request_timeout, on_step)
        self.threads = threads
        self.start_timeout = start_timeout
        self.stats = EngineStats()
        self._handles: dict[int, _Handle] = {}
        self._lock = threading.Lock()  # the pipe's sending end is shared by the event loop and call()
        self._calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fornalha-calls")
        self._conn: Connection | None = None
        self._proc: mp.process.BaseProcess | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        ctx = _context()
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child_main, args=(self.engine.recipe, self.threads, child), name="fornalha-engine",
            daemon=True,
        )  # fmt: skip
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout):
            self._proc.kill()
            raise EngineStopped(f"the engine process did not start in {self.start_timeout:.0f} s")
        try:
            msg = parent.recv()
        except EOFError:
            raise EngineStopped("the engine process exited while loading the model") from None
        if msg[0] != "ready":
            raise EngineStopped(f"the engine process failed to start: {msg[1]}")
        self.capacity = msg[1] + self.max_queue  # the engine process's slots, not the server copy's
        self._thread = threading.Thread(target=self._read, name="fornalha-engine-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._send(("stop",))
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self._calls.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return (
            self._proc is not None
            and self._proc.is_alive()
            and self._thread is not None
            and self._thread.is_alive()
            and self.error is None
        )

    # ---- talking to the engine process --------------------------------------------------------
    def _send(self, msg: tuple) -> None:
        assert self._conn is not None
        with self._lock:
            self._conn.send(msg)

    def _post(self, *command: Any) -> None:
        kind = command[0]
        if kind == "add":
            _, handle, ids, params = command
            self._handles[handle.key] = handle
            try:
                self._send(("add", handle.key, ids, params))
            except OSError as exc:
                self._handles.pop(handle.key, None)
                handle.loop.call_soon_threadsafe(handle.events.put_nowait, engine_stopped(exc))
        elif kind == "abort":
            if self._handles.pop(command[1], None) is not None:
                with contextlib.suppress(OSError):
                    self._send(("abort", command[1]))
        else:
            raise ValueError(f"unknown command {kind!r}")

    async def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run fn(engine) on the server's own engine (one call at a time, off the event loop)."""
        self.check_alive()
        return await asyncio.wrap_future(self._calls.submit(fn, self.engine))

    def _read(self) -> None:
        """The reader thread: each step's events into their requests' asyncio queues."""
        assert self._conn is not None
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "events":
                    _, events, (waiting, running, hits) = msg
                    hand_over(self._handles, events)
                    self.stats.num_waiting, self.stats.num_running = waiting, running
                    self.stats.prefix_hit_tokens = hits
                    if self.on_step is not None:
                        self.on_step(self.stats)
                elif msg[0] == "failed":
                    h = self._handles.pop(msg[1], None)
                    if h is not None:
                        h.loop.call_soon_threadsafe(h.events.put_nowait, msg[2])
                elif msg[0] == "dead":
                    raise RuntimeError(msg[1])
        except BaseException as exc:  # noqa: BLE001 - the pipe closed or the engine died
            if self._stop.is_set():
                return
            self.error = exc if not isinstance(exc, EOFError) else RuntimeError("the engine process exited")
            fail_all(self._handles, engine_stopped(self.error))
            print(f"fornalha: the engine process stopped: {self.error}", flush=True)
