"""Building responses: collected choices, logprobs in both API shapes, and the SSE streams."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from opengpt4.engine.generate import Delta, Engine, Prompt, TokenLogprob
from opengpt4.engine.scheduler import RequestHandle
from opengpt4.serve.gateway import Output
from opengpt4.serve.metrics import Metrics
from opengpt4.serve.schemas import (
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    ResponseMessage,
    TextChoice,
    TextCompletion,
    TextLogprobs,
    TokenLogprobOut,
    TopLogprob,
    Usage,
    error_body,
)
from opengpt4.serve.tools import ToolCallReader


def usage_of(*handles: RequestHandle) -> Usage:
    prompt, completion = sum(h.prompt_tokens for h in handles), sum(h.completion_tokens for h in handles)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def logprobs_out(lps: list[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        TokenLogprobOut(token=lp.token, logprob=lp.logprob, bytes=list(lp.token.encode()),
                        top_logprobs=[TopLogprob(token=t, logprob=p, bytes=list(t.encode())) for _, t, p in lp.top])
        for lp in lps])


def chat_choices(outputs: list[Output], logprobs: bool, calls: bool = False) -> list[Choice]:
    """calls: the replies may be tool calls (serve/tools.py), read into `tool_calls`."""
    choices = []
    for i, o in enumerate(outputs):
        message, finish_reason = ResponseMessage(content=o.text), o.finish_reason
        if calls:
            reader = ToolCallReader()
            reader.feed(o.text)
            _, finish_reason = reader.finish(o.finish_reason)
            message = ResponseMessage(content=reader.content, tool_calls=reader.calls or None)
        choices.append(Choice(index=i, message=message, finish_reason=finish_reason,
                              logprobs=logprobs_out(o.logprobs) if logprobs else None))
    return choices


def echo_logprobs(engine: Engine, lock: threading.Lock, text: str, prompt: Prompt, top: int) -> TextLogprobs:
    """The prompt's own tokens with their logprobs, as the legacy API echoes them. A BOS the
    tokenizer prepends conditions the first text token but is not listed (it is not in the text).
    `lock`: scoring runs the model outside its scheduler, one request at a time."""
    ids, offsets = engine.tokenizer.encode_with_offsets(text)
    bos = len(prompt.ids) - len(ids)
    with lock:
        scored = engine.prompt_logprobs(prompt.ids, max(top, 1))
    out = TextLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for k, (token, (start, _)) in enumerate(zip(ids, offsets, strict=True)):
        position = bos + k
        out.text_offset.append(start)
        if position == 0:  # nothing before it to condition on
            out.tokens.append(engine.tokenizer.decode([token]))
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        lp = scored[position - 1]
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({t: v for _, t, v in lp.top[:top]})
    return out


def text_choices(outputs: list[Output], first_index: int, echoed: str, echo: TextLogprobs | None,
                 top: int | None) -> list[TextChoice]:
    """Legacy completion choices: `echoed` (the prompt when echo is on, else "") before each text;
    with `top`, each choice's logprobs follow the echoed prompt's."""
    return [TextChoice(index=first_index + j, text=echoed + o.text, finish_reason=o.finish_reason,
                       logprobs=None if top is None else join_logprobs(echo, o.logprobs, len(echoed), top))
            for j, o in enumerate(outputs)]


def join_logprobs(echo: TextLogprobs | None, generated: list[TokenLogprob], offset: int, top: int) -> TextLogprobs:
    out = echo.model_copy(deep=True) if echo else TextLogprobs(tokens=[], token_logprobs=[], top_logprobs=[],
                                                               text_offset=[])
    for lp in generated:
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({t: v for _, t, v in lp.top[:top]})
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def read_deltas(handle: RequestHandle, request: Request) -> AsyncIterator[Delta]:
    """A handle's deltas on the event loop; stops early if the client went away."""
    async for d in handle.adeltas():
        yield d
        if await request.is_disconnected():
            handle.cancel()
            return


async def chat_chunks(handle: RequestHandle, n: int, meta: dict[str, Any], include_usage: bool,
                      request: Request, metrics: Metrics, calls: bool = False) -> AsyncIterator[str]:
    """Data-only SSE: role chunks, content or tool-call deltas, a finish chunk per choice, [usage],
    [DONE]. calls: the replies may be tool calls (serve/tools.py), streamed as OpenAI does."""
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return sse(ChatCompletionChunk(choices=choices, usage=usage, **meta).model_dump(exclude_none=True))

    start, first = time.perf_counter(), True
    readers = [ToolCallReader() for _ in range(n)] if calls else None
    try:
        for i in range(n):
            yield chunk([ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=None if calls else ""))])
        # If the client goes away, Starlette cancels this generator and the finally below
        # cancels the generation.
        async for d in read_deltas(handle, request):
            if first and d.text:
                metrics.ttft.labels(meta["model"]).observe(time.perf_counter() - start)
                first = False
            text, tool_calls, finish_reason = d.text, [], d.finish_reason
            if readers is not None:
                text, tool_calls = readers[d.sample_index].feed(d.text)
                if finish_reason is not None:
                    held, finish_reason = readers[d.sample_index].finish(finish_reason)
                    text += held
            if text or tool_calls or d.logprob is not None:
                lp = logprobs_out([d.logprob]) if d.logprob is not None else None
                delta = ChunkDelta(content=text if text or readers is None else None, tool_calls=tool_calls or None)
                yield chunk([ChunkChoice(index=d.sample_index, delta=delta, logprobs=lp)])
            if finish_reason is not None:
                yield chunk([ChunkChoice(index=d.sample_index, delta=ChunkDelta(), finish_reason=finish_reason)])
        if handle.cancelled:
            return
        if include_usage:
            yield chunk([], usage_of(handle))
        yield "data: [DONE]\n\n"
    except Exception as e:  # the 200 is already sent: report in-band, as OpenAI does
        yield sse(error_body(str(e), "server_error"))
    finally:
        if not handle.done.is_set():
            handle.cancel()


async def text_chunks(handle: RequestHandle, n: int, meta: dict[str, Any], request: Request,
                      include_usage: bool) -> AsyncIterator[str]:
    """The legacy completions stream: text deltas per choice, then [usage], [DONE]."""
    def chunk(choices: list[TextChoice], usage: Usage | None = None) -> str:
        return sse(TextCompletion(choices=choices, usage=usage, **meta).model_dump(exclude_none=True))

    offsets = [0] * n
    try:
        async for d in read_deltas(handle, request):
            lp = join_logprobs(None, [d.logprob], offsets[d.sample_index], len(d.logprob.top)) if d.logprob else None
            offsets[d.sample_index] += len(d.text)
            if d.text or d.finish_reason is not None:
                yield chunk([TextChoice(index=d.sample_index, text=d.text, finish_reason=d.finish_reason, logprobs=lp)])
        if handle.cancelled:
            return
        if include_usage:
            yield chunk([], usage_of(handle))
        yield "data: [DONE]\n\n"
    except Exception as e:
        yield sse(error_body(str(e), "server_error"))
    finally:
        if not handle.done.is_set():
            handle.cancel()
