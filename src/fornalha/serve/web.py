"""The chat page (`GET /`), the feedback endpoint (`POST /v1/feedback`) and the explain view
(`GET /explain`, `POST /v1/explain`: see `fornalha.explain`).

The page is plain HTML, CSS and JavaScript shipped in `static/` (no build step, no external resource:
the server may run offline). It streams from `POST /v1/chat/completions`, and every answer carries its
completion `id`, so a thumbs up/down posted here ties to the exact completion in the store
(`request.app.state.store`, a `fornalha.serve.store.Store`).

Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}` and status 400 (503 when
the server runs without a store); feedback is validated before anything is written.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from fornalha.errors import FornalhaError
from fornalha.serve.store import StoreError, UnknownCompletion

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"chat.js": "text/javascript", "chat.css": "text/css"}
MAX_FEEDBACK_BODY = 64 * 1024
EXPLAIN_MAX_TOKENS = 512  # /v1/explain's answer grows with tokens² · layers · heads (docs/explain.md)

router = APIRouter()


def error_response(message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def chat_page() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str):
    if name not in STATIC_FILES:
        return error_response(f"no static file {name!r}", code="not_found", status=404)
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])


@router.post("/v1/feedback")
async def post_feedback(request: Request):
    """Body: `{"completion_id": str, "rating": 1 | -1, "comment"?: str, "user"?: str, "correction"?: str}`."""
    store = getattr(request.app.state, "store", None)
    if store is None:
        return error_response("this server keeps no store (started without --db)", status=503)
    raw = await request.body()
    if len(raw) > MAX_FEEDBACK_BODY:
        return error_response(f"request body over {MAX_FEEDBACK_BODY} bytes", code="body_too_large")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error_response(f"the body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(body, dict):
        return error_response("the body must be a JSON object")
    allowed = {"completion_id", "rating", "comment", "user", "correction"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        return error_response(
            f"unsupported parameter {unknown[0]!r}", param=unknown[0], code="unsupported_parameter"
        )
    for name in ("completion_id", "rating"):
        if name not in body:
            return error_response(
                f"missing required parameter {name!r}", param=name, code="missing_parameter"
            )
    try:
        saved = await asyncio.to_thread(
            store.record_feedback,
            body["completion_id"],
            body["rating"],
            body.get("comment"),
            body.get("user"),
            body.get("correction"),
        )
    except UnknownCompletion as exc:
        return error_response(str(exc), param="completion_id", code="unknown_completion")
    except StoreError as exc:
        message = str(exc)
        param = message.split(" ", 1)[0] if message.split(" ", 1)[0] in allowed else None
        return error_response(message, param=param, code="invalid_feedback")
    return {
        "id": f"fb-{saved['id']}",
        "object": "feedback",
        "completion_id": saved["completion_id"],
        "rating": saved["rating"],
        "created": int(saved["created"]),
    }


@router.get("/explain", response_class=HTMLResponse, include_in_schema=False)
def explain_page() -> HTMLResponse:
    from fornalha.explain import render_page

    return HTMLResponse(render_page(None, live=True))


@router.post("/v1/explain")
async def post_explain(request: Request):
    """Body: `{"text": str}`; the answer is `fornalha.explain.explain_text`'s object (tokens, attention,
    top-10, losses), computed by the engine thread between two decode steps."""
    from fornalha.explain import explain_text

    await request.app.state.authorize(request)  # the API key and rate limit of /v1/chat/completions
    try:
        body = json.loads((await request.body()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error_response(f"the body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return error_response('the body must be {"text": "..."}', param="text", code="missing_parameter")
    unknown = sorted(set(body) - {"text"})
    if unknown:
        return error_response(
            f"unsupported parameter {unknown[0]!r}", param=unknown[0], code="unsupported_parameter"
        )
    text = body["text"]
    try:
        return await request.app.state.slot.current.runner.call(  # the version served now (hot swap)
            lambda eng: explain_text(eng.model, eng.tokenizer, text, max_tokens=EXPLAIN_MAX_TOKENS)
        )
    except FornalhaError as exc:  # empty, or longer than the context
        return error_response(str(exc), param="text", code="invalid_text")
