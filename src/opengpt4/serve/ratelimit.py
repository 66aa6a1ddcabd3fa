"""Per-key request- and token-per-minute limits, counted the way OpenAI counts them.

A request costs 1 request and `prompt_tokens + max_tokens` tokens, charged when it is admitted
(the completion's length is not known yet, so the budget it *may* use is reserved). The
`limits` package keeps the counters: a sliding-window counter (O(1) per hit, unlike a moving
window that stores one entry per token), in memory by default or in Redis (`redis://…`) so
several server processes share one budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import limits
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from opengpt4.errors import RateLimited
from opengpt4.serve.keys import ApiKey


def _reset(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s'."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


@dataclass
class _Budget:
    item: limits.RateLimitItem
    kind: str  # "requests" | "tokens"


class RateLimiter:
    def __init__(self, storage_uri: str = "memory://") -> None:
        self.limiter = SlidingWindowCounterRateLimiter(storage_from_string(storage_uri))

    def _budgets(self, key: ApiKey) -> list[_Budget]:
        return [_Budget(limits.RateLimitItemPerMinute(key.rpm), "requests"),
                _Budget(limits.RateLimitItemPerMinute(key.tpm), "tokens")]

    def headers(self, key: ApiKey) -> dict[str, str]:
        """The x-ratelimit-* headers for the key's current windows (charges nothing)."""
        out, now = {}, time.time()
        for b in self._budgets(key):
            stats = self.limiter.get_window_stats(b.item, str(key.id), b.kind)
            out[f"x-ratelimit-limit-{b.kind}"] = str(b.item.amount)
            out[f"x-ratelimit-remaining-{b.kind}"] = str(max(stats.remaining, 0))
            out[f"x-ratelimit-reset-{b.kind}"] = _reset(stats.reset_time - now)
        return out

    def charge(self, key: ApiKey, tokens: int) -> dict[str, str]:
        """Charge one request of `tokens`; raises RateLimited (charging nothing) when over either limit."""
        requests_b, tokens_b = self._budgets(key)
        if tokens > key.tpm:  # can never fit, retrying does not help
            raise RateLimited(f"Request too large for key {key.hint}: limit {key.tpm} tokens per minute, "
                              f"requested {tokens} (prompt + max_tokens). Lower max_tokens or shorten the "
                              f"messages.", kind="tokens", retry_after=None, headers=self.headers(key))
        for b, cost in ((requests_b, 1), (tokens_b, tokens)):
            if not self.limiter.test(b.item, str(key.id), b.kind, cost=cost):
                headers = self.headers(key)
                wait = self.limiter.get_window_stats(b.item, str(key.id), b.kind).reset_time - time.time()
                retry = max(1, math.ceil(wait))
                used = b.item.amount - int(headers[f"x-ratelimit-remaining-{b.kind}"])
                raise RateLimited(f"Rate limit reached for key {key.hint} on {b.kind} per min (RPM/TPM): "
                                  f"Limit {b.item.amount}, Used {used}, Requested {cost}. "
                                  f"Please try again in {retry}s.", kind=b.kind, retry_after=retry,
                                  headers=headers | {"retry-after": str(retry)})
        self.limiter.hit(requests_b.item, str(key.id), "requests")
        self.limiter.hit(tokens_b.item, str(key.id), "tokens", cost=tokens)
        return self.headers(key)
