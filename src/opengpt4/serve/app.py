"""The HTTP front end: OpenAI-compatible (Chat) Completions over the continuous-batching scheduler.

Each served model gets one `Scheduler` (one background thread owning the model and its KV cache);
request handlers only submit work and read deltas, so the event loop never runs the model.
Blocking reads of a handle's deltas run in worker threads to keep the loop free for other clients.

A request goes: authenticate the key -> resolve the model name (alias -> snapshot) -> validate
and render the prompt (images decoded here, so a bad one is a 400 naming its part) -> check the
context -> charge the key's rate limits -> queue. Nothing is charged or queued for a request
that fails an earlier step. `accounting.py` writes the ledger row and metrics for every request.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import QueueFull, RequestHandle, Scheduler
from opengpt4.errors import ConfigError, ImageError, OpenGPT4Error
from opengpt4.model.vision import load_image
from opengpt4.serve.accounting import Accounting, AccountingMiddleware, Metrics
from opengpt4.serve.keys import KeyStore, UsageLedger
from opengpt4.serve.ratelimit import RateLimited, RateLimiter
from opengpt4.serve.registry import Registry, ServedModel, registry_from_paths
from opengpt4.serve.responses import (
    chat_chunks,
    collect_chat,
    collect_text,
    echo_logprobs,
    event_stream,
    join_logprobs,
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
CONTEXT_MESSAGE = "This model's maximum context length"  # how Engine/Scheduler word the context error
MAX_IMAGES = 8  # per request: each costs a ViT forward and tokens_per_image of context


class APIError(Exception):
    """An error answered in OpenAI's envelope with its HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


@dataclass
class Served:
    card: ServedModel
    engine: Engine
    scheduler: Scheduler
    accepts_images: bool
    score_lock: threading.Lock  # echo scoring runs the model outside the scheduler: one at a time

    def model_card(self, name: str, created: int) -> ModelCard:
        pricing = None
        if self.card.prompt_price is not None or self.card.completion_price is not None:
            pricing = Pricing(prompt=self.card.prompt_price or 0.0, completion=self.card.completion_price or 0.0)
        return ModelCard(id=name, created=created, snapshot=self.card.snapshot, context_length=self.scheduler.max_context,
                         accepts_images=self.accepts_images, pricing=pricing)


def _serve_entry(card: ServedModel, engine: Engine) -> Served:
    model_context = engine.config.max_seq_len
    if card.context_length is not None and card.context_length > model_context:
        raise ConfigError(f"{card.snapshot}: context_length {card.context_length} exceeds the model's own "
                          f"{model_context} tokens")
    has_vision = engine.tokenizer.image_id is not None and engine.tokenizer.tokens_per_image > 0
    if card.accepts_images and not has_vision:
        raise ConfigError(f"{card.snapshot}: accepts_images is true but the model has no image input")
    scheduler = Scheduler(engine, max_batch=card.max_batch, max_context=card.context_length)
    accepts = has_vision if card.accepts_images is None else card.accepts_images
    return Served(card, engine, scheduler, accepts, threading.Lock())


