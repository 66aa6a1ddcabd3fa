"""API keys, in the SQLite file they share with the usage ledger (ledger.py; WAL, so the server
writes while `opengpt4 usage` reads).

Keys are shown once, at creation; only their SHA-256 is stored. A plain hash (not a slow KDF)
is the right tool here: keys are 256 random bits, so there is nothing to brute-force, and the
server hashes one key per request. Each key carries its own request- and token-per-minute
limits (OpenAI's defaults for GPT-4: 200 RPM, 40,000 TPM).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error

KEY_PREFIX = "sk-og4-"
DEFAULT_RPM = 200
DEFAULT_TPM = 40_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hint TEXT NOT NULL,                 -- sk-og4-abcd…wxyz, enough to recognise a key in a list
    hash TEXT NOT NULL UNIQUE,
    rpm INTEGER NOT NULL,
    tpm INTEGER NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
-- the usage ledger (ledger.py): here too, so one database file always has both tables
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_id INTEGER,                     -- NULL: an unauthenticated request (--no-auth, or a 401)
    endpoint TEXT NOT NULL,
    model TEXT,                         -- the resolved snapshot
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,                 -- USD, from the registry's prices per 1k tokens
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,            -- 499: the client went away before the response was complete
    request_id TEXT                     -- the response's id (chatcmpl-…, cmpl-…; x-request-id)
);
CREATE INDEX IF NOT EXISTS usage_key_model ON usage (key_id, model);
"""


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    hint: str
    rpm: int
    tpm: int
    created: float
    revoked: float | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Database:
    """One connection shared by threads under a lock: writes are tiny, and WAL lets readers in.
    The file is created 0600 (SQLite gives its -wal and -shm files the same mode): it holds key
    hashes and every key's usage."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # before sqlite creates it 0644
        except OSError as e:
            raise OpenGPT4Error(f"cannot open the key/usage database {self.path}: {e}") from None
        try:
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, not power loss
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.executescript(SCHEMA)
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(usage)")}
            if "request_id" not in columns:  # a database from before request ids
                self.conn.execute("ALTER TABLE usage ADD COLUMN request_id TEXT")
        except sqlite3.DatabaseError as e:
            raise OpenGPT4Error(f"cannot open the key/usage database {self.path}: {e}") from None
        self.lock = threading.Lock()

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()


class KeyStore:
    def __init__(self, path: str | Path) -> None:
        self.db = path if isinstance(path, Database) else Database(path)

    def create(self, name: str, rpm: int = DEFAULT_RPM, tpm: int = DEFAULT_TPM) -> str:
        """A new key; the returned string is the only time it is ever shown."""
        if rpm < 1 or tpm < 1:
            raise OpenGPT4Error(f"rate limits must be >= 1, got rpm={rpm} tpm={tpm}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        hint = f"{key[:len(KEY_PREFIX) + 4]}…{key[-4:]}"
        self.db.execute("INSERT INTO api_keys (name, hint, hash, rpm, tpm, created) VALUES (?, ?, ?, ?, ?, ?)",
                        (name, hint, hash_key(key), rpm, tpm, time.time()))
        return key

    def list(self) -> list[ApiKey]:
        rows = self.db.execute("SELECT id, name, hint, rpm, tpm, created, revoked FROM api_keys ORDER BY id")
        return [ApiKey(*r) for r in rows]

    def revoke(self, key_id: int) -> None:
        """Revoked keys stay listed (their usage rows keep a name) but no longer authenticate."""
        if not self.db.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)):
            raise OpenGPT4Error(f"no API key with id {key_id} (see `opengpt4 keys list`)")
        self.db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id))

    def verify(self, key: str) -> ApiKey | None:
        """The key's record if it exists and is not revoked."""
        rows = self.db.execute("SELECT id, name, hint, rpm, tpm, created, revoked FROM api_keys "
                               "WHERE hash = ? AND revoked IS NULL", (hash_key(key),))
        return ApiKey(*rows[0]) if rows else None
