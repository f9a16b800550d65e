"""`POST /v1/recommendations`: the recommender over HTTP, as a FastAPI router any app can include.

    request  {"history": ["0114709", ...], "k": 10, "exclude_seen": true}
    response {"object": "list", "source": "model" | "content", "data": [{"item", "score", "probability"?,
              "title"?}, ...], "model": RUN}
"source" says which path answered: the GPT, or (a history of cold items only) the nearest items by
the language model's text embedding (content.py).
Errors are OpenAI-shaped 400s, {"error": {"message", "type", "param", "code"}}; an unknown item id
is named in the message and listed in "unknown_items". The body is validated here (not by
FastAPI's 422 handler), so the router behaves the same in whatever app includes it.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fornalha.errors import FornalhaError
from fornalha.recommend.recommender import Recommender, UnknownItems


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[str] = Field(min_length=1, description="item ids, oldest first")
    k: int = Field(10, ge=1, le=1000, description="how many items to return")
    exclude_seen: bool = Field(True, description="never recommend an item of the history")


def error(message: str, param: str | None, code: str, status: int = 400, **extra) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    body["error"].update(extra)
    return JSONResponse(body, status_code=status)


def build_router(recommender: Recommender) -> APIRouter:
    router = APIRouter()
    lock = asyncio.Lock()  # one forward pass at a time (the model is small; requests are short)

    @router.post("/v1/recommendations")
    async def recommendations(request: Request):
        try:
            payload = await request.json()
        except ValueError:
            return error("request body is not valid JSON", None, "invalid_json")
        try:
            req = RecommendationRequest.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            return error(f"{param}: {first['msg']}", param, "invalid_value")
        try:
            async with lock:
                ans = await asyncio.to_thread(recommender.answer, req.history, req.k, req.exclude_seen)
        except UnknownItems as exc:
            return error(str(exc), "history", "unknown_item", unknown_items=exc.unknown)
        except FornalhaError as exc:
            return error(str(exc), None, "invalid_value")
        return {"object": "list", "model": str(recommender.run_dir), **ans}

    return router