def create_app(models: dict[str, Engine], *, registry: Registry | None = None, keys: KeyStore | None = None,
               ledger: UsageLedger | None = None, rate_limit_storage: str = "memory://") -> FastAPI:
    """models: engines by name. Without a registry each name is served as its own snapshot; with
    one, `models` maps each entry's `path` to its engine (entries sharing a path share weights).
    keys: None serves without authentication (--no-auth). The usage ledger defaults to the keys'
    database."""
    registry = registry or Registry([ServedModel(name, name) for name in models])
    by_snapshot = {card.snapshot: _serve_entry(card, models[card.path]) for card in registry.models}
    names = {name: by_snapshot[card.snapshot] for name, card in registry.names().items()}
    ledger = ledger if ledger is not None else (UsageLedger(keys.db) if keys is not None else None)
    limiter = RateLimiter(rate_limit_storage)
    metrics = Metrics()
    for snapshot, served in by_snapshot.items():
        metrics.watch_scheduler(snapshot, served.scheduler)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for served in by_snapshot.values():
            served.scheduler.start()
        try:
            yield
        finally:
            for served in by_snapshot.values():
                served.scheduler.stop()

    app = FastAPI(title="opengpt4", version="1", lifespan=lifespan,
                  description="OpenAI-compatible Chat Completions and Completions, continuous batching, and a chat UI.")
    app.state.schedulers = {s: served.scheduler for s, served in by_snapshot.items()}
    app.state.metrics = metrics
    app.add_middleware(AccountingMiddleware, ledger=ledger, metrics=metrics)

    # --- errors: always OpenAI's envelope ----------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        # OpenAI answers a malformed request with 400 naming the field, not FastAPI's 422.
        err = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {err.get('msg', 'invalid request')}" if param else err.get("msg", "invalid request")
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, code), status_code=e.status_code)

    # --- auth and limits -----------------------------------------------------------------------
    bearer = HTTPBearer(auto_error=False, description="an API key from `opengpt4 keys create`")

    def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        acct: Accounting = request.state.acct
        if keys is None:
            return
        if credentials is None or not credentials.credentials:
            raise APIError(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                           code="invalid_api_key")
        key = keys.verify(credentials.credentials)
        if key is None:
            given = credentials.credentials
            shown = f"{given[:7]}{'*' * 8}{given[-4:]}" if len(given) > 12 else "*" * len(given)
            raise APIError(401, f"Incorrect API key provided: {shown}. Create one with `opengpt4 keys create`.",
                           code="invalid_api_key")
        acct.key = key
        acct.headers = limiter.headers(key)

    def resolve(name: str, acct: Accounting) -> Served:
        if name not in names:
            raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        acct.model = names[name].card
        return names[name]

    def charge(acct: Accounting, tokens: int) -> None:
        if acct.key is None:
            return
        try:
            acct.headers = limiter.charge(acct.key, tokens)
        except RateLimited as e:
            acct.headers = e.headers
            raise APIError(429, str(e), "tokens" if "tokens per min" in str(e) else "requests",
                           code="rate_limit_exceeded") from None

    def admit(served: Served, prompt: Prompt, params: SamplingParams, acct: Accounting) -> RequestHandle:
        """Context check, then the rate-limit charge, then the queue: a rejected request costs nothing."""
        try:
            served.engine.check_prompt(prompt, params.max_tokens, served.scheduler.max_context)
        except ValueError as e:
            raise context_error(e) from None
        charge(acct, len(prompt.ids) + params.max_tokens * params.n)
        try:
            handle = served.scheduler.submit(prompt, params)
        except QueueFull as e:
            raise APIError(503, str(e), "server_error", code="server_busy") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        acct.handle = handle
        return handle

    async def score_text(served: Served, text: str, prompt: Prompt, top: int | None, meta: dict[str, Any],
                         acct: Accounting) -> dict[str, Any]:
        """max_tokens 0 + echo: the prompt's logprobs, nothing generated (a forward pass, not a queue slot)."""
        limit = served.scheduler.max_context
        if len(prompt.ids) > limit:
            raise APIError(400, f"{CONTEXT_MESSAGE} is {limit} tokens. However, you requested {len(prompt.ids)} "
                                "tokens to score. Please reduce the length of the prompt.",
                           param="prompt", code="context_length_exceeded")
        charge(acct, len(prompt.ids))
        acct.prompt_tokens = len(prompt.ids)
        logprobs = None
        if top is not None:
            logprobs = await run_in_threadpool(echo_logprobs, served.engine, served.score_lock, text, prompt, top)
        usage = Usage(prompt_tokens=len(prompt.ids), completion_tokens=0, total_tokens=len(prompt.ids))
        choice = TextChoice(index=0, text=text, finish_reason="length", logprobs=logprobs)
        return TextCompletion(choices=[choice], usage=usage, **meta).model_dump(exclude_none=True)

    # --- routes --------------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(by_snapshot)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return ModelList(data=[served.model_card(name, created) for name, served in names.items()]).model_dump()

    @v1.get("/models/{model_id}")
    async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
        return resolve(model_id, request.state.acct).model_card(model_id, created).model_dump()

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        acct: Accounting = request.state.acct
        served = resolve(body.model, acct)
        messages = await run_in_threadpool(chat_messages, body.messages, served.accepts_images)
        if body.response_format is not None and body.response_format.type == "json_object":
            if not any("json" in m.content.lower() if isinstance(m.content, str) else
                       any(getattr(p, "text", "") and "json" in p.text.lower() for p in m.content)
                       for m in body.messages):
                raise APIError(400, "'messages' must contain the word 'json' in some form, to use "
                                    "'response_format' of type 'json_object'.", param="messages")
        try:
            prompt = await run_in_threadpool(served.engine.chat_prompt, messages)
        except (ValueError, OpenGPT4Error) as e:  # malformed parts: nothing was generated yet
            raise APIError(400, str(e), param="messages") from None
        # OpenAI's default max_tokens is "whatever the context has left" (at least 1, so a full
        # prompt still gets the context_length_exceeded error).
        max_tokens = body.max_completion_tokens or body.max_tokens or max(served.scheduler.max_context - len(prompt.ids), 1)
        params = sampling_params(body, max_tokens, logprobs=body.logprobs, top=body.top_logprobs or 0)
        params.json_mode = body.response_format is not None and body.response_format.type == "json_object"
        handle = admit(served, prompt, params, acct)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.card.snapshot,
                "system_fingerprint": SYSTEM_FINGERPRINT}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return event_stream(chat_chunks(handle, body.n, meta, include_usage, request, metrics))
        choices = await run_in_threadpool(collect_chat, handle, body.n, body.logprobs)
        return ChatCompletion(choices=choices, usage=usage_of(handle), **meta).model_dump()

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        acct: Accounting = request.state.acct
        served = resolve(body.model, acct)
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens: 0 is only meaningful with echo: true", param="max_tokens")
        if len(texts) != 1 and (body.stream or body.max_tokens == 0):
            raise APIError(400, "a list of prompts is supported without streaming and scoring", param="prompt")
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.card.snapshot,
                "system_fingerprint": SYSTEM_FINGERPRINT}
        prompts = [served.engine.text_prompt(t) for t in texts]
        if body.max_tokens == 0:  # scoring only: echo the prompt with its logprobs, generate nothing
            return await score_text(served, texts[0], prompts[0], body.logprobs, meta, acct)
        params = sampling_params(body, body.max_tokens, logprobs=body.logprobs is not None, top=body.logprobs or 0)
        handles: list[RequestHandle] = []
        try:
            for p in prompts:
                handles.append(admit(served, p, params, acct))
        except APIError:
            for h in handles:  # all or nothing: a later prompt's 400/429 stops the earlier ones
                h.cancel()
            raise
        if body.stream:
            return event_stream(text_chunks(handles[0], body.n, meta, request,
                                            bool(body.stream_options and body.stream_options.include_usage)))
        choices: list[TextChoice] = []
        for i, (text, prompt, handle) in enumerate(zip(texts, prompts, handles, strict=True)):
            echo = None
            if body.echo and body.logprobs is not None:
                echo = await run_in_threadpool(echo_logprobs, served.engine, served.score_lock, text, prompt, body.logprobs)
            got = await run_in_threadpool(collect_text, handle, body.n)
            for j, (out, finish, lps) in enumerate(got):
                logprobs = None
                if body.logprobs is not None:
                    logprobs = join_logprobs(echo, lps, len(text) if body.echo else 0, body.logprobs)
                choices.append(TextChoice(index=i * body.n + j, text=(text if body.echo else "") + out,
                                          finish_reason=finish, logprobs=logprobs))
        prompt_tokens = sum(h.prompt_tokens for h in handles)
        completion_tokens = sum(h.completion_tokens for h in handles)
        acct.handle, acct.prompt_tokens, acct.completion_tokens = None, prompt_tokens, completion_tokens
        return TextCompletion(choices=choices, usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                                           total_tokens=prompt_tokens + completion_tokens),
                              **meta).model_dump(exclude_none=True)

    app.include_router(v1)
    # Mounted last: the UI at / must not shadow the API routes.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app


