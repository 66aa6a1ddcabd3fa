"""The HTTP front end: OpenAI-compatible (Chat) Completions, the model list, metrics and the chat UI.

Routes are thin: parse the request, call the gateway's steps (gateway.py: authenticate,
resolve, admit, run, account), format the answer. Errors are typed (errors.py) and raised where
the fact is known; `ERRORS` below is the one place that turns each type into OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}` and its HTTP status. Blocking work (decoding
images, rendering the prompt, waiting for a whole completion) runs in worker threads, and a
stream is read on the event loop, so the loop never runs the model.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
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
)
from opengpt4.model.vision import load_image
from opengpt4.serve.gateway import Gateway, Served, Ticket
from opengpt4.serve.keys import KeyStore
from opengpt4.serve.ledger import UsageLedger
from opengpt4.serve.registry import Registry, registry_from_paths
from opengpt4.serve.responses import (
    chat_choices,
    chat_chunks,
    echo_logprobs,
    event_stream,
    text_choices,
    text_chunks,
    usage_of,
)
from opengpt4.serve.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ModelCard,
    ModelList,
    Pricing,
    TextChoice,
    TextCompletion,
    Usage,
    error_body,
)

SYSTEM_FINGERPRINT = "fp_opengpt4"
STATIC_DIR = Path(__file__).parent / "static"  # the web chat UI: plain HTML/JS/CSS, no build step
MAX_IMAGES = 8  # per request: each costs a ViT forward and tokens_per_image of context
ACCOUNTED_PATHS = ("/v1/chat/completions", "/v1/completions")  # the endpoints with a ledger row

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
    # OpenAI answers a malformed request with 400 naming the field, not FastAPI's 422.
    err = e.errors()[0] if e.errors() else {}
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {err.get('msg', 'invalid request')}" if param else err.get("msg", "invalid request")
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if e.status_code == 404 else None
    return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, code), status_code=e.status_code)


class TicketMiddleware:
    """Pure ASGI, around every request: gives it a `Ticket` (request.state.ticket), adds the
    ticket's rate-limit headers to whatever response goes out (success, error or stream) and,
    once the response is finished or the client went away, records the metrics and the ledger
    row. Doing it here rather than in the routes means no path (an early 400, a 429, a stream
    cut off mid-way) forgets its row."""

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ticket = Ticket()
        scope.setdefault("state", {})["ticket"] = ticket
        start, status = time.perf_counter(), 500

        async def send_with_headers(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in ticket.headers.items()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            self.gateway.metrics.observe_request(scope["path"], status, seconds)
            if scope["method"] == "POST" and scope["path"] in ACCOUNTED_PATHS:
                self.gateway.account(ticket, scope["path"], status, seconds)


# --- dependencies -------------------------------------------------------------------------------
def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _ticket(request: Request) -> Ticket:
    return request.state.ticket


GatewayDep = Annotated[Gateway, Depends(_gateway)]
TicketDep = Annotated[Ticket, Depends(_ticket)]
bearer = HTTPBearer(auto_error=False, description="an API key from `opengpt4 keys create`")


def authenticate(gateway: GatewayDep, ticket: TicketDep,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    gateway.authenticate(credentials.credentials if credentials else None, ticket)


# --- routes -------------------------------------------------------------------------------------
root = APIRouter(include_in_schema=False)
v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])


@root.get("/healthz")
async def healthz(gateway: GatewayDep) -> dict[str, Any]:
    return {"status": "ok", "models": list(gateway.served)}


@root.get("/metrics")
async def prometheus(gateway: GatewayDep) -> Response:
    return Response(gateway.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@v1.get("/models")
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    cards = [model_card(name, served, gateway.created) for name, served in gateway.names.items()]
    return ModelList(data=cards).model_dump()


@v1.get("/models/{model_id}")
async def retrieve_model(model_id: str, gateway: GatewayDep, ticket: TicketDep) -> dict[str, Any]:
    return model_card(model_id, gateway.resolve(model_id, ticket), gateway.created).model_dump()


@v1.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, gateway: GatewayDep,
                           ticket: TicketDep) -> Any:
    served = gateway.resolve(body.model, ticket)
    messages = await run_in_threadpool(chat_messages, body.messages, served.accepts_images)
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    if json_mode and not mentions_json(body.messages):
        raise InvalidRequest("'messages' must contain the word 'json' in some form, to use "
                             "'response_format' of type 'json_object'.", param="messages")
    try:
        prompt = await run_in_threadpool(served.engine.chat_prompt, messages)
    except (ValueError, OpenGPT4Error) as e:  # malformed parts: nothing was generated yet
        raise InvalidRequest(str(e), param="messages") from None
    # OpenAI's default max_tokens is "whatever the context has left" (at least 1, so a full
    # prompt still gets the context_length_exceeded error).
    max_tokens = body.max_completion_tokens or body.max_tokens or max(served.scheduler.max_context - len(prompt.ids), 1)
    params = sampling_params(body, max_tokens, logprobs=body.logprobs, top=body.top_logprobs or 0)
    params.json_mode = json_mode
    [handle] = gateway.admit(served, [prompt], params, ticket)
    meta = response_meta("chatcmpl", served)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(chat_chunks(handle, body.n, meta, include_usage, request, gateway.metrics))
    outputs = await run_in_threadpool(gateway.run, handle, body.n)
    return ChatCompletion(choices=chat_choices(outputs, body.logprobs), usage=usage_of(handle), **meta).model_dump()


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request, gateway: GatewayDep, ticket: TicketDep) -> Any:
    served = gateway.resolve(body.model, ticket)
    texts = completion_texts(body)
    meta = response_meta("cmpl", served)
    prompts = [served.engine.text_prompt(t) for t in texts]
    if body.max_tokens == 0:  # scoring only: echo the prompt with its logprobs, generate nothing
        return await score_text(gateway, served, texts[0], prompts[0], body.logprobs, meta, ticket)
    params = sampling_params(body, body.max_tokens, logprobs=body.logprobs is not None, top=body.logprobs or 0)
    handles = gateway.admit(served, prompts, params, ticket)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(text_chunks(handles[0], body.n, meta, request, include_usage))
    choices: list[TextChoice] = []
    for i, (text, prompt, handle) in enumerate(zip(texts, prompts, handles, strict=True)):
        echo = None
        if body.echo and body.logprobs is not None:
            echo = await run_in_threadpool(echo_logprobs, served.engine, served.score_lock, text, prompt, body.logprobs)
        outputs = await run_in_threadpool(gateway.run, handle, body.n)
        choices += text_choices(outputs, i * body.n, text if body.echo else "", echo, body.logprobs)
    return TextCompletion(choices=choices, usage=usage_of(*handles), **meta).model_dump(exclude_none=True)


async def score_text(gateway: Gateway, served: Served, text: str, prompt: Prompt, top: int | None,
                     meta: dict[str, Any], ticket: Ticket) -> dict[str, Any]:
    """max_tokens 0 + echo: the prompt's logprobs, nothing generated."""
    gateway.admit_scoring(served, prompt, ticket)
    logprobs = None
    if top is not None:
        logprobs = await run_in_threadpool(echo_logprobs, served.engine, served.score_lock, text, prompt, top)
    usage = Usage(prompt_tokens=len(prompt.ids), completion_tokens=0, total_tokens=len(prompt.ids))
    choice = TextChoice(index=0, text=text, finish_reason="length", logprobs=logprobs)
    return TextCompletion(choices=[choice], usage=usage, **meta).model_dump(exclude_none=True)


