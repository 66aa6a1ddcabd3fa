"""The OpenAI-compatible server, exercised by the official `openai` client over loopback."""

import json
import urllib.error
import urllib.request

import openai
import pytest

from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.serve.app import create_app
from tests.helpers import live_server


def http(url: str, body: bytes | None = None) -> tuple[int, dict]:
    """A raw request, bypassing the client's own validation."""
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HELLO = [{"role": "user", "content": "the cat sat on"}]


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer) -> Engine:
    return Engine(tiny_model, tiny_tokenizer, pack=False)


@pytest.fixture(scope="module")
def app(engine):
    return create_app({"tiny": engine})


@pytest.fixture(scope="module")
def base_url(app):
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=30)


def reference(engine: Engine, messages, **kw) -> str:
    return engine.generate([engine.chat_prompt(messages)], SamplingParams(**kw))[0][0].text


def test_plain_chat_matches_engine(client, engine):
    r = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reference(engine, HELLO, temperature=0, max_tokens=12)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(engine.chat_prompt(HELLO).ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 12


def test_system_message(client, engine):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "seven blue birds"}]}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
    assert r.choices[0].message.content == reference(engine, messages, temperature=0, max_tokens=10)
    assert r.usage.prompt_tokens == len(engine.chat_prompt(messages).ids)


def test_streaming_with_usage(client):
    full = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, max_tokens=16)
    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_n2_seeded_and_reproducible(client):
    kw = dict(model="tiny", messages=HELLO, temperature=1.0, max_tokens=12, n=2, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_stop(client, engine):
    text = reference(engine, HELLO, temperature=0, max_tokens=20)
    stop = text[len(text) // 2:][:2].strip() or text[-1]
    r = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, max_tokens=20, stop=[stop])
    assert stop not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, max_tokens=5,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert e.value.code == "model_not_found"


def test_context_length_exceeded(client, engine):
    long = [{"role": "user", "content": "the cat " * engine.config.max_seq_len}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=10)
    assert e.value.code == "context_length_exceeded"
    assert "maximum context length" in e.value.message


def test_scoring_a_text_longer_than_the_context(client, engine):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="the cat " * engine.config.max_seq_len, max_tokens=0,
                                  echo=True, logprobs=0)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert "tokens to score. Please reduce the length of the prompt." in e.value.message


def test_full_queue_is_503_server_busy(client, app):
    scheduler = app.state.schedulers["tiny"]
    max_queue, scheduler.max_queue = scheduler.max_queue, 0  # every request finds the queue full
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
    finally:
        scheduler.max_queue = max_queue
    assert e.value.status_code == 503 and e.value.code == "server_busy" and e.value.type == "server_error"


def test_malformed_request_is_400(client, base_url):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=HELLO, extra_body={"temperature": "hot"})
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    status, body = http(f"{base_url}/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = http(f"{base_url}/chat/completions", json.dumps({"model": "tiny", "messages": [], "bogus": 1}).encode())
    assert status == 400 and body["error"]["param"] == "messages"


def test_healthz(base_url):
    assert http(base_url.removesuffix("/v1") + "/healthz") == (200, {"status": "ok", "models": ["tiny"]})


def test_disconnect_cancels_generation(base_url, app, engine):
    """A streaming client that goes away must not keep its rows in the batch."""
    from http.client import HTTPConnection

    host, port = base_url.removeprefix("http://").removesuffix("/v1").split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    body = {"model": "tiny", "messages": HELLO, "max_tokens": engine.config.max_seq_len - 32, "stream": True, "temperature": 1.0, "seed": 1}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.readline().startswith(b"data: ")
    conn.sock.close()  # hang up mid-stream
    conn.close()
    assert app.state.schedulers["tiny"].idle.wait(5), "generation kept running after the client left"
