"""Keys, rate limits, the usage ledger, metrics, the model registry, /v1/completions and image parts,
against a real server on loopback driven by the official `openai` client."""

import base64
import io
import json
import math
import re
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest
from PIL import Image

from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import ConfigError
from opengpt4.serve.app import create_app
from opengpt4.serve.keys import KeyStore
from opengpt4.serve.ledger import UsageLedger
from opengpt4.serve.registry import load_registry
from tests.helpers import live_server, wait_for

HELLO = [{"role": "user", "content": "the cat sat on"}]

REGISTRY = """
models:
  - snapshot: tiny-20261129
    path: tiny
    aliases: [tiny-latest]
    pricing: {prompt: 0.03, completion: 0.06}
  - snapshot: tiny-short-20261129
    path: tiny
    context_length: 64
"""


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer) -> Engine:
    return Engine(tiny_model, tiny_tokenizer, pack=False)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "registry.yaml").write_text(REGISTRY)
    store = KeyStore(tmp / "serve.db")
    keys = {"main": store.create("main"), "slow": store.create("slow", rpm=2), "small": store.create("small", tpm=50)}
    app = create_app({"tiny": engine}, registry=load_registry(tmp / "registry.yaml"), keys=store)
    with live_server(app) as url:
        yield url, keys, store


def client(server, key: str = "main") -> openai.OpenAI:
    url, keys, _ = server
    return openai.OpenAI(base_url=url, api_key=keys.get(key, key), max_retries=0, timeout=30)


def post(url: str, body: dict, key: str | None) -> tuple[int, dict, dict]:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def png_data_url(color=(200, 30, 30), mode: str = "RGB", size: tuple[int, int] = (32, 32)) -> str:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --- keys ----------------------------------------------------------------------------------------
def test_missing_and_bad_keys_are_401(server):
    url, _, _ = server
    status, _, body = post(url + "/chat/completions", {"model": "tiny-latest", "messages": HELLO}, None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, "sk-og4-not-a-real-key").chat.completions.create(model="tiny-latest", messages=HELLO)
    assert e.value.code == "invalid_api_key" and "not-a-real-key" not in e.value.message  # never echo a key


def test_revoked_key_stops_working(server):
    _, _, store = server
    key = store.create("temp")
    assert client(server, key).models.list().data
    store.revoke(next(k.id for k in store.list() if k.name == "temp"))
    with pytest.raises(openai.AuthenticationError):
        client(server, key).models.list()


def test_keys_are_stored_hashed(server, tmp_path):
    _, keys, store = server
    raw = store.db.path.read_bytes() + (store.db.path.with_name("serve.db-wal").read_bytes()
                                        if store.db.path.with_name("serve.db-wal").exists() else b"")
    assert keys["main"].encode() not in raw


# --- rate limits ----------------------------------------------------------------------------------
def test_rate_limit_headers_and_429_with_retry_after(server):
    c = client(server, "slow")
    r = c.chat.completions.with_raw_response.create(model="tiny-latest", messages=HELLO, max_tokens=3)
    assert r.headers["x-ratelimit-limit-requests"] == "2" and r.headers["x-ratelimit-remaining-requests"] == "1"
    assert r.headers["x-ratelimit-limit-tokens"] == "40000"
    prompt = r.parse().usage.prompt_tokens
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 40000 - (prompt + 3)  # prompt + max_tokens, as OpenAI
    c.chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=3)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=3)
    assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "Limit 2" in e.value.message


def test_token_limit_counts_max_tokens(server):
    c = client(server, "small")  # 50 tokens per minute
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=60)
    assert "Request too large" in e.value.message


# --- registry --------------------------------------------------------------------------------------
def test_alias_resolves_to_snapshot_and_models_list_has_details(server):
    c = client(server)
    r = c.chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=3, temperature=0)
    assert r.model == "tiny-20261129"
    ids = {m.id: m for m in c.models.list().data}
    assert set(ids) == {"tiny-20261129", "tiny-latest", "tiny-short-20261129"}
    latest = c.models.retrieve("tiny-latest").model_dump()
    assert latest["snapshot"] == "tiny-20261129" and latest["pricing"] == {"prompt": 0.03, "completion": 0.06}
    assert ids["tiny-short-20261129"].model_dump()["context_length"] == 64
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4", messages=HELLO)
    assert e.value.code == "model_not_found"