# --- parsing and formatting -------------------------------------------------------------------
def response_meta(prefix: str, served: Served) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.card.snapshot,
            "system_fingerprint": SYSTEM_FINGERPRINT}


def model_card(name: str, served: Served, created: int) -> ModelCard:
    card, pricing = served.card, None
    if card.prompt_price is not None or card.completion_price is not None:
        pricing = Pricing(prompt=card.prompt_price or 0.0, completion=card.completion_price or 0.0)
    return ModelCard(id=name, created=created, snapshot=card.snapshot, context_length=served.scheduler.max_context,
                     accepts_images=served.accepts_images, pricing=pricing)


def completion_texts(body: CompletionRequest) -> list[str]:
    """The legacy request's prompts, refusing the combinations it does not support."""
    if body.suffix:
        raise InvalidRequest("suffix is not supported", param="suffix")
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequest("max_tokens: 0 is only meaningful with echo: true", param="max_tokens")
    if len(texts) != 1 and (body.stream or body.max_tokens == 0):
        raise InvalidRequest("a list of prompts is supported without streaming and scoring", param="prompt")
    return texts


def sampling_params(body: Any, max_tokens: int, *, logprobs: bool, top: int) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            logprobs=logprobs, top_logprobs=top, n=body.n)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


def mentions_json(messages: list[ChatMessage]) -> bool:
    """OpenAI's rule for JSON mode: some message must ask for JSON."""
    return any("json" in m.content.lower() if isinstance(m.content, str) else
               any(getattr(p, "text", "") and "json" in p.text.lower() for p in m.content)
               for m in messages)


