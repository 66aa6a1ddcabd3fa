"""The request pipeline without HTTP: authenticate -> resolve -> admit -> run -> account.

`app.py` parses a request, calls these steps and formats what they return; everything between
is here, so tests drive it directly. Each step raises a typed error (errors.py) the moment it
learns that a request cannot go on, and nothing is charged or queued for a request that fails
an earlier step:

- authenticate: the bearer key -> its record (InvalidAPIKey) and its rate-limit headers;
- resolve: a model name, alias or snapshot -> the served model (ModelNotFound);
- admit: a key may have only so many requests queued or running per model (RateLimited),
  the scheduler checks the context (ContextLengthExceeded), the key is charged `prompt +
  max_tokens * n` tokens, or a bounded default without max_tokens (RateLimited), the request is
  queued (QueueFull);
- collect: the model's scheduler thread generates; `collect` gathers a handle's choices;
- account: one ledger row and the token metrics per request, once its response is done (or
  its client gone), and the rate limiter trued up with the tokens really used.

A `Ticket` follows each request through the steps and collects what its ledger row needs.
Each served snapshot has one `Scheduler`, one background thread that owns the model's KV cache.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from opengpt4.engine.generate import Engine, Prompt, TokenLogprob
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import RequestHandle, Scheduler
from opengpt4.errors import ConfigError, InvalidAPIKey, InvalidRequest, ModelNotFound, RateLimited
from opengpt4.serve.keys import ApiKey, KeyStore
from opengpt4.serve.ledger import UsageLedger
from opengpt4.serve.metrics import Metrics
from opengpt4.serve.ratelimit import RateLimiter
from opengpt4.serve.registry import Registry, ServedModel

# Without max_tokens a request may run to the end of the context; it reserves this many tokens
# per choice against its key's TPM limit, and is trued up with what it used once done.
RESERVED_WITHOUT_MAX_TOKENS = 512
STALL_S = 60.0  # a scheduler with work that has not started a step for this long is stuck


def key_queue_cap(scheduler: Scheduler) -> int:
    """Requests one key may have queued or running on one model: a full batch plus a quarter of
    the queue, so no key can fill the queue that every key shares."""
    return scheduler.max_batch + scheduler.max_queue // 4


@dataclass
class Served:
    """One registry entry, ready to answer: its engine (weights may be shared with other
    entries) and its own scheduler, sized to the entry's context."""

    card: ServedModel
    engine: Engine
    scheduler: Scheduler
    accepts_images: bool
    score_lock: threading.Lock  # echo scoring runs the model outside the scheduler: one at a time

    @classmethod
    def build(cls, card: ServedModel, engine: Engine) -> Served:
        model_context = engine.config.max_seq_len
        if card.context_length is not None and card.context_length > model_context:
            raise ConfigError(f"{card.snapshot}: context_length {card.context_length} exceeds the model's own "
                              f"{model_context} tokens")
        has_vision = engine.tokenizer.image_id is not None and engine.tokenizer.tokens_per_image > 0
        if card.accepts_images and not has_vision:
            raise ConfigError(f"{card.snapshot}: accepts_images is true but the model has no image input")
        scheduler = Scheduler(engine, max_batch=card.max_batch, max_context=card.context_length)
        accepts = has_vision if card.accepts_images is None else card.accepts_images
        return cls(card, engine, scheduler, accepts, threading.Lock())

    @functools.cached_property
    def longest_token_chars(self) -> int:
        """The longest token's text: more characters than context * this cannot fit the context.
        (A vocabulary entry is at least as long as the text it decodes to: byte-level BPE spells
        each byte as one character.)"""
        return max(len(t) for t in self.engine.tokenizer.backend.get_vocab())