def test_context_variant_limits_the_prompt(server):
    c = client(server)
    long = [{"role": "user", "content": "the cat sat on a mat " * 12}]
    assert c.chat.completions.create(model="tiny-latest", messages=long, max_tokens=5).choices
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-short-20261129", messages=long, max_tokens=5)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 64 tokens" in e.value.message


def test_registry_errors_are_clear(tmp_path):
    bad = tmp_path / "r.yaml"
    for text, needle in [("models: []", "non-empty 'models'"), ("models:\n  - {snapshot: a}", "path"),
                         ("models:\n  - {snapshot: a, path: p, aliases: [b]}\n  - {snapshot: b, path: p}", "twice"),
                         ("models:\n  - {snapshot: a, path: p, colour: red}", "unknown keys"), ("{", "YAML")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_registry(bad)


# --- usage ledger and metrics ---------------------------------------------------------------------
def test_every_request_is_in_the_ledger_with_cost(server):
    url, keys, store = server
    ledger = UsageLedger(store.db)
    before = ledger.count()
    r = client(server).chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=4, temperature=0)
    stream = client(server).chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=4, stream=True,
                                                    stream_options={"include_usage": True})
    streamed_usage = [c.usage for c in stream if c.usage][0]
    post(url + "/chat/completions", {"model": "nope", "messages": HELLO}, keys["main"])  # 404: a row too
    # A row is written once its response is fully sent, just after the client read the last byte.
    assert wait_for(lambda: ledger.count() >= before + 3) and ledger.count() == before + 3
    rows = store.db.execute("SELECT model, prompt_tokens, completion_tokens, cost, status FROM usage "
                            "ORDER BY id DESC LIMIT 3")  # in completion order, which may differ from sending order
    assert sorted(row[4] for row in rows) == [200, 200, 404]
    assert [row[0] for row in rows if row[4] == 404] == [None]
    served = [row for row in rows if row[4] == 200]
    assert sorted(row[1:3] for row in served) == sorted([(r.usage.prompt_tokens, r.usage.completion_tokens),
                                                         (streamed_usage.prompt_tokens, streamed_usage.completion_tokens)])
    for model, prompt, completion, cost, _ in served:
        assert model == "tiny-20261129" and math.isclose(cost, (0.03 * prompt + 0.06 * completion) / 1000)


