"""The engine's own thread, and the bridge between it and the asyncio server.

The `Engine` is not thread-safe and its `step()` is blocking compute, so exactly one thread owns
it and runs this loop::

    forever:
        take every command from the inbox   (add a request / abort one / run a function)
        if anything is waiting or running:  events = engine.step()
                                            hand each event to its request's asyncio queue
        else:                               sleep until a command arrives

HTTP handlers never touch the engine: `generate()` posts an "add" command and then awaits the
request's own `asyncio.Queue`, which the engine thread fills through
`loop.call_soon_threadsafe`. Leaving `generate()` early — the client disconnected, the request
timed out, the handler was cancelled — posts an "abort", which the thread executes before its
next step, so the KV-cache slot is free within one step.

Back-pressure: at most ``max_batch + max_queue`` sequences may be admitted-but-unfinished;
beyond that `QueueFull` is raised at once (the server answers 429) instead of letting the queue
grow without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import queue
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fornalha.infer.engine import Engine, Event
from fornalha.infer.sampling import SamplingParams


class QueueFull(Exception):
    """More requests than slots + queue: come back later."""


class RequestTimeout(Exception):
    """A request ran past its time limit and was cancelled."""


class EngineStopped(Exception):
    """The engine thread is not running (it failed, or the server is stopping): no request can run."""


@dataclass
class _Handle:
    key: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue


def _deliver(batch: list[tuple[asyncio.Queue, Event]]) -> None:
    """In the event loop: one step's events into their requests' queues."""
    for events, ev in batch:
        events.put_nowait(ev)


def freeze_startup_objects() -> None:
    """Leave everything allocated so far (the model, PyTorch's and FastAPI's modules) out of Python's
    garbage collector for good (`gc.freeze`), once a server process has started. A full collection
    otherwise walks all of it — 130–150 ms in the server, ~90 ms in the engine process, measured at
    16 clients — to find the few cycles that requests leave behind, and meanwhile every stream
    stalls: it was the p99 time to first token. Called by `fornalha serve` and the engine process,
    not by `create_app`, so a test process that builds apps keeps its collector as it is."""
    gc.collect()
    gc.freeze()


def hand_over(handles: dict[int, _Handle], events: list[tuple[int, Event]]) -> None:
    """One step's (key, event)s to their requests, from the thread that runs or reads the engine:
    one hand-off per event loop and step, not one per token (each `call_soon_threadsafe` wakes the
    loop through its self-pipe: a system call and a loop iteration). A finished request's handle
    is forgotten; events of a request no longer waited for are dropped."""
    out: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
    for key, ev in events:
        h = handles.pop(key, None) if ev.finished else handles.get(key)
        if h is not None:
            out.setdefault(h.loop, []).append((h.events, ev))
    for loop, batch in out.items():
        loop.call_soon_threadsafe(_deliver, batch)


def engine_stopped(cause: BaseException) -> EngineStopped:
    """The error every request gets once the engine is gone: 503 `engine_stopped`, saying why."""
    stopped = EngineStopped(f"the engine stopped: {type(cause).__name__}: {cause}")
    stopped.__cause__ = cause
    return stopped


def fail_all(handles: dict[int, _Handle], error: BaseException) -> None:
    """Every request still waiting gets `error` (and the handles are forgotten)."""
    for h in handles.values():
        h.loop.call_soon_threadsafe(h.events.put_nowait, error)
    handles.clear()


class Requests:
    """The engine side of the bridge, whatever carries its commands (a queue in `AsyncEngine`, a
    pipe in the engine process of `fornalha.serve.engine_process`): requests known by the server's
    key, each step's events handed back by key, finished and aborted requests forgotten."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._key_of: dict[int, int] = {}  # engine request id -> the server's key
        self._rid_of: dict[int, int] = {}  # the server's key -> engine request id

    def add(self, key: int, ids: list[int], params: SamplingParams) -> None:
        """Queue a request (raises what `Engine.add_request` raises for bad input)."""
        rid = self.engine.add_request(ids, params, add_bos=False)
        self._key_of[rid], self._rid_of[key] = key, rid
        if params.max_new_tokens == 0:  # finished at once
            self.engine.discard(rid)

    def abort(self, key: int) -> None:
        rid = self._rid_of.pop(key, None)
        if rid is not None:
            self._key_of.pop(rid, None)
            self.engine.abort(rid)
            self.engine.discard(rid)

    def step(
        self, on_prefill: Callable[[list[tuple[int, Event]]], None] | None = None
    ) -> list[tuple[int, Event]]:
        """One engine step; its events as (key, event). `on_prefill` gets the first tokens of the
        requests admitted in this step before the decode runs (see `Engine.step`)."""
        early = None if on_prefill is None else lambda events: on_prefill(self._keyed(events))
        return self._keyed(self.engine.step(early))

    def _keyed(self, events: list[Event]) -> list[tuple[int, Event]]:
        out = []
        for ev in events:
            key = self._key_of.get(ev.request_id)
            if ev.finished:
                self.engine.discard(ev.request_id)
                self._key_of.pop(ev.request_id, None)
                if key is not None:
                    self._rid_of.pop(key, None)
            if key is not None:
                out.append((key, ev))
        return out


