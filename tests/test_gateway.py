"""The request pipeline without HTTP: each refusal is a typed error carrying its facts, raised
before anything is charged or queued, and an admitted request runs and gets its ledger row."""

import asyncio
import math

import pytest

from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import ContextLengthExceeded, InvalidAPIKey, ModelNotFound, RateLimited
from opengpt4.serve.gateway import Gateway, Ticket
from opengpt4.serve.keys import KeyStore
from opengpt4.serve.registry import Registry, ServedModel

HELLO = [{"role": "user", "content": "the cat sat on"}]
LONG = [{"role": "user", "content": "the cat sat on a mat " * 12}]  # over 64 tokens, well under 128
GREEDY = SamplingParams(max_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer) -> Engine:
    return Engine(tiny_model, tiny_tokenizer, pack=False)


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "serve.db")


@pytest.fixture
def gateway(engine, store):
    registry = Registry([ServedModel("tiny-1", "tiny", ("tiny",), prompt_price=0.03, completion_price=0.06),
                         ServedModel("tiny-short", "tiny", context_length=64)])
    gateway = Gateway({"tiny": engine}, registry=registry, keys=store)
    gateway.start()
    yield gateway
    gateway.stop()


def ticket_for(gateway: Gateway, key: str) -> Ticket:
    ticket = Ticket()
    gateway.authenticate(key, ticket)
    return ticket


def remaining(gateway: Gateway, ticket: Ticket, kind: str) -> int:
    return int(gateway.limiter.headers(ticket.key)[f"x-ratelimit-remaining-{kind}"])


def test_context_error_is_typed_with_its_numbers_and_costs_nothing(gateway, store, engine):
    ticket = ticket_for(gateway, store.create("alice"))
    served = gateway.resolve("tiny-short", ticket)
    prompt = engine.chat_prompt(LONG)
    with pytest.raises(ContextLengthExceeded) as e:
        gateway.admit(served, [prompt], GREEDY, ticket)
    assert (e.value.limit, e.value.prompt_tokens, e.value.max_tokens) == (64, len(prompt.ids), 6)
    assert str(e.value).startswith("This model's maximum context length is 64 tokens.")
    assert remaining(gateway, ticket, "requests") == 200 and remaining(gateway, ticket, "tokens") == 40_000
    assert not served.scheduler.waiting and ticket.handles == []

    with pytest.raises(ContextLengthExceeded) as e:  # scoring: the prompt alone must fit
        gateway.admit_scoring(served, prompt, ticket)
    assert e.value.max_tokens is None and f"{len(prompt.ids)} tokens to score" in str(e.value)
    assert ticket.scored_tokens == 0


def test_admit_is_all_or_nothing(gateway, store, engine):
    ticket = ticket_for(gateway, store.create("bob"))
    served = gateway.resolve("tiny-short", ticket)
    with pytest.raises(ContextLengthExceeded):
        gateway.admit(served, [engine.chat_prompt(HELLO), engine.chat_prompt(LONG)], GREEDY, ticket)
    assert ticket.handles == []
    assert served.scheduler.idle.wait(5), "the first prompt was not cancelled"


def test_rate_limits_say_which_limit(gateway, store, engine):
    prompt = engine.chat_prompt(HELLO)
    ticket = ticket_for(gateway, store.create("slow", rpm=1))
    served = gateway.resolve("tiny", ticket)
    gateway.admit(served, [prompt], GREEDY, ticket)
    with pytest.raises(RateLimited) as e:
        gateway.admit(served, [prompt], GREEDY, ticket)
    assert e.value.kind == "requests" and 1 <= e.value.retry_after <= 60
    assert e.value.headers["retry-after"] == str(e.value.retry_after) and ticket.headers == e.value.headers

    ticket = ticket_for(gateway, store.create("small", tpm=50))
    with pytest.raises(RateLimited) as e:
        gateway.admit(served, [prompt], SamplingParams(max_tokens=60), ticket)
    assert e.value.kind == "tokens" and e.value.retry_after is None  # over the limit on its own: never passes
    assert "Request too large" in str(e.value) and ticket.handles == []


def test_unknown_model_and_bad_keys(gateway, store):
    with pytest.raises(ModelNotFound) as e:
        gateway.resolve("gpt-4", Ticket())
    assert e.value.model == "gpt-4" and e.value.param == "model"
    with pytest.raises(InvalidAPIKey, match="didn't provide an API key"):
        gateway.authenticate(None, Ticket())
    with pytest.raises(InvalidAPIKey) as e:
        gateway.authenticate("sk-og4-not-a-real-key", Ticket())
    assert "not-a-real-key" not in str(e.value)  # never echo a key


def test_admit_run_account(gateway, store, engine):
    ticket = ticket_for(gateway, store.create("carol"))
    served = gateway.resolve("tiny", ticket)
    prompt = engine.chat_prompt(HELLO)
    [handle] = gateway.admit(served, [prompt], GREEDY, ticket)
    [output] = asyncio.run(gateway.collect(handle, 1))
    expected = engine.generate([Prompt(prompt.ids)], GREEDY)[0][0]
    assert output.text == expected.text and output.finish_reason == expected.finish_reason
    assert ticket.tokens() == (len(prompt.ids), len(expected.token_ids))
    assert remaining(gateway, ticket, "tokens") == 40_000 - (len(prompt.ids) + 6)  # prompt + max_tokens

    gateway.account(ticket, "/v1/chat/completions", 200, 0.25)
    [row] = gateway.ledger.db.execute("SELECT key_id, endpoint, model, prompt_tokens, completion_tokens, cost, "
                                      "latency_ms, status FROM usage")
    key_id, endpoint, model, prompt_tokens, completion_tokens, cost, latency_ms, status = row
    assert (key_id, endpoint, model, status) == (ticket.key.id, "/v1/chat/completions", "tiny-1", 200)
    assert (prompt_tokens, completion_tokens) == ticket.tokens() and latency_ms == 250
    assert math.isclose(cost, (0.03 * prompt_tokens + 0.06 * completion_tokens) / 1000)
