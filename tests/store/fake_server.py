"""TEST DOUBLE: a tiny FastAPI app with the store and the web router mounted, whose
/v1/chat/completions is a deterministic fake streamer (no model). Used by tests/store only, until the
real `fornalha serve` exists; see `live_server` in conftest.py.

Run: python tests/store/fake_server.py --port P --db URL [--delay S] [--no-log-prompts]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fornalha.serve.store import Store
from fornalha.serve.web import error_response, router

MODEL = "fake-echo"


class ExitZeroServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown (exit -15); a served model exits 0 instead."""

    @contextmanager
    def capture_signals(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield


def fake_words(messages: list[dict], max_tokens: int) -> list[str]:
    """Deterministic 'answer': the last user message's words echoed back, then counting words."""
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    words = ["You", "said:"] + str(last).split() + [f"w{i}" for i in range(max_tokens)]
    return [w + " " for w in words[:max_tokens]]


def create_app(db_url: str, delay: float = 0.02, log_prompts: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = Store(db_url, log_prompts=log_prompts)
        yield
        app.state.store.close()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)

    @app.get("/v1/models")
    def models():
        return {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if not isinstance(body.get("messages"), list):
            return error_response("messages must be a list", param="messages")
        max_tokens = int(body.get("max_tokens") or 16)
        words = fake_words(body["messages"], max_tokens)
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = time.time()
        store = request.app.state.store

        def record(out: list[str], finish: str, t_first: float | None) -> None:
            store.record_completion(
                {
                    "id": cid,
                    "created": created,
                    "model": MODEL,
                    "endpoint": "chat.completions",
                    "request": body,
                    "output": ["".join(out)],
                    "finish_reasons": [finish],
                    "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]),
                    "completion_tokens": len(out),
                    "latency_ms": (time.time() - created) * 1000,
                    "ttft_ms": None if t_first is None else (t_first - created) * 1000,
                    "user": body.get("user"),
                }
            )

        if not body.get("stream"):
            record(words, "length", time.time())
            return {
                "id": cid,
                "object": "chat.completion",
                "created": int(created),
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(words), "total_tokens": len(words)},
            }

        async def events():
            out: list[str] = []
            t_first = None
            finish = "abort"
            try:
                for w in words:
                    await asyncio.sleep(delay)
                    t_first = t_first or time.time()
                    out.append(w)
                    chunk = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": int(created),
                        "model": MODEL,
                        "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n"
                finish = "length"
                last = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": int(created),
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                }
                if "sources" in str(body["messages"][-1].get("content", "")):  # the retrieval issue adds this
                    last["sources"] = [{"title": "Doc A", "id": "a"}, {"title": "Doc B", "id": "b"}]
                record(out, finish, t_first)  # queued before the last bytes: a 2xx stream is in the store
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if finish == "abort":
                    record(out, finish, t_first)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--delay", type=float, default=0.02)
    p.add_argument("--no-log-prompts", action="store_true")
    a = p.parse_args()
    app = create_app(a.db, a.delay, log_prompts=not a.no_log_prompts)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=a.port, log_level="warning", timeout_graceful_shutdown=10
    )
    ExitZeroServer(config).run()  # SIGTERM: drain, close the store, exit 0
