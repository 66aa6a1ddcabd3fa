"""Completion functions: a local checkpoint, an OpenAI-compatible endpoint, and a cache around either.

`make_completion_fn("http://host:8000/v1#model")` reaches a server over HTTP; anything else
is a checkpoint directory or a model name under $OPENGPT4_HOME/models/. `CachedCompletionFn`
answers repeated requests from SQLite, keyed by the model's identity (a hash of the weights
for a local model), so a rerun of an eval costs nothing and a retrained model never hits.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from opengpt4.errors import OpenGPT4Error

from .api import ChatLoglikRequest, CompletionFn, CompletionResult, Decoding, Loglik, LoglikRequest, Prompt


# --- local -----------------------------------------------------------------------------------
class EngineCompletionFn:
    """A completion function over an in-memory `Engine` (LocalCompletionFn loads one from disk)."""

    def __init__(self, engine: Any, identity: str, batch_size: int = 16) -> None:
        self._engine, self.identity, self.batch_size = engine, identity, batch_size
        # One generation at a time: on a CPU concurrent batches only fight for the same cores,
        # and a runner with several workers still gets each batch done in one engine call.
        self._lock = threading.Lock()

    @property
    def engine(self) -> Any:
        return self._engine

    def _prompt(self, prompt: Prompt) -> Any:
        return self.engine.text_prompt(prompt) if isinstance(prompt, str) else self.engine.chat_prompt(prompt)

    def complete(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[CompletionResult]:
        from opengpt4.engine.sampling import SamplingParams

        params = SamplingParams(max_tokens=decoding.max_tokens, temperature=decoding.temperature,
                                top_p=decoding.top_p, seed=decoding.seed, stop=list(decoding.stop),
                                n=decoding.n, logprobs=decoding.logprobs)
        encoded = [self._prompt(p) for p in prompts]
        out: list[CompletionResult] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            with self._lock:
                generated = self.engine.generate(chunk, params)
            for prompt, choices in zip(chunk, generated, strict=True):
                logprobs = [[(lp.token, lp.logprob) for lp in c.logprobs or []] for c in choices] \
                    if decoding.logprobs else None
                out.append(CompletionResult(texts=[c.text for c in choices], logprobs=logprobs,
                                            prompt_tokens=len(prompt.ids),
                                            completion_tokens=sum(len(c.token_ids) for c in choices)))
        return out

    def loglikelihood(self, requests: Sequence[LoglikRequest | ChatLoglikRequest]) -> list[Loglik]:
        with self._lock:
            return self.engine.loglikelihood(requests, self.batch_size)


def checkpoint_identity(path: Path) -> str:
    """'local:' + a hash of what decides the outputs: weights, tokenizer, and the model and
    tokenizer sections of config.json (not the path, so a renamed copy is the same model)."""
    from opengpt4.model.checkpoint import TOKENIZER_FILE, WEIGHTS_FILE, read_config

    h = hashlib.sha256()
    config = read_config(path)
    h.update(json.dumps({k: config.get(k) for k in ("model", "tokenizer")}, sort_keys=True).encode())
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        with open(path / name, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return "local:" + h.hexdigest()[:16]


class LocalCompletionFn(EngineCompletionFn):
    """A checkpoint directory or model name. The weights load on first use, so a run served
    entirely from the cache only hashes the files."""

    def __init__(self, path_or_name: str | Path, dtype: str = "auto", batch_size: int = 16) -> None:
        from opengpt4.model.checkpoint import resolve_model
        from opengpt4.model.precision import resolve_precision

        # The precision is part of the identity (and so of every cache key and report): a
        # bfloat16 answer must never be served for a float32 request.
        self.path, self.precision = resolve_model(path_or_name), resolve_precision(dtype)
        super().__init__(None, f"{checkpoint_identity(self.path)}@{self.precision}", batch_size)
        self._load_lock = threading.Lock()

    @property
    def engine(self) -> Any:
        with self._load_lock:
            if self._engine is None:
                from opengpt4.engine.generate import Engine

                self._engine = Engine.load(str(self.path), self.precision)
            return self._engine


# --- HTTP ------------------------------------------------------------------------------------
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class HTTPCompletionFn:
    """An OpenAI-compatible endpoint: chat prompts to /chat/completions, text to /completions,
    log-likelihoods from /completions with echo. Requests run `concurrency` at a time and are
    retried with exponential backoff and jitter on 429, 5xx and connection errors."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 120.0, client: httpx.Client | None = None) -> None:
        self.base_url, self.model, self.max_retries = base_url.rstrip("/"), model, max_retries
        self.identity = f"{self.base_url}#{model}"  # as given to --model: the URL names the scheme
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(timeout=timeout)
        self.client.headers.update(headers)
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="evals-http")

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url, attempt = self.base_url + path, 0
        while True:
            wait = min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random())  # backoff with jitter
            try:
                r = self.client.post(url, json=body)
            except httpx.TransportError as e:
                problem = f"cannot reach {url} ({type(e).__name__}: {e})"
            else:
                if r.status_code < 400:
                    return r.json()
                problem = f"{url}: HTTP {r.status_code}: {error_message(r)}"
                if r.status_code not in RETRY_STATUS:
                    raise HTTPStatusError(problem, r.status_code)
                retry_after = r.headers.get("retry-after", "").strip()
                if re.fullmatch(r"\d+(\.\d+)?", retry_after):  # seconds; an HTTP date falls back to backoff
                    wait = float(retry_after)
            if attempt == self.max_retries:
                raise OpenGPT4Error(f"{problem} (gave up after {attempt + 1} tries)")
            time.sleep(wait)
            attempt += 1

    def _complete_one(self, prompt: Prompt, decoding: Decoding) -> CompletionResult:
        body: dict[str, Any] = {"model": self.model, "max_tokens": decoding.max_tokens,
                                "temperature": decoding.temperature, "top_p": decoding.top_p, "n": decoding.n}
        if decoding.stop:
            body["stop"] = list(decoding.stop)
        if decoding.seed is not None:
            body["seed"] = decoding.seed
        if isinstance(prompt, str):
            if decoding.logprobs:
                body["logprobs"] = 1
            data = self.post("/completions", {**body, "prompt": prompt})
        else:
            body["logprobs"] = decoding.logprobs
            data = self.post("/chat/completions", {**body, "messages": prompt})
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts = [c["text"] if isinstance(prompt, str) else c["message"].get("content") or "" for c in choices]
        logprobs = [choice_logprobs(c) for c in choices] if decoding.logprobs else None
        u = data.get("usage") or {}
        return CompletionResult(texts=texts, logprobs=logprobs, prompt_tokens=u.get("prompt_tokens", 0),
                                completion_tokens=u.get("completion_tokens", 0))

    def complete(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[CompletionResult]:
        return list(self._pool.map(lambda p: self._complete_one(p, decoding), prompts))

    def _loglik_one(self, request: LoglikRequest | ChatLoglikRequest) -> Loglik:
        if isinstance(request, ChatLoglikRequest):  # echo scores raw text, where control tokens are text
            raise NotImplementedError(f"{self.identity} cannot score a chat reply: the API scores raw text only "
                                      "(/completions with echo); run the base-format eval or a local checkpoint")
        text = request.context + request.continuation
        body = {"model": self.model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
        try:
            data = self.post("/completions", body)
        except HTTPStatusError as e:
            raise NotImplementedError(f"{self.identity} cannot score text: /completions with echo and "
                                      f"max_tokens 0 was refused ({e})") from None
        return loglik_from_echo(data["choices"][0]["logprobs"], text, len(request.context))

    def loglikelihood(self, requests: Sequence[LoglikRequest | ChatLoglikRequest]) -> list[Loglik]:
        return list(self._pool.map(self._loglik_one, requests))


class HTTPStatusError(OpenGPT4Error):
    """A 4xx answer that retrying cannot fix."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def error_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def choice_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]]:
    lp = choice.get("logprobs") or {}
    if "content" in lp:  # chat format
        return [(t["token"], t["logprob"]) for t in lp["content"] or []]
    return list(zip(lp.get("tokens", []), lp.get("token_logprobs", []), strict=True))


def loglik_from_echo(logprobs: dict[str, Any], text: str, context_chars: int) -> Loglik:
    """Score the continuation from an echoed prompt (OpenAI's legacy logprobs format) with the
    token boundary rule of `LoglikRequest`: token i spans up to text_offset[i+1] (the last
    token up to len(text)); the continuation starts at the first token ending past the context."""
    tokens, values, tops, offsets = (logprobs[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"))
    ends = [*offsets[1:], len(text)]
    first = next((i for i, end in enumerate(ends) if end > context_chars), len(tokens))
    total, greedy = 0.0, True
    for i in range(first, len(tokens)):
        if values[i] is None:
            raise OpenGPT4Error("the first token has no log-probability (no BOS before it): give some context")
        total += values[i]
        # Compared by value, not by token string: distinct byte-fragment tokens can print alike.
        greedy = greedy and values[i] >= max(tops[i].values())
    return Loglik(logprob=total, num_tokens=len(tokens) - first, is_greedy=greedy)


def make_completion_fn(spec: str, *, dtype: str = "auto", batch_size: int = 16) -> CompletionFn:
    """'http(s)://HOST:PORT/v1#MODEL' -> HTTP; anything else -> a local checkpoint dir or model name."""
    if re.match(r"https?://", spec):
        base, _, model = spec.partition("#")
        if not model:
            raise OpenGPT4Error(f"{spec}: an endpoint needs the model after '#', e.g. {base}#my-model")
        return HTTPCompletionFn(base, model)
    return LocalCompletionFn(spec, dtype=dtype, batch_size=batch_size)


# --- cache -----------------------------------------------------------------------------------
def default_cache_path() -> Path:
    from opengpt4.files import opengpt4_home

    return opengpt4_home() / "evals" / "cache.sqlite"


class CachedCompletionFn:
    """Serves repeated requests from SQLite; results from the cache have `cached=True`.

    Key: sha256 of (identity, kind, request, decoding). Sampled requests (temperature > 0) are
    cached too, per seed: the seed is part of the decoding, so a rerun with the same seed is
    the same run (as the engine's seeded sampling would make it anyway), a new seed samples
    afresh, and an unseeded sample is frozen at its first draw (use --no-cache to redraw)."""

    def __init__(self, inner: CompletionFn, path: str | Path | None = None) -> None:
        self.inner, self.identity = inner, inner.identity
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def key(self, kind: str, request: Any, decoding: Decoding | None) -> str:
        blob = json.dumps([self.identity, kind, request, asdict(decoding) if decoding else None],
                          sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _get(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite caps the number of ? parameters
                part = keys[start:start + 500]
                rows = self._db.execute(f"SELECT key, value FROM cache WHERE key IN ({','.join('?' * len(part))})", part)
                found.update((k, json.loads(v)) for k, v in rows)
        return found

    def _put(self, items: dict[str, Any]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO cache (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in items.items()])
            self._db.commit()

    def _cached(self, kind: str, requests: Sequence[Any], decoding: Decoding | None, compute) -> list[tuple[Any, bool]]:
        keys = [self.key(kind, r if isinstance(r, (str, list)) else asdict(r), decoding) for r in requests]
        found = self._get(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        fresh = compute([requests[i] for i in todo]) if todo else []
        self._put({keys[i]: asdict(r) for i, r in zip(todo, fresh, strict=True)})
        with self._lock:
            self.hits += len(keys) - len(todo)
            self.misses += len(todo)
        by_index = dict(zip(todo, fresh, strict=True))
        return [(by_index[i], False) if i in by_index else (found[k], True) for i, k in enumerate(keys)]

    def complete(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[CompletionResult]:
        out = []
        for value, hit in self._cached("complete", prompts, decoding, lambda ps: self.inner.complete(ps, decoding)):
            if hit:
                value = CompletionResult(**{**value, "cached": True})
                if value.logprobs is not None:
                    value.logprobs = [[tuple(t) for t in seq] for seq in value.logprobs]
            out.append(value)
        return out

    def loglikelihood(self, requests: Sequence[LoglikRequest | ChatLoglikRequest]) -> list[Loglik]:
        return [Loglik(**value) if hit else value
                for value, hit in self._cached("loglik", requests, None, self.inner.loglikelihood)]

    def close(self) -> None:
        self._db.close()