def context_error(e: ValueError) -> APIError:
    if str(e).startswith(CONTEXT_MESSAGE):
        return APIError(400, str(e) + " Please reduce the length of the messages or completion.",
                        param="messages", code="context_length_exceeded")
    return APIError(400, str(e))


def sampling_params(body: Any, max_tokens: int, *, logprobs: bool, top: int) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            logprobs=logprobs, top_logprobs=top, n=body.n)
    except ValueError as e:
        raise APIError(400, str(e)) from None


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
                    raise APIError(400, f"{param}: this model does not accept image inputs", param=param,
                                   code="image_not_supported")
                count += 1
                if count > MAX_IMAGES:
                    raise APIError(400, f"{param}: too many images; at most {MAX_IMAGES} per request", param=param)
                if not part.image_url.url.startswith("data:"):
                    # Never a server-side path (that would read the server's files) nor a fetch.
                    raise APIError(400, f"{param}: only data: URLs are accepted (data:image/png;base64,...)",
                                   param=param, code="invalid_image")
                try:
                    image = load_image(part.image_url.url)
                except ImageError as e:
                    raise APIError(400, f"{param}: {e}", param=param, code="invalid_image") from None
                message["content"][j] = {"type": "image", "image": image}
        out.append(message)
    return out


def main(model_paths: list[str], registry_file: str | None = None, host: str = "127.0.0.1", port: int = 8000,
         no_auth: bool = False, db: str | None = None, rate_limit_storage: str = "memory://",
         dtype: str = "auto") -> None:
    """Load every model of the registry (or each --model, its id the directory's name) and serve
    them until interrupted."""
    import uvicorn

    from opengpt4.model.checkpoint import opengpt4_home
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
