"""Prometheus metrics, one registry per app (not the global one, so several apps in one process
do not collide): requests and latency per endpoint, time to first token, tokens per model,
and, read from each model's scheduler at scrape time, its queue depth, running requests, KV cache
(blocks by state and the share of the pool's bound in use) and prefix cache (prompt tokens
admitted and those served from the cache), under the names vLLM's metrics use where they overlap."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def endpoint_label(path: str) -> str:
    """One label value per route, not one per model name or UI file."""
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path.startswith("/v1/") or path in ("/healthz", "/metrics") else "/ui"


class Metrics:
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

        self.caches = _CacheCollector()
        self.registry.register(self.caches)

    def watch_scheduler(self, model: str, scheduler: Any) -> None:
        # Read at scrape time: no bookkeeping in the scheduler's hot loop.
        self.queue_depth.labels(model).set_function(lambda: len(scheduler.waiting))
        self.running.labels(model).set_function(lambda: scheduler.num_decoding + len(scheduler.prefilling))
        self.caches.schedulers[model] = scheduler

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = endpoint_label(path)
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    """Each scheduler's KV block pool and prefix-cache counters, read when /metrics is scraped."""

    def __init__(self) -> None:
        self.schedulers: dict[str, Any] = {}

    def collect(self):
        usage = GaugeMetricFamily("opengpt4_kv_cache_usage_ratio", "KV cache blocks held by requests / the pool's "
                                  "bound (0..1)", labels=["model"])
        blocks = GaugeMetricFamily("opengpt4_kv_cache_blocks", "KV cache blocks: in_use (held by requests), cached "
                                   "(named in the prefix cache, in use or not), allocated (grown so far), max (the bound)",
                                   labels=["model", "state"])
        queries = CounterMetricFamily("opengpt4_prefix_cache_queries", "prompt tokens admitted", labels=["model"])
        hits = CounterMetricFamily("opengpt4_prefix_cache_hits", "prompt tokens whose keys and values came from "
                                   "the prefix cache", labels=["model"])
        for model, scheduler in self.schedulers.items():
            stats = scheduler.pool.stats()
            usage.add_metric([model], stats["in_use"] / stats["max_blocks"])
            for state, key in (("in_use", "in_use"), ("cached", "cached"), ("allocated", "blocks"), ("max", "max_blocks")):
                blocks.add_metric([model, state], stats[key])
            queries.add_metric([model], scheduler.prompt_tokens)
            hits.add_metric([model], scheduler.prefix_hit_tokens)
        yield from (usage, blocks, queries, hits)
