"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every way a client can get a request wrong ends here as a 4xx with that body — malformed JSON,
wrong types, unknown parameters, a prompt longer than the context — never as a 500. The handlers
are installed by `install_error_handlers(app)`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fornalha.errors import FornalhaError
from fornalha.serve.async_engine import EngineStopped

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error to send to the client with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}  # fmt: skip


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), exc.status, exc.headers)


def _describe(err: dict[str, Any]) -> tuple[str, str | None, str]:
    """One pydantic error as (message, param, code)."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None  # the top-level parameter; the message names the exact place
    where = ".".join(loc)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return (
            f"unsupported parameter: {param!r} (fornalha does not implement it)",
            param,
            "unsupported_parameter",
        )
    if kind in ("json_invalid", "json_type"):
        return f"the body is not valid JSON: {err.get('msg', '')}", None, "invalid_json"
    if kind == "missing":
        return f"missing required parameter: {param!r}", param, "missing_parameter"
    return f"invalid value for {where!r}: {err.get('msg', kind)}", param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message, param, code = _describe(errors[0]) if errors else ("invalid request", None, None)
        extra = [_describe(e)[1] for e in errors[1:] if e.get("type") == "extra_forbidden"]
        if extra and code == "unsupported_parameter":
            message += f"; also unsupported: {', '.join(repr(p) for p in extra)}"
        return JSONResponse(error_body(400, message, param, code), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, exc.headers)

    @app.exception_handler(FornalhaError)
    async def _fornalha(request: Request, exc: FornalhaError) -> JSONResponse:
        return JSONResponse(error_body(400, str(exc)), 400)

    @app.exception_handler(EngineStopped)
    async def _stopped(request: Request, exc: EngineStopped) -> JSONResponse:
        return JSONResponse(error_body(503, str(exc), None, "engine_stopped"), 503)

    @app.exception_handler(UnicodeDecodeError)
    async def _utf8(request: Request, exc: UnicodeDecodeError) -> JSONResponse:
        return JSONResponse(error_body(400, "the body is not valid UTF-8", None, "invalid_utf8"), 400)
