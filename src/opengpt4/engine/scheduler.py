"""Continuous batching: many requests share one running batch and join or leave it at token boundaries.

Every step is ONE forward over a flat batch of tokens: one for each decoding row, then chunks of
the prompts being prefilled (`prefill_chunk` prompt tokens per step in all, oldest prompt first),
so 64 arriving prompts are prefilled together instead of one forward each, and a long prompt
costs the decoding rows one chunk of latency per step, never the whole prompt.

Keys and values live in a paged pool (engine/kv_cache.py): blocks are taken as tokens arrive and
returned when a row ends, so memory follows the tokens actually live, not slots × context. A
request is admitted when rows for its `n` choices are free and the pool can hold its worst case
(prompt + max_tokens per choice, less its prefix-cache hits): the pool never runs dry mid-request,
and a request that does not fit yet waits in line. Prompts sharing leading blocks with one seen
before (a system prompt) reuse those blocks. `n` samples share one prefill: after it they share
the prompt's full blocks and each copies its partial last one.

Sampling, stop handling and text deltas are Engine's own (`Engine.step_row`, `IncrementalDecoder`),
so a greedy request's output equals `Engine.generate` on its prompt alone.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from opengpt4.engine.generate import Delta, Engine, Prompt, Row
from opengpt4.engine.kv_cache import BlockPool, PagedStep, Sequence, block_names, worst_case_blocks
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import ConfigError, InvalidRequest, QueueFull, Unavailable


class RequestHandle:
    """The caller's side of one request: its deltas as they are produced, and a way to stop it."""

    def __init__(self, prompt_tokens: int, n: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0  # counted as generated: a request cut short is billed what it produced
        self._deltas: queue.Queue[Delta | BaseException | None] = queue.Queue()
        self._open = n  # choices still generating
        self._cancelled = threading.Event()
        self.done = threading.Event()
        self._notify: Callable[[], None] | None = None  # wakes an asyncio reader (adeltas)

    def deltas(self) -> Iterator[Delta]:
        """Blocks for each delta; ends when every choice finished or the request was cancelled.
        An error raised while serving the request is re-raised here."""
        while (item := self._deltas.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def adeltas(self) -> AsyncIterator[Delta]:
        """The same deltas for asyncio code. The scheduler thread wakes the event loop directly
        (call_soon_threadsafe) instead of each wait occupying a worker thread: with 16 streams
        that is hundreds of thread hops a second fighting the decode loop for the GIL."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def notify() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                pass

        self._notify = notify
        while True:
            try:
                item = self._deltas.get_nowait()
            except queue.Empty:
                ready.clear()
                if self._deltas.empty():  # checked after clear(): a put in between still wakes us
                    await ready.wait()
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: Delta | BaseException | None) -> None:
        if isinstance(item, Delta):  # one delta per generated token
            self.completion_tokens += 1
        self._deltas.put(item)
        if self._notify is not None:
            self._notify()

    def cancel(self) -> None:
        """Stop generating (a client went away): the rows leave the batch at the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _close(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            if error is not None:
                self._put(error)
            self._put(None)
            self.done.set()


# The KV pool's default bound, in full contexts: as many as the cache preallocated before paging
# held (16 rows), so requests without max_tokens (each reserves the rest of the context) are
# admitted as many at once as before, while short ones fill up to max_batch rows. It bounds the
# memory, it does not take it: SmolLM2 in float32 reaches its 6 GB only with 131k tokens live.
FULL_CONTEXTS = 16
# The prefix cache's unreferenced blocks: past this many tokens the pool reuses the least recently
# used rather than grow, and when nothing runs it shrinks back to them (a long system prompt; 47 MB
# for SmolLM2 in float32), so a burst's memory does not stay.
IDLE_CACHED_TOKENS = 1024


@dataclass
class _Request:
    prompt: Prompt
    params: SamplingParams
    handle: RequestHandle
    seq: Sequence | None = None  # the prompt's blocks, from admission until its samples take them
    names: list[bytes] = field(default_factory=list)  # prefix-cache names of the prompt's full blocks
    budget: int = 0  # blocks it may still allocate: reserved at admission, so the pool never runs dry
    rows: list[Row] = field(default_factory=list)


@dataclass
class _Decoding:
    request: _Request
    row: Row
    seq: Sequence
    next_id: int  # sampled, not yet in the cache: the input of the next forward


class Scheduler:
    def __init__(self, engine: Engine, *, max_batch: int = 64, max_queue: int = 64, prefill_chunk: int = 512,
                 max_context: int | None = None, kv_tokens: int | None = None, block_size: int = 16) -> None:
        """max_batch: decoding rows at once (a row costs no memory until its tokens arrive).
        prefill_chunk: prompt tokens per step, shared by the prompts being prefilled (first come
        first served). A CPU's prefill is compute-bound from a few hundred tokens a forward: a
        larger budget only delays every prompt's first token to the end of a longer step (SmolLM2,
        64 prompts: TTFT p50 17.6 s at 2048 on one busy thread). kv_tokens: the KV pool's bound in
        tokens (default: FULL_CONTEXTS full contexts, or max_batch if fewer). No request gets more context
        than it holds."""
        if engine.config.smear_keys:  # PagedStep.attend reads keys block by block, unsmeared
            raise ConfigError(f"{engine.config.name}: the server's paged cache does not smear keys (smear_keys); "
                              "such a model decodes with Engine.generate only")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.max_context = min(max_context or engine.config.max_seq_len, engine.config.max_seq_len)
        kv_tokens = kv_tokens or min(max_batch, FULL_CONTEXTS) * self.max_context
        self.max_context = min(self.max_context, kv_tokens)
        self.pool = BlockPool(engine.config, -(-kv_tokens // block_size), block_size=block_size,
                              device=engine.device, dtype=engine.dtype, cached_blocks=IDLE_CACHED_TOKENS // block_size)
        self.decoding: list[_Decoding] = []
        self.prefilling: list[_Request] = []
        self.reserved = 0  # rows promised to admitted requests: n each, from admission to their end
        self.outstanding = 0  # blocks promised to admitted requests and not yet allocated (their budgets)
        self.waiting: deque[_Request] = deque()
        self.stop_ids = set(self.tokenizer.stop_ids)
        self._lock = threading.Lock()  # guards `waiting` between submitting threads and the loop
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self.idle = threading.Event()  # set while nothing waits, prefills or decodes (background mode)
        self.idle.set()
        self._thread: threading.Thread | None = None
        # Prefix-cache counters for /metrics: prompt tokens admitted, and those whose keys and values
        # came from the cache instead of a forward (vLLM's prefix_cache_queries / _hits).
        self.prompt_tokens = 0
        self.prefix_hit_tokens = 0
        self.heartbeat = time.monotonic()  # when the loop last started a step: a watchdog sees a stall
        self.died: BaseException | None = None  # what ended the loop's thread, if it did not stop cleanly

    @property
    def num_decoding(self) -> int:
        return len(self.decoding)

    # --- the callers' side ---------------------------------------------------------------
    def submit(self, prompt: Prompt | list[int], params: SamplingParams,
               charge: Callable[[], None] | None = None) -> RequestHandle:
        """Queue a request. Raises ContextLengthExceeded or InvalidRequest for one that can never
        run here, QueueFull when too many wait. `charge` is called once the request is known to
        fit and before it is queued: a server charges rate limits there, so a request too long
        costs nothing and one that `charge` refuses (by raising) is never queued."""
        prompt = prompt if isinstance(prompt, Prompt) else Prompt(list(prompt))
        if self._stopping.is_set() or (self._thread is not None and not self._thread.is_alive()):
            raise Unavailable("the model is not serving: its scheduler has stopped", "model_unavailable")
        self.engine.check_prompt(prompt, params.max_tokens, self.max_context)  # a server may serve less context
        if params.n > self.max_batch:
            raise InvalidRequest(f"n must be <= {self.max_batch} (the batch size), got {params.n}", param="n")
        if worst_case_blocks(len(prompt.ids), params.max_tokens, params.n, self.pool.block_size) > self.pool.max_blocks:
            raise InvalidRequest(f"{params.n} choices of up to {len(prompt.ids) + params.max_tokens} tokens do not "
                                 f"fit this server's KV cache ({self.pool.max_blocks * self.pool.block_size} tokens); "
                                 "ask for fewer choices or tokens", param="n")
        if charge is not None:
            charge()
        request = _Request(prompt, params, RequestHandle(len(prompt.ids), params.n))
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting; retry later")
            self.idle.clear()
            self.waiting.append(request)
        self._wakeup.set()
        return request.handle

    def start(self) -> None:
        """Run the loop in a background thread."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run_forever, name="opengpt4-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop after its current step; every request still here ends with Unavailable
        (none waits forever on a loop that is gone)."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
        self._fail_all(Unavailable("the server is shutting down", "model_unavailable"))

    @property
    def alive(self) -> bool:
        """Whether the background loop is running (a server's /healthz)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def run_forever(self) -> None:
        try:
            while not self._stopping.is_set():
                self.heartbeat = time.monotonic()
                try:
                    busy = self.step()
                except Exception as e:  # a bug or an exhausted device: fail what is running, keep serving
                    self._fail_all(e)
                    busy = False
                if not busy:
                    with self._lock:  # under the lock: a submit in between keeps it clear
                        if not self.waiting:
                            self.idle.set()
                    self._wakeup.wait()
                    self._wakeup.clear()
        except BaseException as e:  # the thread is ending abnormally: say so, and release every waiter
            self.died = e
            self._fail_all(Unavailable(f"the scheduler stopped: {type(e).__name__}: {e}", "model_unavailable"))
            raise

    # --- one step ------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> bool:
        """Admit, then ONE forward: a token for every decoding row and the next chunk of the
        prompts being prefilled. Returns whether there is anything left to do."""
        self._drop_cancelled()
        self._admit()
        decoding, chunks = list(self.decoding), self._plan_chunks()
        if decoding or chunks:
            for entry in decoding:
                self._grow(entry.request, entry.seq, 1)
            logits, chunks = self._forward(decoding, chunks)
            finished = [entry for i, entry in enumerate(decoding) if self._sample(entry, logits[i])]
            for entry in finished:
                self._remove_decoding(entry)
            completed = [request for request, ids in chunks if request.seq.length == len(request.prompt.ids)]
            for request, row_logits in zip(completed, logits[len(decoding):], strict=True):
                self._start_decoding(request, row_logits)
        if not (self.decoding or self.prefilling):
            self.pool.trim(IDLE_CACHED_TOKENS // self.pool.block_size)
        with self._lock:
            return bool(self.decoding or self.prefilling or self.waiting)

    def _admit(self) -> None:
        """First come, first served: a request waits until rows for its n choices are free and the
        pool can hold its worst case (what is left after its prefix-cache hits)."""
        bs, image_id = self.pool.block_size, self.tokenizer.image_id
        with self._lock:
            while self.waiting and self.reserved + self.waiting[0].params.n <= self.max_batch:
                request = self.waiting[0]
                if request.handle.cancelled:
                    self.waiting.popleft()
                    request.handle._close()
                    continue
                ids, sp = request.prompt.ids, request.params
                # With image-only adapters a request with an image runs other weights from its first token.
                adapted = bool(self.engine.model.image_adapters) and request.prompt.has_images
                request.names = block_names(ids[:-1], bs, stop_at=image_id, adapted=adapted)  # the last token is always computed
                seq = Sequence(self.pool, image_id=image_id, adapted=adapted)
                need = worst_case_blocks(len(ids), sp.max_tokens, sp.n, bs, seq.reuse(ids, request.names))
                if need > self.pool.available - self.outstanding:
                    seq.free()
                    return
                self.waiting.popleft()
                self.prompt_tokens += len(ids)
                self.prefix_hit_tokens += seq.length
                request.seq = seq
                request.budget = need
                self.outstanding += need
                self.reserved += sp.n
                self.prefilling.append(request)

    def _plan_chunks(self) -> list[tuple[_Request, list[int]]]:
        """This step's share of the prompts: `prefill_chunk` tokens in all, the oldest first. Blocks
        that requests ahead computed since a prompt's admission (64 clients sending one system
        prompt at once all miss the cache at first) are taken from the cache, not recomputed."""
        chunks, left, image_id = [], self.prefill_chunk, self.tokenizer.image_id
        for request in self.prefilling:
            if left <= 0:
                break
            hits = request.seq.reuse(request.prompt.ids, request.names)
            request.budget -= hits  # blocks it will not allocate: its worst case shrinks as much
            self.prefix_hit_tokens += hits * self.pool.block_size
            self.outstanding -= hits
            ids, start = request.prompt.ids, request.seq.length
            end = min(start + left, len(ids))
            while 0 < end < len(ids) and ids[end - 1] == image_id and ids[end] == image_id:
                end += 1  # an image's placeholders go through the model together with its pixels
            self._grow(request, request.seq, end - start)
            chunks.append((request, ids[start:end]))
            left -= end - start
        return chunks

    def _forward(self, decoding: list[_Decoding], chunks: list[tuple[_Request, list[int]]]
                 ) -> tuple[Tensor, list[tuple[_Request, list[int]]]]:
        """Logits of every decoding row, then of each chunk that completes its prompt. A forward
        that fails with prompt chunks in it (placeholders without images) is run again one chunk
        at a time: a chunk that fails fails its request only. Returns the logits and the chunks that ran."""
        try:
            return self._run(decoding, chunks), chunks
        except Exception:
            if not chunks:
                raise
        ran = []
        for request, ids in chunks:
            try:
                self._run([], [(request, ids)], commit=False)
                ran.append((request, ids))
            except Exception as e:
                self._release_prefilling(request)
                request.handle._close(e)
        return self._run(decoding, ran), ran  # recomputes the chunks that ran: same slots, same values

    def _run(self, decoding: list[_Decoding], chunks: list[tuple[_Request, list[int]]], commit: bool = True) -> Tensor:
        step = PagedStep(self.pool, [(e.seq, e.next_id) for e in decoding], [(r.seq, ids) for r, ids in chunks])
        d = len(decoding)
        logits_at = step.last[:d] + [step.last[d + i] for i, (r, ids) in enumerate(chunks)
                                     if r.seq.length + len(ids) == len(r.prompt.ids)]
        images = [self._chunk_images(r.prompt, r.seq.length, r.seq.length + len(ids)) for r, ids in chunks]
        images = [i for i in images if i is not None]
        logits = self.engine.model.forward_flat(step, logits_at, torch.cat(images) if images else None, step.adapted)
        if commit:
            step.commit()
        return logits

    def _chunk_images(self, prompt: Prompt, start: int, end: int) -> Tensor | None:
        if not prompt.has_images:
            return None
        per_image = self.engine.config.vision.tokens_per_image
        image_id = self.tokenizer.image_id
        first = prompt.ids[:start].count(image_id) // per_image
        count = prompt.ids[start:end].count(image_id) // per_image
        return prompt.images[first : first + count].to(self.engine.device, self.engine.dtype) if count else None

    def _start_decoding(self, request: _Request, logits: Tensor) -> None:
        """The prompt is in the cache: its n samples decode from it (the first takes its blocks, the
        others share its full blocks), each first token sampled from the prompt's last logits."""
        sp = request.params
        try:  # a row that cannot be made (a seed the generator refuses) fails this request alone
            rows = [self._make_row(request, j) for j in range(sp.n)]
        except Exception as e:
            self._release_prefilling(request)
            request.handle._close(e)
            return
        self.prefilling.remove(request)
        seqs = [request.seq]
        for _ in range(sp.n - 1):
            child, allocated = request.seq.fork()
            request.budget -= allocated
            self.outstanding -= allocated
            seqs.append(child)
        request.seq = None
        entries = [_Decoding(request, row, seq, -1) for row, seq in zip(rows, seqs, strict=True)]
        request.rows += rows
        self.decoding += entries
        for entry in entries:
            if self._sample(entry, logits):
                self._remove_decoding(entry)

    def _make_row(self, request: _Request, j: int) -> Row:
        return self.engine.new_row(0, j, request.params, request.params.max_tokens)

    def _sample(self, entry: _Decoding, logits: Tensor) -> bool:
        """Sample the row's next token and hand it over; returns whether the row leaves the batch."""
        handle = entry.request.handle
        if handle.cancelled:  # a sibling row failed this step, or the client left mid-step
            return True
        try:
            delta = self.engine.step_row(entry.row, logits, self.stop_ids)
        except Exception as e:  # this row's own sampling failed: its request ends, the batch goes on
            handle._close(e)
            handle.cancel()  # its other rows leave as the loop reaches them
            return True
        handle._put(delta)
        entry.next_id = delta.token_id
        return delta.finish_reason is not None

    def _grow(self, request: _Request, seq: Sequence, count: int) -> None:
        allocated = seq.grow(count)
        request.budget -= allocated
        self.outstanding -= allocated

    # --- leaving the batch ---------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for entry in [e for e in self.decoding if e.request.handle.cancelled]:
            self._remove_decoding(entry)
        for request in [r for r in self.prefilling if r.handle.cancelled]:
            self._release_prefilling(request)
            request.handle._close()

    def _remove_decoding(self, entry: _Decoding) -> None:
        """A row left: its blocks go back to the pool (its full ones stay named for the prefix cache)."""
        request = entry.request
        self.decoding.remove(entry)
        entry.seq.free()
        self.reserved -= 1
        request.handle._open -= 1
        if request.handle._open == 0:
            self._end(request)
            request.handle._close()

    def _release_prefilling(self, request: _Request) -> None:
        self.prefilling.remove(request)
        request.seq.free()
        self.reserved -= request.params.n
        self._end(request)

    def _end(self, request: _Request) -> None:
        """Return what is left of the request's block reservation."""
        self.outstanding -= request.budget
        request.budget = 0

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        requests = {id(e.request): e.request for e in self.decoding}
        requests.update({id(r): r for r in self.prefilling + waiting})
        for request in requests.values():
            request.handle._close(error)
        for seq in [e.seq for e in self.decoding] + [r.seq for r in self.prefilling]:
            seq.free()
        self.decoding, self.prefilling = [], []
        self.reserved, self.outstanding = 0, 0
