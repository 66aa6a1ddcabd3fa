"""The usage ledger: one row per API request (key, endpoint, snapshot, tokens, cost, latency,
status), written by the gateway once the response is done, read by `opengpt4 usage`. It lives in
the keys' database (keys.py) so that totals can name each key."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from opengpt4.serve.keys import Database


@dataclass(frozen=True)
class UsageTotal:
    key: str  # "name (id N)" or "-" for unauthenticated requests
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


class UsageLedger:
    def __init__(self, path: str | Path | Database) -> None:
        self.db = path if isinstance(path, Database) else Database(path)

    def record(self, *, key_id: int | None, endpoint: str, model: str | None, prompt_tokens: int,
               completion_tokens: int, cost: float, latency_ms: float, status: int,
               request_id: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO usage (time, key_id, endpoint, model, prompt_tokens, completion_tokens, cost, latency_ms, "
            "status, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), key_id, endpoint, model, prompt_tokens, completion_tokens, cost, latency_ms, status,
             request_id))

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM usage")[0][0]

    def totals(self, since: float | None = None) -> list[UsageTotal]:
        rows = self.db.execute(
            "SELECT COALESCE(k.name || ' (id ' || u.key_id || ')', '-'), COALESCE(u.model, '-'), COUNT(*), "
            "SUM(u.status >= 400), SUM(u.prompt_tokens), SUM(u.completion_tokens), SUM(u.cost) "
            "FROM usage u LEFT JOIN api_keys k ON k.id = u.key_id WHERE u.time >= ? "
            "GROUP BY u.key_id, u.model ORDER BY u.key_id, u.model", (since or 0.0,))
        return [UsageTotal(*r) for r in rows]
