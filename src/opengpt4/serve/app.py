"""The HTTP front end: OpenAI-compatible (Chat) Completions, the model list, metrics and the chat UI.

Routes are thin: parse the request, call the gateway's steps (gateway.py: authenticate,
resolve, admit, run, account), format the answer. Errors are typed (errors.py) and raised where
the fact is known; `http_errors.ERRORS` is the one place that turns each type into OpenAI's
envelope `{"error": {"message", "type", "param", "code"}}` and its HTTP status. Blocking work (decoding
images, rendering the prompt, admission) runs in worker threads, and completions are awaited on
the event loop, so the loop never runs the model and a waiting request holds no thread.

One request cannot take the others down: a body over `max_body_bytes` is a 413 before it is
parsed, every field is checked by its schema (400), text too long for any context is refused
before it is tokenized, a failure inside generation fails its own request, and a client that
hangs up stops its generation (streaming or not). `/healthz` is 503 when a model's scheduler
thread is dead or stuck. On SIGTERM the server stops accepting, lets running requests finish
for `drain_s`, then cancels the rest and exits.

Statuses beyond OpenAI's usual: 413 `request_too_large`; 503 `server_busy` (the queue is
full), `model_unavailable` (the scheduler stopped) and `rate_limit_storage_unavailable` (Redis
is down: no request is served unlimited); 499 in the usage ledger only, for a client that left
before its response was complete.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
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
from opengpt4.errors import ImageError, InvalidRequest, OpenGPT4Error
from opengpt4.model.vision import load_image
from opengpt4.serve.gateway import Gateway, Served, Ticket
from opengpt4.serve.http_errors import http_error, server_error, typed_error, validation_error
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
from opengpt4.serve.tools import check_logit_bias, plan_chat

SYSTEM_FINGERPRINT = "fp_opengpt4"
MAX_BODY_BYTES = 16 * 2**20  # eight images as data URLs fit; a body is held whole only below this
DRAIN_S = 30.0  # on SIGTERM: how long running requests may finish before they are cancelled
STATIC_DIR = Path(__file__).parent / "static"  # the web chat UI: plain HTML/JS/CSS, no build step
MAX_IMAGES = 8  # per request: each costs a ViT forward and tokens_per_image of context
ACCOUNTED_PATHS = ("/v1/chat/completions", "/v1/completions")  # the endpoints with a ledger row

class BodyLimit:
    """Pure ASGI: a request body over `max_bytes` is answered 413 before any of it is parsed. The
    body is read in chunks and held only up to the cap (a declared Content-Length over it is
    refused unread), then handed to the app as it came."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left while sending
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self.too_large(scope, receive, send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:  # after the body: the client's disconnect, as the server reports it
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, scope: dict, receive: Any, send: Any) -> None:
        response = JSONResponse(error_body(f"Request body too large: the limit is {self.max_bytes} bytes.",
                                           "invalid_request_error", None, "request_too_large"), status_code=413)
        await response(scope, receive, send)


class TicketMiddleware:
    """Pure ASGI, around every request: gives it a `Ticket` (request.state.ticket), adds the
    ticket's rate-limit headers to whatever response goes out (success, error or stream) and,
    once the response is finished or the client went away, records the metrics and the ledger
    row. Doing it here rather than in the routes means no path (an early 400, a 429, a stream
    cut off mid-way) forgets its row. A response that never completed is the client's leaving."""

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ticket = Ticket()
        scope.setdefault("state", {})["ticket"] = ticket
        start, status, complete = time.perf_counter(), 500, False

        async def send_with_headers(message: dict) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = ticket.headers | ({"x-request-id": ticket.request_id} if ticket.request_id else {})
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        async def watched_receive() -> dict:
            # Whichever part of the app hears the hang-up (a stream's check, starlette's listener, a
            # route's watcher), the ticket knows. uvicorn drops sends to a closed connection silently,
            # so a stream cut off can still send its closing message: `complete` alone would bill it 200.
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                ticket.disconnected = True
            return message

        try:
            await self.app(scope, watched_receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            ticket.disconnected |= not complete
            self.gateway.metrics.observe_request(scope["path"], status, seconds)
            if scope["method"] == "POST" and scope["path"] in ACCOUNTED_PATHS:
                self.gateway.account(ticket, scope["path"], status, seconds)


# --- dependencies -------------------------------------------------------------------------------
# The dependencies are coroutines: FastAPI runs a plain `def` one in a worker thread, and under
# load those hops (three per request) were most of /v1/models' latency.
async def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def _ticket(request: Request) -> Ticket:
    return request.state.ticket


GatewayDep = Annotated[Gateway, Depends(_gateway)]
TicketDep = Annotated[Ticket, Depends(_ticket)]
bearer = HTTPBearer(auto_error=False, description="an API key from `opengpt4 keys create`")


async def authenticate(gateway: GatewayDep, ticket: TicketDep,
                       credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    key = credentials.credentials if credentials else None
    if gateway.limiter.remote:  # a Redis round trip may block: not on the event loop
        await run_in_threadpool(gateway.authenticate, key, ticket)
    else:  # a SQLite lookup and in-memory windows: microseconds
        gateway.authenticate(key, ticket)


# --- routes -------------------------------------------------------------------------------------
root = APIRouter(include_in_schema=False)
v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])


