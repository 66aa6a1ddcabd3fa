"""Per-key request- and token-per-minute limits, counted the way OpenAI counts them.

Both limits are moving windows (`limits`' MovingWindowRateLimiter, one timestamp per unit): a
key never has more than its limit in ANY 60 s, so there is no burst of twice the limit around
a fixed window's edge. The counters live in memory by default, or in Redis (`redis://…`) so
that several server processes share one budget.

A request is admitted against `prompt + the completion tokens it may use`, reserved while it
runs, and recorded in the window with what it really used once it is done (`settle`): the
window holds real usage, so a request without `max_tokens` (which may run to the end of the
context) reserves only a bounded default and is trued up afterwards. Reservations are this
process's own; with Redis, the processes share the recorded usage. A request counts in the
window from its admission (as a reservation) until 60 s after it ended (as usage), so every
admission sees every request of the last minute.

If the storage cannot be reached, every keyed request is refused with `Unavailable`
(503 `rate_limit_storage_unavailable`): limits that cannot be counted are not enforced silently.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import defaultdict

import limits
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from opengpt4.errors import RateLimited, Unavailable
from opengpt4.serve.keys import ApiKey

STORAGE_TIMEOUT_S = 2.0  # a Redis that does not answer is an outage, not a reason to hang every request


def _reset(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s'."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


class RateLimiter:
    def __init__(self, storage_uri: str = "memory://", window_s: int = 60) -> None:
        self.remote = not storage_uri.startswith("memory")  # its calls go over the network
        options = {}
        if self.remote:
            options = {"socket_timeout": STORAGE_TIMEOUT_S, "socket_connect_timeout": STORAGE_TIMEOUT_S}
        self.storage = storage_from_string(storage_uri, wrap_exceptions=True, **options)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.window_s = window_s
        self._lock = threading.Lock()  # admission is check-then-reserve: one at a time in this process
        self._reserved: dict[int, int] = defaultdict(int)  # key id -> tokens reserved by its running requests

    def _items(self, key: ApiKey) -> tuple[limits.RateLimitItem, limits.RateLimitItem]:
        return (limits.RateLimitItemPerSecond(key.rpm, self.window_s),
                limits.RateLimitItemPerSecond(key.tpm, self.window_s))

    def _windows(self, key: ApiKey) -> dict[str, tuple[int, int, float]]:
        """Per kind: (limit, remaining after reservations, seconds until the oldest entry leaves)."""
        out, now = {}, time.time()
        for kind, item in zip(("requests", "tokens"), self._items(key), strict=True):
            stats = self.limiter.get_window_stats(item, str(key.id), kind)
            held = self._reserved.get(key.id, 0) if kind == "tokens" else 0
            out[kind] = (item.amount, max(stats.remaining - held, 0), stats.reset_time - now)
        return out

    def headers(self, key: ApiKey) -> dict[str, str]:
        """The x-ratelimit-* headers for the key's current windows (charges nothing)."""
        try:
            windows = self._windows(key)
        except StorageError as e:
            raise self._outage(e) from None
        out = {}
        for kind, (limit, remaining, reset) in windows.items():
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            out[f"x-ratelimit-reset-{kind}"] = _reset(reset)
        return out

    def charge(self, key: ApiKey, tokens: int) -> dict[str, str]:
        """Admit one request that may use `tokens`: counts the request and reserves the tokens.
        Raises RateLimited (charging nothing) when over either limit."""
        if tokens > key.tpm:  # can never fit, retrying does not help
            raise RateLimited(f"Request too large for key {key.hint}: limit {key.tpm} tokens per minute, "
                              f"requested {tokens} (prompt + max_tokens). Lower max_tokens or shorten the "
                              f"messages.", kind="tokens", retry_after=None, headers=self.headers(key))
        requests_item, _ = self._items(key)
        try:
            with self._lock:
                windows = self._windows(key)
                if windows["tokens"][1] < tokens:
                    self._refuse(key, "tokens", tokens, windows)
                if not self.limiter.hit(requests_item, str(key.id), "requests"):  # atomic, also across processes
                    self._refuse(key, "requests", 1, self._windows(key))
                self._reserved[key.id] += tokens
        except StorageError as e:
            raise self._outage(e) from None
        return self.headers(key)

    def settle(self, key: ApiKey, reserved: int, used: int) -> None:
        """A request of `key` is done: release its reservation and record the tokens it used.
        Never raises (it runs after the response): an unreachable storage is reported on stderr."""
        with self._lock:
            self._reserved[key.id] -= reserved
            if self._reserved[key.id] <= 0:
                del self._reserved[key.id]
            if used <= 0:
                return
            _, tokens_item = self._items(key)
            name = tokens_item.key_for(str(key.id), "tokens")
            try:
                for _ in range(3):  # another process may add entries between the count and the add
                    _, in_window = self.storage.get_moving_window(name, tokens_item.amount, tokens_item.get_expiry())
                    # The tokens were used already: recorded even past the limit (a limit of what the
                    # window holds plus them always accepts; Redis trims the list to it).
                    if self.storage.acquire_entry(name, in_window + used, tokens_item.get_expiry(), used):
                        return
                print(f"rate limiter: {used} tokens of key {key.hint} not recorded (concurrent updates)",
                      file=sys.stderr)
            except StorageError as e:
                print(f"rate limiter: {used} tokens of key {key.hint} not recorded: {self._outage(e)}",
                      file=sys.stderr)

    def _refuse(self, key: ApiKey, kind: str, cost: int, windows: dict[str, tuple[int, int, float]]) -> None:
        limit, remaining, reset = windows[kind]
        retry = max(1, math.ceil(reset))
        headers = {f"x-ratelimit-{name}-{k}": value for k, (lim, rem, res) in windows.items()
                   for name, value in (("limit", str(lim)), ("remaining", str(rem)), ("reset", _reset(res)))}
        raise RateLimited(f"Rate limit reached for key {key.hint} on {kind} per min (RPM/TPM): "
                          f"Limit {limit}, Used {limit - remaining}, Requested {cost}. "
                          f"Please try again in {retry}s.", kind=kind, retry_after=retry,
                          headers=headers | {"retry-after": str(retry)})

    @staticmethod
    def _outage(e: StorageError) -> Unavailable:
        return Unavailable(f"The rate-limit storage is unreachable ({type(e.storage_error).__name__}); retry later.",
                           "rate_limit_storage_unavailable")