def test_usage_command_prints_totals(server):
    _, _, store = server
    ledger = UsageLedger(store.db)
    before = ledger.count()
    client(server).chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=2)
    assert wait_for(lambda: ledger.count() > before)
    out = subprocess.run([sys.executable, "-m", "opengpt4.cli", "usage", "--db", str(store.db.path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    totals = {(t["key"], t["model"]): t for t in json.loads(out)}
    main = totals[("main (id 1)", "tiny-20261129")]
    assert main["requests"] >= 1 and main["prompt_tokens"] > 0 and main["cost"] > 0


def test_metrics_exposition(server):
    url, _, _ = server
    client(server).chat.completions.create(model="tiny-latest", messages=HELLO, max_tokens=2)
    def scrape() -> str:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as r:
            return r.read().decode()

    # counted just after the response's last byte
    assert wait_for(lambda: 'opengpt4_requests_total{endpoint="/v1/chat/completions",status="200"}' in scrape())
    text = scrape()
    assert 'opengpt4_tokens_total{kind="completion",model="tiny-20261129"}' in text
    assert 'opengpt4_queue_depth{model="tiny-20261129"} 0.0' in text
    assert "opengpt4_request_latency_seconds_bucket" in text

    # The KV pool and the prefix cache: the same long system message twice, the second from the cache.
    def sample(name: str, **labels: str) -> float:
        selector = ",".join(f'{k}="{v}"' for k, v in sorted((labels | {"model": "tiny-20261129"}).items()))
        [value] = re.findall(rf"^{name}{{{re.escape(selector)}}} (\S+)$", scrape(), re.M)
        return float(value)

    before = sample("opengpt4_prefix_cache_hits_total"), sample("opengpt4_prefix_cache_queries_total")
    system = [{"role": "system", "content": "the cat sat on the mat and the dog ran to the park " * 4}]
    for _ in range(2):
        client(server).chat.completions.create(model="tiny-latest", messages=system + HELLO, max_tokens=2)
    hits = sample("opengpt4_prefix_cache_hits_total") - before[0]
    queries = sample("opengpt4_prefix_cache_queries_total") - before[1]
    assert 32 <= hits < queries  # at least two 16-token blocks of the system message; never the last token
    assert sample("opengpt4_kv_cache_blocks", state="max") >= sample("opengpt4_kv_cache_blocks", state="allocated") > 0
    assert sample("opengpt4_kv_cache_blocks", state="in_use") == 0 == sample("opengpt4_kv_cache_usage_ratio")  # idle


# --- /v1/completions ------------------------------------------------------------------------------
def test_text_completion_matches_engine(server, engine):
    r = client(server).completions.create(model="tiny-latest", prompt="the cat sat on", max_tokens=6, temperature=0)
    ids = engine.tokenizer.encode("the cat sat on", add_bos=engine.tokenizer.add_bos)
    expected = engine.generate([Prompt(ids)], SamplingParams(max_tokens=6, temperature=0))[0][0]
    assert r.object == "text_completion" and r.choices[0].text == expected.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(expected.token_ids)
    streamed = "".join(c.choices[0].text for c in client(server).completions.create(
        model="tiny-latest", prompt="the cat sat on", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == expected.text


def test_echo_scores_the_prompt(server, engine):
    text = "the cat sat on a mat"
    r = client(server).completions.create(model="tiny-latest", prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert engine.tokenizer.add_bos  # so every text token has a logprob: the BOS conditions the first
    reference = engine.prompt_logprobs(engine.tokenizer.encode(text, add_bos=True), 1)
    assert r.choices[0].text == text and "".join(lp.tokens) == text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert lp.token_logprobs == pytest.approx([t.logprob for t in reference], abs=1e-5)
    assert [list(d)[0] for d in lp.top_logprobs] == [t.top[0][1] for t in reference]
    assert r.usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError):
        client(server).completions.create(model="tiny-latest", prompt=text, max_tokens=0)


# --- images and response_format --------------------------------------------------------------------
def test_image_parts(server, engine):
    c = client(server)
    image = {"type": "image_url", "image_url": {"url": png_data_url()}}
    r = c.chat.completions.create(model="tiny-latest", max_tokens=3, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "what colour?"}]}])
    text_only = c.chat.completions.create(model="tiny-latest", max_tokens=1,
                                          messages=[{"role": "user", "content": "what colour?"}])
    # the image's placeholder tokens are in the prompt (give or take a merge at the text boundary)
    per_image = engine.tokenizer.tokens_per_image
    assert abs(r.usage.prompt_tokens - text_only.usage.prompt_tokens - per_image) <= 2
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not-base64"}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-latest", messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi"}, bad]}])
    assert e.value.param == "messages[0].content[1]" and "base64" in e.value.message
    junk = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"nope").decode()}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-latest", messages=[{"role": "user", "content": [junk]}])
    assert e.value.param == "messages[0].content[0]"
    for url in ("/etc/passwd", "https://example.com/cat.png"):  # never read server files, never fetch
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny-latest", messages=[{"role": "user", "content": [part]}])
        assert "only data: URLs" in e.value.message
    for url, reason in ((png_data_url(mode="I;16"), "pixel mode 'I;16'"),  # 16-bit: would clip to white
                        (png_data_url(size=(4097, 2)), "4097x2 pixels is larger than the 4096x4096 limit")):
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny-latest", messages=[{"role": "user", "content": [
                {"type": "text", "text": "hi"}, part]}])
        assert e.value.param == "messages[0].content[1]" and reason in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-latest", messages=[{"role": "user", "content": [image] * 9}])
    assert "too many images" in e.value.message and e.value.param == "messages[0].content[8]"


def test_json_response_format_is_constrained(server):
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI's rule: the messages must ask for JSON
        client(server).chat.completions.create(model="tiny-latest", messages=HELLO, response_format={"type": "json_object"})
    assert "json" in e.value.message
    r = client(server).chat.completions.create(model="tiny-latest", max_tokens=30, temperature=0,
                                               messages=[{"role": "user", "content": "the cat as JSON"}],
                                               response_format={"type": "json_object"})
    text = r.choices[0].message.content  # the grammar's (tests/test_grammar.py covers it)
    assert text.startswith("{") and (r.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))


def test_example_registry_loads():
    from pathlib import Path

    registry = load_registry(Path(__file__).parents[1] / "examples" / "registry.yaml")
    names = registry.names()
    assert names["opengpt4-mini"].snapshot == "opengpt4-mini-20261129"
    assert {m.context_length for m in registry.models} == {8192, 2048}