@root.get("/healthz")
async def healthz(gateway: GatewayDep) -> JSONResponse:
    """200 while every model's scheduler thread runs; 503 naming each that is dead or stuck."""
    problems = gateway.health()
    body: dict[str, Any] = {"status": "unavailable" if problems else "ok", "models": list(gateway.served)}
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=503 if problems else 200)


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
    check_text_length(served, sum(len(t) for m in body.messages for t in message_texts(m)), "messages")
    messages = await run_in_threadpool(chat_messages, body.messages, served.accepts_images)
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    if json_mode and not mentions_json(body.messages):
        raise InvalidRequest("'messages' must contain the word 'json' in some form, to use "
                             "'response_format' of type 'json_object'.", param="messages")
    plan = await run_in_threadpool(plan_chat, body, served.engine)  # tools, tool_choice, response_format
    try:
        prompt = await run_in_threadpool(served.engine.chat_prompt, messages, plan.tools, plan.response_schema)
    except (ValueError, OpenGPT4Error) as e:  # malformed parts: nothing was generated yet
        raise InvalidRequest(str(e), param="messages") from None
    # OpenAI's default max_tokens is "whatever the context has left" (at least 1, so a full
    # prompt still gets the context_length_exceeded error).
    max_tokens = body.max_completion_tokens or body.max_tokens or max(served.scheduler.max_context - len(prompt.ids), 1)
    params = sampling_params(body, max_tokens, served, logprobs=body.logprobs, top=body.top_logprobs or 0)
    params.grammar = plan.grammar
    [handle] = await run_in_threadpool(gateway.admit, served, [prompt], params, ticket,
                                       max_tokens_given=bool(body.max_completion_tokens or body.max_tokens))
    meta = response_meta("chatcmpl", served, ticket)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(chat_chunks(handle, body.n, meta, include_usage, request, gateway.metrics, plan.calls))
    outputs = await unless_disconnected(request, ticket, gateway.collect(handle, body.n))
    return ChatCompletion(choices=chat_choices(outputs, body.logprobs, plan.calls), usage=usage_of(handle),
                          **meta).model_dump()


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request, gateway: GatewayDep, ticket: TicketDep) -> Any:
    served = gateway.resolve(body.model, ticket)
    texts = completion_texts(body)
    for text in texts:
        check_text_length(served, len(text), "prompt")
    meta = response_meta("cmpl", served, ticket)
    prompts = await run_in_threadpool(lambda: [served.engine.text_prompt(t) for t in texts])
    if body.max_tokens == 0:  # scoring only: echo the prompt with its logprobs, generate nothing
        return await score_text(gateway, served, texts[0], prompts[0], body.logprobs, meta, ticket)
    params = sampling_params(body, body.max_tokens, served, logprobs=body.logprobs is not None, top=body.logprobs or 0)
    handles = await run_in_threadpool(gateway.admit, served, prompts, params, ticket)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(text_chunks(handles[0], body.n, meta, request, include_usage))

    async def every_choice() -> list[TextChoice]:
        choices: list[TextChoice] = []
        for i, (text, prompt, handle) in enumerate(zip(texts, prompts, handles, strict=True)):
            echo = None
            if body.echo and body.logprobs is not None:
                echo = await run_in_threadpool(echo_logprobs, served.engine, served.score_lock, text, prompt,
                                               body.logprobs)
            outputs = await gateway.collect(handle, body.n)
            choices += text_choices(outputs, i * body.n, text if body.echo else "", echo, body.logprobs)
        return choices

    choices = await unless_disconnected(request, ticket, every_choice())
    return TextCompletion(choices=choices, usage=usage_of(*handles), **meta).model_dump(exclude_none=True)