def chat_messages(messages: list[ChatMessage], accepts_images: bool) -> list[dict[str, Any]]:
    """The messages as the engine takes them, with every image decoded here, so that a bad one is
    a 400 naming its part (`messages[1].content[2]`) rather than an error deep in the engine."""
    out, count = [], 0
    for i, m in enumerate(messages):
        message = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type != "image_url":
                    continue
                param = f"messages[{i}].content[{j}]"
                if not accepts_images:
                    raise InvalidRequest(f"{param}: this model does not accept image inputs", param,
                                         "image_not_supported")
                count += 1
                if count > MAX_IMAGES:
                    raise InvalidRequest(f"{param}: too many images; at most {MAX_IMAGES} per request", param)
                if not part.image_url.url.startswith("data:"):
                    # Never a server-side path (that would read the server's files) nor a fetch.
                    raise InvalidRequest(f"{param}: only data: URLs are accepted (data:image/png;base64,...)",
                                         param, "invalid_image")
                try:
                    image = load_image(part.image_url.url)
                except ImageError as e:
                    raise InvalidRequest(f"{param}: {e}", param, "invalid_image") from None
                message["content"][j] = {"type": "image", "image": image}
        out.append(message)
    return out


# --- the app ------------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.gateway.start()
    try:
        yield
    finally:
        app.state.gateway.stop()


def create_app(models: dict[str, Engine], *, registry: Registry | None = None, keys: KeyStore | None = None,
               ledger: UsageLedger | None = None, rate_limit_storage: str = "memory://") -> FastAPI:
    """models: engines by name. Without a registry each name is served as its own snapshot; with
    one, `models` maps each entry's `path` to its engine (entries sharing a path share weights).
    keys: None serves without authentication (--no-auth). The usage ledger defaults to the keys'
    database."""
    gateway = Gateway(models, registry=registry, keys=keys, ledger=ledger, rate_limit_storage=rate_limit_storage)
    app = FastAPI(title="opengpt4", version="1", lifespan=lifespan,
                  description="OpenAI-compatible Chat Completions and Completions, continuous batching, and a chat UI.")
    app.state.gateway = gateway
    app.state.schedulers = {snapshot: served.scheduler for snapshot, served in gateway.served.items()}
    app.state.metrics = gateway.metrics
    app.add_middleware(TicketMiddleware, gateway=gateway)
    app.add_exception_handler(OpenGPT4Error, typed_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    app.include_router(root)
    app.include_router(v1)
    # Mounted last: the UI at / must not shadow the API routes.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app


def main(model_paths: list[str], registry_file: str | None = None, host: str = "127.0.0.1", port: int = 8000,
         no_auth: bool = False, db: str | None = None, rate_limit_storage: str = "memory://",
         dtype: str = "auto") -> None:
    """Load every model of the registry (or each --model, its id the directory's name) and serve
    them until interrupted."""
    import uvicorn

    from opengpt4.files import opengpt4_home
    from opengpt4.serve.keys import Database
    from opengpt4.serve.registry import load_registry

    registry = load_registry(registry_file) if registry_file else registry_from_paths(model_paths)
    engines: dict[str, Engine] = {}
    for card in registry.models:
        if card.path not in engines:
            engines[card.path] = Engine.load(card.path, dtype)
    database = Database(db or opengpt4_home() / "serve.db")
    keys = None if no_auth else KeyStore(database)
    if keys is not None and not any(k.revoked is None for k in keys.list()):
        print(f"no API keys in {database.path} yet: create one with `opengpt4 keys create NAME` "
              "(or serve with --no-auth for local use)", file=sys.stderr)
    app = create_app(engines, registry=registry, keys=keys, ledger=UsageLedger(database),
                     rate_limit_storage=rate_limit_storage)
    uvicorn.run(app, host=host, port=port, log_level="info")
