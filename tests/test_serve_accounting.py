"""Accounting: what a request is billed and charged is what it generated, however it ended; the
rate limits are moving windows trued up with real usage, shared through a real Redis, and an
outage of that Redis is OpenAI's envelope; one key cannot fill the queue. Real servers on
loopback, the official clients, a real redis-server."""

import json
import shutil
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx
import openai
import pytest

from opengpt4.engine.generate import Engine
from opengpt4.errors import RateLimited
from opengpt4.serve.app import create_app
from opengpt4.serve.gateway import RESERVED_WITHOUT_MAX_TOKENS, key_queue_cap
from opengpt4.serve.keys import KeyStore
from opengpt4.serve.ledger import UsageLedger
from opengpt4.serve.ratelimit import RateLimiter
from opengpt4.serve.registry import Registry, ServedModel
from tests.helpers import endless_decoder, live_server, wait_for

HELLO = [{"role": "user", "content": "the cat sat on"}]


@dataclass
class Server:
    url: str
    store: KeyStore
    app: object

    def client(self, key: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=timeout)

    def rows(self, where: str, args: tuple) -> list[tuple]:
        return self.store.db.execute("SELECT status, prompt_tokens, completion_tokens, request_id FROM usage "
                                     f"WHERE {where}", args)

    def remaining_tokens(self, key: str) -> int:
        record = self.store.verify(key)
        return int(self.app.state.gateway.limiter.headers(record)["x-ratelimit-remaining-tokens"])


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    return Engine(endless_decoder(tiny_tokenizer), tiny_tokenizer, pack=False)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    store = KeyStore(tmp_path_factory.mktemp("accounting") / "serve.db")
    registry = Registry([ServedModel("tiny", "tiny"), ServedModel("tiny-narrow", "tiny", max_batch=2)])
    app = create_app({"tiny": engine}, registry=registry, keys=store)
    with live_server(app) as url:
        yield Server(url, store, app)


def prompt_tokens(engine: Engine) -> int:
    return len(engine.chat_prompt(HELLO).ids)


def test_a_cut_stream_is_billed_the_tokens_it_generated(server, engine):
    key = server.store.create("cut")
    with server.client(key) as client:
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 3000, "temperature": 0, "stream": True}
        with client.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            received = 0
            for line in response.iter_lines():
                chunk = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else None
                if chunk and chunk["choices"][0]["delta"].get("content"):
                    received += 1
                    request_id = chunk["id"]
                if received == 20:
                    break  # hang up mid-stream
        assert response.headers["x-request-id"] == request_id
    assert wait_for(lambda: server.rows("request_id = ?", (request_id,)))
    [(status, prompt, completion, _)] = server.rows("request_id = ?", (request_id,))
    assert status == 499 and prompt == prompt_tokens(engine)
    assert 20 <= completion < 3000, completion  # what it generated until the hang-up, not 0, not 3000
    # The limiter holds the same count the ledger does, not the 3000 reserved.
    assert server.remaining_tokens(key) == 40_000 - (prompt + completion)


def test_a_non_streaming_request_stops_generating_when_its_client_leaves(server, engine):
    key = server.store.create("leaver")
    key_id = server.store.verify(key).id
    with server.client(key, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 4000,
                                               "temperature": 0})  # about 5 s of decoding
    assert server.app.state.schedulers["tiny"].idle.wait(3), "generation went on after the client left"
    assert wait_for(lambda: server.rows("key_id = ?", (key_id,)))
    [(status, _, completion, request_id)] = server.rows("key_id = ?", (key_id,))
    assert status == 499 and 0 < completion < 4000 and request_id.startswith("chatcmpl-")


def test_without_max_tokens_a_bounded_default_is_reserved_then_trued_up(server, engine):
    """A key of 1,500 tokens per minute: reserving the rest of a 4,096-token context would make
    every request without max_tokens "too large"; the bounded default fits, and once the request
    is done the window holds what it used."""
    key = server.store.create("tight", tpm=1500)
    prompt = prompt_tokens(engine)
    with server.client(key) as client:
        body = {"model": "tiny", "messages": HELLO, "temperature": 0, "stream": True}
        with client.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200, response.read()
            reserved = prompt + RESERVED_WITHOUT_MAX_TOKENS
            assert int(response.headers["x-ratelimit-remaining-tokens"]) == 1500 - reserved
            lines = response.iter_lines()
            for _ in range(10):
                next(lines)
            assert server.remaining_tokens(key) == 1500 - reserved  # still running: still reserved
    request_id = response.headers["x-request-id"]
    assert wait_for(lambda: server.rows("request_id = ?", (request_id,)))
    [(_, _, completion, _)] = server.rows("request_id = ?", (request_id,))
    assert server.remaining_tokens(key) == 1500 - (prompt + completion)


