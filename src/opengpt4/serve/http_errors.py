"""Errors as OpenAI sends them: each typed error (errors.py) to its HTTP status and envelope
`{"error": {"message", "type", "param", "code"}}`, and the handlers FastAPI calls for typed
errors, malformed requests (400 naming the field, never 422), unknown routes and bugs."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from opengpt4.errors import (
    ContextLengthExceeded,
    ImageError,
    InvalidAPIKey,
    InvalidRequest,
    ModelNotFound,
    OpenGPT4Error,
    QueueFull,
    RateLimited,
    TokenizerError,
    Unavailable,
)
from opengpt4.serve.schemas import error_body

# --- errors: always OpenAI's envelope ---------------------------------------------------------
# Error type -> (HTTP status, OpenAI's error type, code). The most specific type along the
# exception's MRO wins; an OpenGPT4Error not listed is the server's own problem (500).
ERRORS: dict[type[OpenGPT4Error], tuple[int, str, str | None]] = {
    InvalidAPIKey: (401, "invalid_request_error", "invalid_api_key"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    ContextLengthExceeded: (400, "invalid_request_error", "context_length_exceeded"),
    InvalidRequest: (400, "invalid_request_error", None),
    ImageError: (400, "invalid_request_error", "invalid_image"),
    TokenizerError: (400, "invalid_request_error", None),
    RateLimited: (429, "requests", "rate_limit_exceeded"),  # the type is the limit hit: requests or tokens
    QueueFull: (503, "server_error", "server_busy"),
    Unavailable: (503, "server_error", None),  # its code says which: model_unavailable, rate_limit_storage_...
    OpenGPT4Error: (500, "server_error", None),
}


async def typed_error(request: Request, e: OpenGPT4Error) -> JSONResponse:
    status, type_, code = next(ERRORS[t] for t in type(e).__mro__ if t in ERRORS)
    message, param = str(e), getattr(e, "param", None)
    if isinstance(e, ContextLengthExceeded):  # OpenAI's advice on top of the engine's own words
        param = "prompt" if e.max_tokens is None else "messages"
        message += (" Please reduce the length of the prompt." if e.max_tokens is None
                    else " Please reduce the length of the messages or completion.")
    if isinstance(e, RateLimited):
        type_ = e.kind
    code = getattr(e, "code", None) or code
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


async def server_error(request: Request, e: Exception) -> JSONResponse:
    # A bug, not the client's doing: the envelope all the same, without the internals (they are logged).
    return JSONResponse(error_body("The server had an error while processing your request.", "server_error"),
                        status_code=500)


async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    # OpenAI answers a malformed request with 400 naming the field, not FastAPI's 422. A field
    # with a union type fails once per branch: the error that is not "wrong type" says why.
    errors = e.errors()
    err = next((x for x in errors if not x.get("type", "").endswith("_type")), errors[0] if errors else {})
    param = error_param(err.get("loc", ()))
    msg = str(err.get("msg", "invalid request")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


def error_param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as OpenAI names a param (`messages[0].content[1].text`), without
    the tags pydantic adds for a union's branches (`str`, `list[...]`, a discriminator's value)."""
    out: list[str] = []
    for p in loc:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif p != "body" and "[" not in p and p not in ("str", "int", "float", "bool", "list", "dict") \
                and (not out or out[-1] != f".{p}"):
            out.append(f".{p}")
    return "".join(out).lstrip(".") or None


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if e.status_code == 404 else None
    return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, code), status_code=e.status_code)
