"""The HTTP front end: OpenAI-compatible Chat Completions over the continuous-batching scheduler.

Each served model gets one `Scheduler` (one background thread owning the model and its KV cache);
request handlers only submit work and read deltas, so the event loop never runs the model.
Blocking reads of a handle's deltas run in worker threads to keep the loop free for other clients.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from opengpt4.engine.generate import Delta, Engine, TokenLogprob
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import QueueFull, RequestHandle, Scheduler
from opengpt4.errors import OpenGPT4Error
from opengpt4.serve.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    ResponseMessage,
    TokenLogprobOut,
    TopLogprob,
    Usage,
    error_body,
)

SYSTEM_FINGERPRINT = "fp_opengpt4"
STATIC_DIR = Path(__file__).parent / "static"  # the web chat UI: plain HTML/JS/CSS, no build step
CONTEXT_MESSAGE = "This model's maximum context length"  # how Engine/Scheduler word the context error


class APIError(Exception):
    """An error answered in OpenAI's envelope with its HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def create_app(models: dict[str, Engine]) -> FastAPI:
    """models: model id -> engine. One scheduler per model runs from startup to shutdown."""
    schedulers = {name: Scheduler(engine) for name, engine in models.items()}
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for s in schedulers.values():
            s.start()
        try:
            yield
        finally:
            for s in schedulers.values():
                s.stop()

    app = FastAPI(title="opengpt4", lifespan=lifespan)
    app.state.schedulers = schedulers

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

    # --- routes --------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(schedulers)}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=name, created=created) for name in schedulers]).model_dump()

    @app.get("/v1/models/{model_id}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        get_scheduler(schedulers, model_id)
        return ModelCard(id=model_id, created=created).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        scheduler = get_scheduler(schedulers, body.model)
        handle = submit(scheduler, body)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_chunks(handle, body.n, meta, include_usage, request),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            choices = await run_in_threadpool(collect, handle, body.n, body.logprobs)
        except OpenGPT4Error as e:
            raise APIError(500, str(e), "server_error") from None
        usage = Usage(prompt_tokens=handle.prompt_tokens, completion_tokens=handle.completion_tokens,
                      total_tokens=handle.prompt_tokens + handle.completion_tokens)
        return ChatCompletion(choices=choices, usage=usage, **meta).model_dump()

    # Mounted last: the UI at / must not shadow the API routes.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app


def get_scheduler(schedulers: dict[str, Scheduler], model: str) -> Scheduler:
    if model not in schedulers:
        raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return schedulers[model]


def submit(scheduler: Scheduler, body: ChatCompletionRequest) -> RequestHandle:
    """Render the prompt and queue it; every failure here is the client's (400) or a full queue (503)."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        prompt = scheduler.engine.chat_prompt(messages)
    except (ValueError, OpenGPT4Error) as e:  # bad image, bad parts: nothing was generated yet
        raise APIError(400, str(e), param="messages") from None
    # OpenAI's default max_tokens is "whatever the context has left" (at least 1, so a full
    # prompt still gets the context_length_exceeded error below).
    max_tokens = body.max_completion_tokens or body.max_tokens or max(scheduler.max_context - len(prompt.ids), 1)
    try:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0, n=body.n)
        return scheduler.submit(prompt, params)
    except QueueFull as e:
        raise APIError(503, str(e), "server_error", code="server_busy") from None
    except ValueError as e:
        if str(e).startswith(CONTEXT_MESSAGE):
            raise APIError(400, str(e) + " Please reduce the length of the messages or completion.",
                           param="messages", code="context_length_exceeded") from None
        raise APIError(400, str(e)) from None


def logprobs_out(lps: list[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()),
                        top_logprobs=[TopLogprob(token=t, logprob=p, bytes=list(t.encode())) for _, t, p in lp.top])
        for lp in lps])


def collect(handle: RequestHandle, n: int, logprobs: bool) -> list[Choice]:
    """Blocking: gather every choice's text (runs in a worker thread)."""
    texts, finish, lps = [""] * n, ["length"] * n, [[] for _ in range(n)]
    for d in handle.deltas():
        texts[d.sample_index] += d.text
        if d.logprob is not None:
            lps[d.sample_index].append(d.logprob)
        if d.finish_reason is not None:
            finish[d.sample_index] = d.finish_reason
    return [Choice(index=i, message=ResponseMessage(content=texts[i]), finish_reason=finish[i],
                   logprobs=logprobs_out(lps[i]) if logprobs else None) for i in range(n)]


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_chunks(handle: RequestHandle, n: int, meta: dict[str, Any], include_usage: bool,
                        request: Request) -> AsyncIterator[str]:
    """Data-only SSE: role chunks, content deltas, a finish chunk per choice, [usage], [DONE]."""
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return sse(ChatCompletionChunk(choices=choices, usage=usage, **meta).model_dump(exclude_none=True))

    deltas: Iterator[Delta] = handle.deltas()
    try:
        for i in range(n):
            yield chunk([ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))])
        while True:
            # The blocking read runs in a thread; if the client goes away, Starlette cancels this
            # generator and the finally below cancels the generation.
            d = await asyncio.to_thread(next, deltas, None)
            if d is None:
                break
            if d.text or d.logprob is not None:
                lp = logprobs_out([d.logprob]) if d.logprob is not None else None
                yield chunk([ChunkChoice(index=d.sample_index, delta=ChunkDelta(content=d.text), logprobs=lp)])
            if d.finish_reason is not None:
                yield chunk([ChunkChoice(index=d.sample_index, delta=ChunkDelta(), finish_reason=d.finish_reason)])
            if await request.is_disconnected():
                handle.cancel()
                return
        if include_usage:
            yield chunk([], Usage(prompt_tokens=handle.prompt_tokens, completion_tokens=handle.completion_tokens,
                                  total_tokens=handle.prompt_tokens + handle.completion_tokens))
        yield "data: [DONE]\n\n"
    except Exception as e:  # the 200 is already sent: report in-band, as OpenAI does
        yield sse(error_body(str(e), "server_error"))
    finally:
        if not handle.done.is_set():
            handle.cancel()


def main(model_paths: list[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load each checkpoint (model id = its directory's name) and serve them until interrupted."""
    import uvicorn

    from opengpt4.engine.generate import inference_dtype
    from opengpt4.model.checkpoint import load_checkpoint, resolve_model

    models: dict[str, Engine] = {}
    for path in model_paths:
        model, tokenizer = load_checkpoint(path, dtype=inference_dtype("auto"))
        models[Path(resolve_model(path)).name] = Engine(model, tokenizer)
    uvicorn.run(create_app(models), host=host, port=port, log_level="info")

