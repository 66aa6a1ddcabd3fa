"""Tool calls, structured outputs and logit_bias through the API, driven by the official `openai`
client against a live server on loopback with the tiny random model (whatever structure its
replies have, the grammar gave them)."""

import json
import urllib.error
import urllib.request

import openai
import pytest
from pydantic import BaseModel, Field

from opengpt4.engine.generate import Engine
from opengpt4.serve.app import create_app
from tests.helpers import chat_decoder, live_server

SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 99}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": SMALL_INT, "b": SMALL_INT}, "required": ["a", "b"],
    "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is 2 + 3?"}]


class Pet(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=30)
    vaccinated: bool


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    return Engine(chat_decoder(tiny_tokenizer), tiny_tokenizer, pack=False)


@pytest.fixture(scope="module")
def base_url(engine):
    with live_server(create_app({"tiny": engine})) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)


def create(client, **kw):
    return client.chat.completions.create(**{"model": "tiny", "messages": ASK, "max_tokens": 120, "temperature": 0,
                                             **kw})


def test_required_tool_call_and_its_stream(client):
    r = create(client, tools=[ADD, WEATHER], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls and all(c.id.startswith("call_") and c.type == "function" for c in calls)
    for c in calls:
        arguments = json.loads(c.function.arguments)
        assert set(arguments) == ({"a", "b"} if c.function.name == "add" else {"city"})
    # the same greedy reply streamed: a first delta per call with id, type and name, then
    # argument pieces that reassemble to the same arguments
    chunks = list(create(client, tools=[ADD, WEATHER], tool_choice="required", stream=True))
    deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [])]
    firsts = [d for d in deltas if d.id]
    assert [(d.function.name, d.type, d.function.arguments) for d in firsts] == \
        [(c.function.name, "function", "") for c in calls]
    assert len({d.id for d in firsts}) == len(calls)
    streamed = ["".join(d.function.arguments or "" for d in deltas if d.index == i) for i in range(len(calls))]
    assert streamed == [c.function.arguments for c in calls]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(ch.choices[0].delta.content for ch in chunks)


def test_named_none_and_auto_tool_choice(client):
    r = create(client, tools=[ADD, WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    r = create(client, tools=[ADD], tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    # none: the tools are not in the prompt, so it is the plain reply
    plain = create(client, max_tokens=8)
    assert r.choices[0].message.content == plain.choices[0].message.content
    for seed in range(3):  # auto: text, or calls; never a broken call
        r = create(client, tools=[ADD], temperature=1.0, seed=seed)
        message = r.choices[0].message
        assert (message.tool_calls is None) != (message.content is None)


def test_agent_loop_of_two_turns(client):
    """Tool call -> the tool's result -> a final answer, the way an agent drives the SDK."""
    messages = [{"role": "developer", "content": "Use the tools."}, *ASK]
    first = create(client, messages=messages, tools=[ADD], tool_choice="required").choices[0].message
    [call] = [c for c in first.tool_calls if c.function.name == "add"][:1]
    result = sum(json.loads(call.function.arguments).values())
    messages += [first.model_dump(exclude_none=True),  # content null + tool_calls, as the SDK returns it
                 {"role": "tool", "tool_call_id": call.id, "content": str(result)}]
    final = create(client, messages=messages, tools=[ADD], tool_choice="none", max_tokens=10)
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None
    # the call and its result are in the second prompt
    assert final.usage.prompt_tokens > create(client, messages=messages[:2], max_tokens=1).usage.prompt_tokens + 20


def test_structured_output_parses(client):
    for seed in range(3):
        r = client.chat.completions.parse(model="tiny", messages=ASK, response_format=Pet, max_tokens=150,
                                          temperature=1.0, seed=seed)
        assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Pet)
    r = create(client, messages=[{"role": "user", "content": "a pet as JSON"}], response_format={"type": "json_object"})
    text = r.choices[0].message.content  # unbounded keys: the random model may not close one in time
    assert text.startswith('{"') and (r.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))
    # tools beside a response_format: calls, or the schema's JSON
    r = create(client, tools=[ADD], response_format={"type": "json_schema", "json_schema": {
        "name": "pet", "schema": Pet.model_json_schema(), "strict": True}}, max_tokens=150)
    message = r.choices[0].message
    assert message.tool_calls or Pet.model_validate_json(message.content)


def test_logit_bias(client, engine):
    greedy = create(client, max_tokens=3, logprobs=True).choices[0].logprobs.content
    first = engine.tokenizer.encode(greedy[0].token)[0]
    banned = create(client, max_tokens=3, logprobs=True, logit_bias={str(first): -100}).choices[0].logprobs.content
    assert banned[0].token != greedy[0].token
    forced = engine.tokenizer.encode(" cat")[0]
    r = client.completions.create(model="tiny", prompt="the", max_tokens=4, temperature=1.0, seed=0,
                                  logit_bias={str(forced): 100})
    assert r.choices[0].text == " cat" * 4


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [ADD, ADD]}, "tools[1]"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"logit_bias": {"5": -100.5}}, "logit_bias.5"),
    ({"logit_bias": {"10000000": 1}}, "logit_bias"),
    ({"logit_bias": {"x": 1}}, "logit_bias.x"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}, "response_format"),
])
def test_bad_tool_and_format_requests_are_400(base_url, extra, param):
    body = json.dumps({"model": "tiny", "messages": ASK, "max_tokens": 4, **extra}).encode()
    request = urllib.request.Request(base_url + "/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 400
    error = json.loads(e.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