@dataclass
class Ticket:
    """What one request has learned on its way through the gateway: its ledger row's fields and
    the rate-limit headers its response carries."""

    key: ApiKey | None = None
    model: ServedModel | None = None
    handles: list[RequestHandle] = field(default_factory=list)  # token counts read at the end (streams)
    scored_tokens: int = 0  # echo scoring: prompt tokens that never went through a scheduler
    reserved: int = 0  # tokens reserved against the key's TPM limit, released when it is accounted
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None  # the response's id, in the ledger row
    disconnected: bool = False  # the client left before its response was complete

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens so far; final once every handle is done."""
        prompt = self.scored_tokens + sum(h.prompt_tokens for h in self.handles)
        return prompt, sum(h.completion_tokens for h in self.handles)


@dataclass
class Output:
    """One finished choice."""

    text: str
    finish_reason: str
    logprobs: list[TokenLogprob]


class Gateway:
    def __init__(self, models: dict[str, Engine], *, registry: Registry | None = None, keys: KeyStore | None = None,
                 ledger: UsageLedger | None = None, rate_limit_storage: str = "memory://") -> None:
        """models: engines by name. Without a registry each name is served as its own snapshot; with
        one, `models` maps each entry's `path` to its engine (entries sharing a path share weights).
        keys: None serves without authentication (--no-auth). The usage ledger defaults to the keys'
        database."""
        registry = registry or Registry([ServedModel(name, name) for name in models])
        self.served = {card.snapshot: Served.build(card, models[card.path]) for card in registry.models}
        self.names = {name: self.served[card.snapshot] for name, card in registry.names().items()}
        self.keys = keys
        self.ledger = ledger if ledger is not None else (UsageLedger(keys.db) if keys is not None else None)
        self.limiter = RateLimiter(rate_limit_storage)
        self.metrics = Metrics()
        for snapshot, served in self.served.items():
            self.metrics.watch_scheduler(snapshot, served.scheduler)
        self.created = int(time.time())
        self._in_flight: dict[tuple[str, int], list[RequestHandle]] = defaultdict(list)  # (snapshot, key id)
        self._in_flight_lock = threading.Lock()

    def start(self) -> None:
        for served in self.served.values():
            served.scheduler.start()

    def stop(self) -> None:
        for served in self.served.values():
            served.scheduler.stop()

    def health(self) -> dict[str, str]:
        """What is wrong with each served snapshot that cannot serve (empty: all can)."""
        problems, now = {}, time.monotonic()
        for snapshot, served in self.served.items():
            s = served.scheduler
            if not s.alive:
                problems[snapshot] = "the scheduler is not running" + (f" ({type(s.died).__name__}: {s.died})"
                                                                       if s.died else "")
            elif not s.idle.is_set() and now - s.heartbeat > STALL_S:
                problems[snapshot] = f"the scheduler has not started a step for {now - s.heartbeat:.0f} s"
        return problems

    # --- the steps, in order -------------------------------------------------------------------
    def authenticate(self, api_key: str | None, ticket: Ticket) -> None:
        """Puts the key's record and its rate-limit headers on the ticket. Without a key store
        (--no-auth) every request passes."""
        if self.keys is None:
            return
        if not api_key:
            raise InvalidAPIKey("You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        key = self.keys.verify(api_key)
        if key is None:  # name the key without echoing it: it may be someone's real key, mistyped
            shown = f"{api_key[:7]}{'*' * 8}{api_key[-4:]}" if len(api_key) > 12 else "*" * len(api_key)
            raise InvalidAPIKey(f"Incorrect API key provided: {shown}. Create one with `opengpt4 keys create`.")
        ticket.key, ticket.headers = key, self.limiter.headers(key)

    def resolve(self, name: str, ticket: Ticket) -> Served:
        served = self.names.get(name)
        if served is None:
            raise ModelNotFound(name)
        ticket.model = served.card
        return served

    def admit(self, served: Served, prompts: list[Prompt], params: SamplingParams, ticket: Ticket, *,
              max_tokens_given: bool = True) -> list[RequestHandle]:
        """Queue each prompt (the scheduler checks its context, then the key is charged, then it
        is queued), all or nothing: a later prompt's refusal cancels the earlier ones.
        max_tokens_given False: params.max_tokens is the context's rest, not the client's bound,
        so only RESERVED_WITHOUT_MAX_TOKENS per choice is reserved."""
        reserve = params.max_tokens if max_tokens_given else min(params.max_tokens, RESERVED_WITHOUT_MAX_TOKENS)
        handles: list[RequestHandle] = []
        with self._in_flight_lock:  # check and claim together: concurrent requests of one key see each other
            in_flight = self._claim(served, ticket, len(prompts))
            try:
                for prompt in prompts:
                    cost = len(prompt.ids) + reserve * params.n  # the budget it may use, as OpenAI counts
                    handles.append(served.scheduler.submit(prompt, params,
                                                           functools.partial(self._charge, ticket, cost)))
            except Exception:
                for handle in handles:
                    handle.cancel()
                raise
            in_flight += handles
        ticket.handles = handles
        return handles

    def _claim(self, served: Served, ticket: Ticket, count: int) -> list[RequestHandle]:
        """The key's requests still queued or running on this model, refusing `count` more past
        its cap (a 429: they can pass once some finish)."""
        if ticket.key is None:
            return []
        in_flight = self._in_flight[(served.card.snapshot, ticket.key.id)]
        in_flight[:] = [h for h in in_flight if not h.done.is_set()]
        cap = key_queue_cap(served.scheduler)
        if count > cap:
            raise InvalidRequest(f"{count} prompts in one request; at most {cap} can be queued at once",
                                 param="prompt")
        if len(in_flight) + count > cap:
            ticket.headers = ticket.headers | {"retry-after": "1"}
            raise RateLimited(f"Too many requests in flight for key {ticket.key.hint} on {served.card.snapshot}: "
                              f"{len(in_flight)} queued or running, at most {cap} per key. Retry when some finish.",
                              kind="requests", retry_after=1, headers=ticket.headers)
        return in_flight

    def admit_scoring(self, served: Served, prompt: Prompt, ticket: Ticket) -> None:
        """echo with max_tokens 0: the prompt alone must fit and is charged as its own tokens; it is
        one forward pass (echo_logprobs), not a scheduler slot."""
        served.engine.check_prompt(prompt, None, served.scheduler.max_context)
        self._charge(ticket, len(prompt.ids))
        ticket.scored_tokens += len(prompt.ids)

    @staticmethod
    async def collect(handle: RequestHandle, n: int) -> list[Output]:
        """The request's n choices, once it is done (or cancelled: what it produced until then).
        Awaited on the event loop: a waiting request holds no worker thread."""
        out = [Output("", "length", []) for _ in range(n)]
        async for d in handle.adeltas():
            choice = out[d.sample_index]
            choice.text += d.text
            if d.logprob is not None:
                choice.logprobs.append(d.logprob)
            if d.finish_reason is not None:
                choice.finish_reason = d.finish_reason
        return out

    def account(self, ticket: Ticket, endpoint: str, status: int, seconds: float) -> None:
        """The request's ledger row and token metrics, once its response is done (a stream's last
        byte, a client gone, an early error): every request gets exactly one row, with the tokens
        generated until then, and the key's rate limiter is trued up with the same count."""
        prompt, completion = ticket.tokens()
        model = ticket.model.snapshot if ticket.model else None
        if model:
            self.metrics.count_tokens(model, prompt, completion)
        if ticket.key is not None and (ticket.reserved or prompt + completion):
            self.limiter.settle(ticket.key, ticket.reserved, prompt + completion)
        if self.ledger is not None:
            cost = ticket.model.cost(prompt, completion) if ticket.model else 0.0
            self.ledger.record(key_id=ticket.key.id if ticket.key else None, endpoint=endpoint, model=model,
                               prompt_tokens=prompt, completion_tokens=completion, cost=cost,
                               latency_ms=seconds * 1000, status=499 if ticket.disconnected else status,
                               request_id=ticket.request_id)

    def _charge(self, ticket: Ticket, tokens: int) -> None:
        if ticket.key is None:
            return
        try:
            ticket.headers = self.limiter.charge(ticket.key, tokens)
        except RateLimited as e:
            ticket.headers = e.headers  # the refusal carries the windows as they stand, and retry-after
            raise
        ticket.reserved += tokens