class AsyncEngine:
    """Runs `engine` in a background thread; `generate` / `call` are awaited from asyncio.

    max_queue: how many sequences may wait for a slot (beyond `engine.max_batch_size` running).
    request_timeout: seconds a request may take in all (None: no limit).
    on_step: called in the engine thread after every step with the engine (for metrics).
    """

    def __init__(
        self,
        engine: Engine,
        max_queue: int = 64,
        request_timeout: float | None = None,
        on_step: Callable[[Engine], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.capacity = engine.max_batch_size + max_queue
        self.request_timeout = request_timeout
        self.on_step = on_step
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._keys = itertools.count()
        self._in_flight = 0  # touched only from the event loop thread
        self.error: BaseException | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fornalha-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---- the engine thread --------------------------------------------------------------------
    def _post(self, *command: Any) -> None:
        self._inbox.put(command)
        self._wake.set()

    def _run(self) -> None:
        handles: dict[int, _Handle] = {}  # the handle's key -> handle
        requests = Requests(self.engine)
        eng = self.engine
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        cmd = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    kind = cmd[0]
                    if kind == "add":
                        _, handle, ids, params = cmd
                        try:
                            requests.add(handle.key, ids, params)
                        except Exception as exc:  # bad input the app did not catch: the request fails
                            handle.loop.call_soon_threadsafe(handle.events.put_nowait, exc)
                            continue
                        handles[handle.key] = handle
                    elif kind == "abort":
                        handles.pop(cmd[1], None)
                        requests.abort(cmd[1])
                    elif kind == "call":
                        _, fn, fut = cmd
                        try:
                            fut.set_result(fn(eng))
                        except Exception as exc:
                            fut.set_exception(exc)
                if eng.has_unfinished():
                    hand_over(handles, requests.step(lambda first: hand_over(handles, first)))
                    if self.on_step is not None:
                        self.on_step(eng)
                else:
                    if self.on_step is not None:
                        self.on_step(eng)
                    self._wake.wait(0.1)
                    self._wake.clear()
        except BaseException as exc:  # the engine broke: fail every request, stop being ready
            self.error = exc
            stopped = engine_stopped(exc)
            fail_all(handles, stopped)
            while True:  # commands nobody will run now: answer them too
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if cmd[0] == "add":
                    cmd[1].loop.call_soon_threadsafe(cmd[1].events.put_nowait, stopped)
                elif cmd[0] == "call":
                    cmd[2].set_exception(stopped)
            traceback.print_exception(exc)  # the server's log says why /ready turned 503

    # ---- the asyncio side ---------------------------------------------------------------------
    def reserve(self, n: int) -> None:
        """Count n sequences as in flight, or raise QueueFull (call before generate)."""
        if self._in_flight + n > self.capacity:
            raise QueueFull(f"server busy: {self._in_flight} sequences in flight, capacity {self.capacity}")
        self._in_flight += n

    def release(self, n: int) -> None:
        self._in_flight -= n

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, deadline: float | None = None
    ) -> AsyncIterator[Event]:
        """The events of one sequence (n=1) as the engine produces them; the last one has
        finished=True. Leaving the loop early aborts the sequence. Raises RequestTimeout past
        `deadline` (a `time.monotonic()` value)."""
        self.check_alive()
        loop = asyncio.get_running_loop()
        handle = _Handle(next(self._keys), loop, asyncio.Queue())
        self._post("add", handle, list(prompt_ids), params)
        done = False
        try:
            while True:
                if not handle.events.empty():  # a step's events came together: no waiting at all
                    item = handle.events.get_nowait()
                else:
                    # Wake at least every second: a command posted just as the thread died is never
                    # answered. `asyncio.timeout`, not `wait_for`: Python 3.11's wait_for returns the
                    # item and drops a cancellation that lands as the item arrives — and a cancelled
                    # request (its client gone) then ran to its last token instead of being aborted.
                    wait = 1.0 if deadline is None else min(1.0, max(deadline - time.monotonic(), 0.0))
                    try:
                        async with asyncio.timeout(wait):
                            item = await handle.events.get()
                    except TimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise RequestTimeout("the request ran past its time limit") from None
                        self.check_alive()
                        continue
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
                if item.finished:
                    done = True
                    return
        finally:
            if not done:
                self._post("abort", handle.key)

    def check_alive(self) -> None:
        """Raise EngineStopped when the engine thread is not running."""
        if not self.alive:
            reason = f": {type(self.error).__name__}: {self.error}" if self.error is not None else ""
            raise EngineStopped(f"the engine is not running{reason}")

    async def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run fn(engine) in the engine thread between two steps (e.g. embeddings)."""
        self.check_alive()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._post("call", fn, fut)
        return await asyncio.wrap_future(fut)