def test_one_key_cannot_fill_the_queue(server, engine):
    """On a 2-row model a key may have max_batch + max_queue/4 = 18 requests queued or running:
    a second 16-prompt call of the same key is a 429 while the first waits, and another key's
    request still gets in."""
    scheduler = server.app.state.schedulers["tiny-narrow"]
    assert key_queue_cap(scheduler) == 18
    greedy, other = server.store.create("greedy"), server.store.create("other")
    body = {"model": "tiny-narrow", "prompt": ["the cat sat on"] * 16, "max_tokens": 150, "temperature": 0}
    first: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: first.append(server.client(greedy).post("/completions", json=body)))
    worker.start()
    try:
        assert wait_for(lambda: len(scheduler.waiting) >= 8), "the first call never queued"
        with server.client(greedy) as client:
            r = client.post("/completions", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and "in flight" in r.json()["error"]["message"]
        with server.client(other) as client:
            r = client.post("/completions", json=body | {"prompt": "the cat", "max_tokens": 5})
        assert r.status_code == 200
    finally:
        worker.join()
    assert first[0].status_code == 200 and len(first[0].json()["choices"]) == 16


@pytest.fixture(params=["memory", "redis"])
def storage(request):
    if request.param == "memory":
        yield "memory://"
    else:
        yield request.getfixturevalue("redis_url")


def test_the_moving_window_admits_no_burst_at_the_edge(storage, tmp_path):
    """3 requests per 2 s: one at t=0 and two at t=1 fill the window; at t=2.1 the first has left,
    so exactly one more passes. A fixed window restarting at t=2 would let three through, five
    within 1.1 s."""
    limiter = RateLimiter(storage, window_s=2)
    key = KeyStore(tmp_path / "serve.db")
    record = key.verify(key.create("edge", rpm=3, tpm=10**6))
    start = time.monotonic()
    limiter.charge(record, 1)
    time.sleep(1.0)
    limiter.charge(record, 1)
    limiter.charge(record, 1)
    with pytest.raises(RateLimited) as e:
        limiter.charge(record, 1)
    assert e.value.kind == "requests" and e.value.retry_after == 1
    time.sleep(max(0.0, 2.1 - (time.monotonic() - start)))
    limiter.charge(record, 1)
    with pytest.raises(RateLimited):
        limiter.charge(record, 1)


def test_tokens_are_reserved_then_trued_up(storage, tmp_path):
    limiter = RateLimiter(storage)
    store = KeyStore(tmp_path / "serve.db")
    record = store.verify(store.create("true-up", tpm=100))
    limiter.charge(record, 60)  # prompt + max_tokens, reserved
    with pytest.raises(RateLimited) as e:
        limiter.charge(record, 50)
    assert e.value.kind == "tokens"
    limiter.settle(record, reserved=60, used=30)  # it used 30
    assert limiter.headers(record)["x-ratelimit-remaining-tokens"] == "70"
    limiter.charge(record, 50)
    limiter.settle(record, reserved=50, used=90)  # ran past its reservation: recorded all the same
    assert limiter.headers(record)["x-ratelimit-remaining-tokens"] == "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server():
    """A real redis-server (Debian's) on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    import redis

    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    try:
        assert wait_for(answers, 10), "redis-server did not start"
        yield process, f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


@pytest.fixture
def redis_url(redis_server):
    return redis_server[1]


def test_two_servers_share_limits_in_redis_and_an_outage_is_503(redis_server, engine, tmp_path):
    process, url = redis_server
    store = KeyStore(tmp_path / "serve.db")
    key = store.create("shared", rpm=2)
    apps = [create_app({"tiny": engine}, keys=store, rate_limit_storage=url) for _ in range(2)]
    with live_server(apps[0]) as a, live_server(apps[1]) as b:
        clients = [openai.OpenAI(base_url=u, api_key=key, max_retries=0, timeout=30) for u in (a, b, a)]
        kw = dict(model="tiny", messages=HELLO, max_tokens=3)
        clients[0].chat.completions.create(**kw)
        clients[1].chat.completions.create(**kw)
        with pytest.raises(openai.RateLimitError) as e:  # the third, on either server: both counted
            clients[2].chat.completions.create(**kw)
        assert e.value.code == "rate_limit_exceeded"

        process.terminate()
        process.wait()
        with pytest.raises(openai.InternalServerError) as e:
            clients[0].chat.completions.create(**kw)
        assert e.value.status_code == 503 and e.value.code == "rate_limit_storage_unavailable"
        assert e.value.type == "server_error" and "rate-limit storage is unreachable" in e.value.message


def test_the_database_is_created_owner_only(tmp_path):
    store = KeyStore(tmp_path / "home" / "serve.db")
    store.create("someone")  # a write: the WAL and its index exist now
    files = [p for p in (tmp_path / "home").iterdir() if p.name.startswith("serve.db")]
    assert {p.name for p in files} >= {"serve.db", "serve.db-wal"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}


def test_a_ledger_from_before_request_ids_still_opens(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE usage (id INTEGER PRIMARY KEY, time REAL NOT NULL, key_id INTEGER, endpoint TEXT "
                     "NOT NULL, model TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost "
                     "REAL NOT NULL, latency_ms REAL NOT NULL, status INTEGER NOT NULL)")
    ledger = UsageLedger(path)
    ledger.record(key_id=None, endpoint="/v1/completions", model="m", prompt_tokens=1, completion_tokens=2, cost=0.0,
                  latency_ms=1.0, status=200, request_id="cmpl-1")
    assert ledger.db.execute("SELECT request_id FROM usage") == [("cmpl-1",)]
