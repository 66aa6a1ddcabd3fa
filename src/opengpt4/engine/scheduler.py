"""Continuous batching: many requests share one running batch and join or leave it at token boundaries.

One KV cache is allocated up front with `max_batch` rows ("slots") of `max_context` positions.
The rows that are decoding always occupy slots 0..d-1, so the decode step is ONE forward over
a view of the first d rows, the same shape Engine.stream runs. A finished row is swapped with
the last decoding slot (a copy of one row's filled prefix) instead of compacting the whole
cache. Prompts are prefilled in separate single-row forwards of at most `prefill_chunk`
tokens per step, written into their own slot: a long prompt costs the decoding rows one chunk
of latency per step, never the whole prompt, and decoding rows are never advanced by it.
`n` samples share one prefill: after it, the prompt's slot is copied into n-1 more slots.

Every step: admit waiting requests while slots are free, prefill one chunk of each admitted
prompt, run one decode forward for all decoding rows, drop the rows that finished. Sampling,
stop handling and text deltas are Engine's own (`Engine.step_row`, `IncrementalDecoder`), so a
greedy request's output equals `Engine.generate` on its prompt alone.
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
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import InvalidRequest, QueueFull, Unavailable
from opengpt4.model.transformer import KVCache


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


@dataclass
class _Request:
    prompt: Prompt
    params: SamplingParams
    handle: RequestHandle
    slot: int = -1  # where its prompt is prefilled
    prefilled: int = 0  # prompt tokens already in the cache
    rows: list[Row] = field(default_factory=list)


@dataclass
class _Decoding:
    request: _Request
    row: Row
    next_id: int  # sampled, not yet in the cache: the input of the next decode forward


class Scheduler:
    def __init__(self, engine: Engine, *, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256,
                 max_context: int | None = None) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.max_context = min(max_context or engine.config.max_seq_len, engine.config.max_seq_len)
        self.cache = KVCache(engine.config, max_batch, self.max_context, device=engine.device, dtype=engine.dtype)
        # slots[i]: the decoding row (i < num_decoding), a prefilling request, or None (free).
        self.slots: list[_Decoding | _Request | None] = [None] * max_batch
        self.num_decoding = 0
        self.prefilling: list[_Request] = []
        self.reserved = 0  # slots promised to admitted requests: n each, from admission to their end
        self.waiting: deque[_Request] = deque()
        self.stop_ids = set(self.tokenizer.stop_ids)
        self._lock = threading.Lock()  # guards `waiting` between submitting threads and the loop
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self.idle = threading.Event()  # set while nothing waits, prefills or decodes (background mode)
        self.idle.set()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()  # when the loop last started a step: a watchdog sees a stall
        self.died: BaseException | None = None  # what ended the loop's thread, if it did not stop cleanly

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
        """Admit, prefill a chunk of each admitted prompt, decode one token for every decoding row.
        Returns whether there is anything left to do."""
        self._drop_cancelled()
        self._admit()
        for request in list(self.prefilling):
            self._prefill_chunk(request)
        if self.num_decoding:
            self._decode()
        with self._lock:
            return bool(self.num_decoding or self.prefilling or self.waiting)

    def _admit(self) -> None:
        with self._lock:
            # First come, first served: a request with a large n waits for room rather than being overtaken.
            while self.waiting and self.reserved + self.waiting[0].params.n <= self.max_batch:
                request = self.waiting.popleft()
                if request.handle.cancelled:
                    request.handle._close()
                    continue
                request.slot = self.slots.index(None)
                self.slots[request.slot] = request
                self.reserved += request.params.n
                self.prefilling.append(request)

    def _prefill_chunk(self, request: _Request) -> None:
        ids, start = request.prompt.ids, request.prefilled
        end = min(start + self.prefill_chunk, len(ids))
        image_id = self.tokenizer.image_id
        while 0 < end < len(ids) and ids[end - 1] == image_id and ids[end] == image_id:
            end += 1  # an image's placeholders go through the model together with its pixels
        try:
            logits = self.engine.model(torch.tensor([ids[start:end]], device=self.engine.device),
                                       self._chunk_images(request.prompt, start, end),
                                       cache=self.cache.view(request.slot, request.slot + 1), last_only=True)
        except Exception as e:  # one row's forward (e.g. placeholders without images): this request's failure only
            self._release_prefilling(request)
            request.handle._close(e)
            return
        request.prefilled = end
        if end == len(ids):
            self._start_decoding(request, logits[0, -1])

    def _chunk_images(self, prompt: Prompt, start: int, end: int) -> Tensor | None:
        if prompt.images is None or not len(prompt.images):
            return None
        per_image = self.engine.config.vision.tokens_per_image
        image_id = self.tokenizer.image_id
        first = prompt.ids[:start].count(image_id) // per_image
        count = prompt.ids[start:end].count(image_id) // per_image
        return prompt.images[first : first + count].to(self.engine.device, self.engine.dtype) if count else None

    def _start_decoding(self, request: _Request, logits: Tensor) -> None:
        """The prompt is in its slot: move it to the end of the decoding block, copy it for each of
        the n samples, and sample every sample's first token from the prompt's last logits."""
        sp = request.params
        try:  # before any slot moves: a row that cannot be made (a seed the generator refuses) fails
            rows = [self._make_row(request, j) for j in range(sp.n)]  # this request alone, never the batch
        except Exception as e:
            self._release_prefilling(request)
            request.handle._close(e)
            return
        self.prefilling.remove(request)
        targets = range(self.num_decoding, self.num_decoding + sp.n)
        self._swap(request.slot, targets[0])
        for t in targets[1:]:
            if self.slots[t] is not None:  # another prompt's slot: move it out of the way
                self._swap(t, next(i for i in range(targets[-1] + 1, self.max_batch) if self.slots[i] is None))
            self._copy(targets[0], t)
        for t, row in zip(targets, rows, strict=True):
            request.rows.append(row)
            self.slots[t] = _Decoding(request, row, -1)
        self.num_decoding += sp.n
        for t in reversed(targets):  # reversed: removing a finished row must not move an unsampled one
            self._sample(t, logits)

    def _make_row(self, request: _Request, j: int) -> Row:
        return self.engine.new_row(0, j, request.params, request.params.max_tokens)

    def _decode(self) -> None:
        d = self.num_decoding
        ids = torch.tensor([[self.slots[i].next_id] for i in range(d)], device=self.engine.device)
        logits = self.engine.model(ids, cache=self.cache.view(0, d))[:, -1]
        for i in reversed(range(d)):  # reversed: a removal swaps in a row that was already sampled
            self._sample(i, logits[i])

    def _sample(self, slot: int, logits: Tensor) -> None:
        entry = self.slots[slot]
        handle = entry.request.handle
        if handle.cancelled:  # a sibling row failed this step, or the client left mid-step
            self._remove_decoding(slot)
            return
        try:
            delta = self.engine.step_row(entry.row, logits, self.stop_ids)
        except Exception as e:  # this row's own sampling failed: its request ends, the batch goes on
            handle._close(e)
            handle.cancel()  # its other rows leave as the loop reaches them
            self._remove_decoding(slot)
            return
        entry.request.handle._put(delta)
        if delta.finish_reason is None:
            entry.next_id = delta.token_id
        else:
            self._remove_decoding(slot)

    # --- leaving the batch ---------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for i in reversed(range(self.num_decoding)):
            if self.slots[i].request.handle.cancelled:
                self._remove_decoding(i)
        for request in [r for r in self.prefilling if r.handle.cancelled]:
            self._release_prefilling(request)
            request.handle._close()

    def _remove_decoding(self, slot: int) -> None:
        """Free a decoding row by swapping the last decoding row into its slot."""
        request = self.slots[slot].request
        last = self.num_decoding - 1
        self._swap(slot, last)
        self.slots[last] = None
        self.cache.lengths[last] = 0
        self.num_decoding -= 1
        self.reserved -= 1
        request.handle._open -= 1
        if request.handle._open == 0:
            request.handle._close()

    def _release_prefilling(self, request: _Request) -> None:
        self.prefilling.remove(request)
        self.slots[request.slot] = None
        self.cache.lengths[request.slot] = 0
        self.reserved -= request.params.n

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        requests = {id(e.request): e.request for e in self.slots[: self.num_decoding]}
        requests.update({id(r): r for r in self.prefilling + waiting})
        for request in requests.values():
            request.handle._close(error)
        self.slots = [None] * self.max_batch
        self.cache.lengths.zero_()
        self.num_decoding, self.reserved, self.prefilling = 0, 0, []

    # --- cache slots ---------------------------------------------------------------------
    def _copy(self, src: int, dst: int) -> None:
        n = int(self.cache.lengths[src])  # only the filled prefix: the rest is rewritten before it is read
        self.cache.k[:, dst, :, :n] = self.cache.k[:, src, :, :n]
        self.cache.v[:, dst, :, :n] = self.cache.v[:, src, :, :n]
        self.cache.lengths[dst] = n

    def _swap(self, a: int, b: int) -> None:
        if a == b:
            return
        n = int(max(self.cache.lengths[a], self.cache.lengths[b]))
        for t in (self.cache.k, self.cache.v):
            t[:, [a, b], :, :n] = t[:, [b, a], :, :n]  # the right side is a copy (advanced indexing)
        self.cache.lengths[[a, b]] = self.cache.lengths[[b, a]]
        self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
        for i in (a, b):
            if isinstance(self.slots[i], _Request):
                self.slots[i].slot = i
