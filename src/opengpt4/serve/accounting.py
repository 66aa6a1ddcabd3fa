"""Per-request bookkeeping: the usage ledger row, Prometheus metrics and rate-limit headers.

One pure-ASGI middleware wraps every request. Handlers fill in the request's `Accounting`
(found at `request.state.acct`) as they learn things: the key, the resolved model, the prompt
and completion tokens, the rate-limit headers. The middleware adds the headers to whatever
response goes out (success, error or stream) and, when the response is finished — or the
client went away — writes exactly one ledger row and the metrics. Doing it here rather than in
the handlers means no path (an early 400, a 429, a stream cut off mid-way) forgets its row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from opengpt4.serve.keys import ApiKey, UsageLedger
from opengpt4.serve.registry import ServedModel

ACCOUNTED_PATHS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Accounting:
    key: ApiKey | None = None
    model: ServedModel | None = None
    handle: Any = None  # the scheduler's RequestHandle: its token counts are read at the end
    prompt_tokens: int = 0  # for requests that never reached the scheduler (echo scoring)
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def tokens(self) -> tuple[int, int]:
        if self.handle is not None:
            return self.handle.prompt_tokens, self.handle.completion_tokens
        return self.prompt_tokens, self.completion_tokens


class Metrics:
    """A registry per app (not the global one), so several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("opengpt4_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("opengpt4_request_latency_seconds", "request latency, to the last byte",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.ttft = Histogram("opengpt4_time_to_first_token_seconds", "streaming: time to the first content token",
                              ["model"], registry=self.registry,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.tokens = Counter("opengpt4_tokens", "tokens processed", ["model", "kind"], registry=self.registry)
        self.queue_depth = Gauge("opengpt4_queue_depth", "requests waiting for a batch slot", ["model"],
                                 registry=self.registry)
        self.running = Gauge("opengpt4_running_requests", "requests prefilling or decoding", ["model"],
                             registry=self.registry)

    def watch_scheduler(self, model: str, scheduler: Any) -> None:
        # Read at scrape time: no bookkeeping in the scheduler's hot loop.
        self.queue_depth.labels(model).set_function(lambda: len(scheduler.waiting))
        self.running.labels(model).set_function(lambda: scheduler.num_decoding + len(scheduler.prefilling))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class AccountingMiddleware:
    def __init__(self, app: Any, ledger: UsageLedger | None, metrics: Metrics) -> None:
        self.app, self.ledger, self.metrics = app, ledger, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        acct = Accounting()
        scope.setdefault("state", {})["acct"] = acct
        start, status = time.perf_counter(), 500

        async def send_with_headers(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in acct.headers.items()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self._finish(scope["path"], scope["method"], status, acct, time.perf_counter() - start)

    def _finish(self, path: str, method: str, status: int, acct: Accounting, seconds: float) -> None:
        endpoint = path if path.startswith("/v1/") or path in ("/healthz", "/metrics") else "/ui"
        if path.startswith("/v1/models/"):
            endpoint = "/v1/models/{id}"  # one label value, not one per model name
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        if not (method == "POST" and path in ACCOUNTED_PATHS):
            return
        prompt, completion = acct.tokens()
        model = acct.model.snapshot if acct.model else None
        if model:
            self.metrics.tokens.labels(model, "prompt").inc(prompt)
            self.metrics.tokens.labels(model, "completion").inc(completion)
        if self.ledger is not None:
            cost = acct.model.cost(prompt, completion) if acct.model else 0.0
            self.ledger.record(key_id=acct.key.id if acct.key else None, endpoint=path, model=model,
                               prompt_tokens=prompt, completion_tokens=completion, cost=cost,
                               latency_ms=seconds * 1000, status=status)