async def score_text(gateway: Gateway, served: Served, text: str, prompt: Prompt, top: int | None,
                     meta: dict[str, Any], ticket: Ticket) -> dict[str, Any]:
    """max_tokens 0 + echo: the prompt's logprobs, nothing generated."""
    await run_in_threadpool(gateway.admit_scoring, served, prompt, ticket)
    logprobs = None
    if top is not None:
        logprobs = await run_in_threadpool(echo_logprobs, served.engine, served.score_lock, text, prompt, top)
    usage = Usage(prompt_tokens=len(prompt.ids), completion_tokens=0, total_tokens=len(prompt.ids))
    choice = TextChoice(index=0, text=text, finish_reason="length", logprobs=logprobs)
    return TextCompletion(choices=[choice], usage=usage, **meta).model_dump(exclude_none=True)


async def unless_disconnected(request: Request, ticket: Ticket, work: Awaitable[Any]) -> Any:
    """Await `work` (collecting the ticket's choices). If the client hangs up first, or the server
    is shutting down, the request stops generating: its rows leave the batch at the next step and
    `work` returns what they produced, which is what the ledger bills."""
    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the hang-up (watched_receive marked the ticket)
            for handle in ticket.handles:
                handle.cancel()
        return await task
    finally:
        watcher.cancel()
        if not task.done():  # cancelled from outside (shutdown): stop generating too
            for handle in ticket.handles:
                handle.cancel()
            task.cancel()


# --- parsing and formatting -------------------------------------------------------------------
def response_meta(prefix: str, served: Served, ticket: Ticket) -> dict[str, Any]:
    ticket.request_id = f"{prefix}-{uuid.uuid4().hex}"
    return {"id": ticket.request_id, "created": int(time.time()), "model": served.card.snapshot,
            "system_fingerprint": SYSTEM_FINGERPRINT}


def message_texts(message: ChatMessage) -> list[str]:
    if isinstance(message.content, str):
        return [message.content]
    return [p.text for p in message.content or [] if getattr(p, "text", None)]


def check_text_length(served: Served, chars: int, param: str) -> None:
    """Refuse text that cannot fit the context whatever it says, before tokenizing it (a 50 MB
    prompt costs gigabytes to tokenize): no token is longer than the vocabulary's longest."""
    limit = served.scheduler.max_context
    if chars > limit * served.longest_token_chars:
        raise InvalidRequest(f"This model's maximum context length is {limit} tokens. However, your {param} hold "
                             f"{chars} characters, more than {limit} tokens can. Please reduce the length of the "
                             f"{param}.", param=param, code="context_length_exceeded")


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


def sampling_params(body: Any, max_tokens: int, served: Served, *, logprobs: bool, top: int) -> SamplingParams:
    logit_bias = check_logit_bias(body.logit_bias, served.engine.config.vocab_size)
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            logprobs=logprobs, top_logprobs=top, n=body.n, logit_bias=logit_bias)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


def mentions_json(messages: list[ChatMessage]) -> bool:
    """OpenAI's rule for JSON mode: some message must ask for JSON."""
    return any("json" in text.lower() for m in messages for text in message_texts(m))


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
               ledger: UsageLedger | None = None, rate_limit_storage: str = "memory://",
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
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
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(TicketMiddleware, gateway=gateway)  # added last: outermost, so a 413 gets its row too
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
         dtype: str = "auto", drain_s: float = DRAIN_S) -> None:
    """Load every model of the registry (or each --model, its id the directory's name) and serve
    them until interrupted. SIGTERM or Ctrl-C: running requests get `drain_s` to finish, then
    are cancelled, and the process exits."""
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
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=drain_s)
