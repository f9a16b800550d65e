"""Switching the served model without a restart, and without touching a request already running.

A request takes the model it will use *once*, when it arrives (`ModelSlot.current`: an engine
runner and the version's id), and keeps it to its last token. Switching is then only a matter of
what the *next* request takes::

    swap(version, load):
        engine  = load()                      in a worker thread: serving goes on meanwhile
        runner  = a new engine thread for it  (the old one keeps decoding its own requests)
        current = (runner, version)           one assignment on the event loop: atomic for requests
        later:  when the old runner has no sequence in flight, stop it (its memory goes with it)

So for a moment two engines run side by side; nothing waits, nothing is cut, and a stream never
mixes two models. A version that cannot be loaded, or whose vocabulary or context differs from the
one being served (the HTTP layer validates prompts against them), is refused and the current
version keeps serving.

Two ways to trigger a switch (`fornalha serve --registry DIR`): `watch` polls the registry's
`champion` alias every few seconds, and the admin router's ``POST /admin/reload`` switches at once
(behind its own keys: ``Authorization: Bearer ADMIN_KEY``, never an ordinary API key).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from fornalha.improve.gate import MAX_PAIRS, MAX_VAL_TOKENS, GatePolicy
from fornalha.infer.engine import Engine
from fornalha.serve.async_engine import AsyncEngine
from fornalha.serve.auth import KeyChecker
from fornalha.serve.errors import APIError, error_body

log = logging.getLogger(__name__)


class SwapError(Exception):
    """The new version could not be loaded or does not fit the server; the old one keeps serving."""


@dataclass
class Served:
    """What one request uses from start to finish."""

    runner: AsyncEngine
    version: str | None = None

    @property
    def fingerprint(self) -> dict[str, str]:
        """Extra response fields naming the version (OpenAI's `system_fingerprint`); none without a registry."""
        return {} if self.version is None else {"system_fingerprint": self.version}


@dataclass
class ModelSlot:
    """The version new requests get; `swap` replaces it, old runners retire when drained."""

    current: Served
    make_runner: Callable[[Engine], AsyncEngine]
    swaps: int = 0
    retiring: list[Served] = field(default_factory=list)
    _lock: asyncio.Lock | None = None
    _tasks: set = field(default_factory=set)

    def start(self) -> None:
        self.current.runner.start()

    def stop(self) -> None:
        for served in [self.current, *self.retiring]:
            served.runner.stop()

    async def swap(self, version: str, load: Callable[[], Engine]) -> bool:
        """Serve `version` (load() builds its engine) from the next request on; False if already served."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one switch at a time
            if version == self.current.version:
                return False
            try:
                engine = await asyncio.to_thread(load)
            except Exception as exc:
                raise SwapError(f"cannot load version {version}: {exc}") from exc
            old_engine = self.current.runner.engine
            if (
                engine.config.vocab_size != old_engine.config.vocab_size
                or engine.max_seq_len != old_engine.max_seq_len
            ):
                raise SwapError(
                    f"version {version} has vocabulary {engine.config.vocab_size} and context {engine.max_seq_len}; "
                    f"the server was started with {old_engine.config.vocab_size} and {old_engine.max_seq_len}: restart it"
                )
            runner = self.make_runner(engine)
            try:  # an engine process loads for seconds: the streams in flight go on meanwhile
                await asyncio.to_thread(runner.start)
            except Exception as exc:
                runner.stop()
                raise SwapError(f"cannot start version {version}: {exc}") from exc
            old, self.current = self.current, Served(runner, version)
            self.swaps += 1
            self.retiring.append(old)
            task = asyncio.create_task(self._retire(old))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            log.warning("now serving %s (was %s)", version, old.version)
            return True

    async def _retire(self, old: Served) -> None:
        """Stop the old runner once its last in-flight sequence has finished (streams included)."""
        while old.runner.in_flight > 0 and old.runner.alive:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(old.runner.stop)
        self.retiring.remove(old)


async def watch(
    slot: ModelSlot,
    champion: Callable[[], tuple[str, Path] | None],
    load: Callable[[Path], Engine],
    interval: float,
) -> None:
    """Poll `champion()` every `interval` seconds; switch when it names another version.

    A version that failed to load is not retried until the champion changes again.
    """
    failed: str | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            found = await asyncio.to_thread(champion)
        except Exception as exc:  # a registry file being replaced, a disk hiccup: try again next time
            log.warning("registry: cannot read the champion: %s", exc)
            continue
        if found is None or found[0] in (slot.current.version, failed):
            continue
        vid, path = found
        try:
            await slot.swap(vid, lambda path=path: load(path))
            failed = None
        except SwapError as exc:
            failed = vid
            log.error("registry: %s; still serving %s", exc, slot.current.version)


class PromoteRequest(BaseModel):
    """The body of ``POST /admin/promote`` (all optional): `fornalha registry promote`'s options."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = None  # default: the challenger
    force: bool = False
    val_data: str | None = None  # a dataset folder on the server: measure both models' val bpb now
    pairs: str | None = None  # held-out preference pairs (JSONL) on the server: measure both now
    tolerance: float = GatePolicy.bpb_tolerance
    metric: str = GatePolicy.feedback_metric
    min_gain: float = GatePolicy.min_gain
    max_tokens: int = MAX_VAL_TOKENS
    max_pairs: int = MAX_PAIRS


def admin_router(
    slot: ModelSlot,
    admin_keys: list[str],
    champion: Callable[[], tuple[str, Path] | None],
    load: Callable[[Path], Engine],
    promote: Callable[..., Any] | None = None,
) -> APIRouter:
    """``POST /admin/reload`` (serve the registry's champion now), ``POST /admin/promote`` and
    ``GET /admin/status``.

    promote(version, *, policy, val_data, pairs, max_tokens, max_pairs, force, created_by) -> Decision:
    `fornalha.improve.gate.promote_through_gate` bound to the served registry (None: no /admin/promote).
    """
    keys = KeyChecker(admin_keys)

    async def admin_only(request: Request) -> None:
        if not keys.enabled:
            raise APIError(403, "admin endpoints are disabled: start the server with --admin-keys-file "
                           "or FORNALHA_ADMIN_KEYS", code="admin_disabled")  # fmt: skip
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        if keys.check(presented) is None:
            raise APIError(401, "missing or invalid admin key (send Authorization: Bearer ADMIN_KEY)",
                           code="invalid_admin_key")  # fmt: skip

    router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)])

    def status() -> dict[str, Any]:
        return {"object": "admin.status", "version": slot.current.version, "swaps": slot.swaps,
                "retiring": [s.version for s in slot.retiring]}  # fmt: skip

    @router.get("/status")
    async def get_status() -> dict[str, Any]:
        return status()

    @router.post("/reload")
    async def reload() -> dict[str, Any]:
        try:
            found = await asyncio.to_thread(champion)
        except Exception as exc:
            raise APIError(409, f"cannot read the registry: {exc}", code="registry_unreadable") from None
        if found is None:
            raise APIError(409, "the registry has no champion", code="no_champion")
        previous = slot.current.version
        try:
            swapped = await slot.swap(found[0], lambda: load(found[1]))
        except SwapError as exc:
            raise APIError(409, f"{exc}; still serving {previous}", code="swap_failed") from None
        return {**status(), "previous": previous, "swapped": swapped}

    if promote is None:
        return router

    @router.post("/promote", response_model=None)
    async def promote_version(body: PromoteRequest | None = None) -> dict[str, Any] | JSONResponse:
        """The gate of `fornalha registry promote` (unless force), the decision recorded, then the switch."""
        from fornalha.errors import FornalhaError
        from fornalha.improve.registry import RegistryError, UnknownVersionError

        req = body or PromoteRequest()
        try:
            policy = GatePolicy(
                bpb_tolerance=req.tolerance, feedback_metric=req.metric, min_gain=req.min_gain
            )
            decision = await asyncio.to_thread(
                promote, req.version, policy=policy, val_data=req.val_data, pairs=req.pairs,
                max_tokens=req.max_tokens, max_pairs=req.max_pairs, force=req.force, created_by="POST /admin/promote",
            )  # fmt: skip
        except UnknownVersionError as exc:
            raise APIError(404, str(exc), "version", code="unknown_version") from None
        except RegistryError as exc:  # no challenger, already the champion, the champion changed meanwhile
            raise APIError(409, str(exc), code="promotion_impossible") from None
        except FornalhaError as exc:  # a bad policy, a missing dataset or pairs file
            raise APIError(400, str(exc), code="invalid_value") from None
        record = decision.to_dict()
        if not decision.promoted:
            body_ = error_body(409, f"the gate refused {decision.challenger}: {'; '.join(decision.reasons or [])}; "
                               f"{decision.champion_before} stays the champion", None, "gate_refused")  # fmt: skip
            return JSONResponse({**body_, "decision": record}, 409)
        previous = slot.current.version
        try:
            swapped = await slot.swap(decision.champion_after, lambda: load(promoted_path(decision)))
        except SwapError as exc:
            raise APIError(409, f"{decision.champion_after} was promoted but cannot be served here: {exc}; "
                           f"still serving {previous}", code="swap_failed") from None  # fmt: skip
        return {
            **status(),
            "object": "admin.promotion",
            "previous": previous,
            "swapped": swapped,
            "decision": record,
        }

    def promoted_path(decision: Any) -> Path:
        found = champion()
        if found is None or found[0] != decision.champion_after:
            raise SwapError(f"the registry's champion is no longer {decision.champion_after}")
        return found[1]

    return router
