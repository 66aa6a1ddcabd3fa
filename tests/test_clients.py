"""Real clients against a live server on loopback: LangChain's `with_structured_output` and
`bind_tools` (langchain-openai), and LiteLLM, with the tiny random model (the grammar makes
its replies well-formed; tests/test_tools.py covers the official openai SDK)."""

import os

import pytest
from pydantic import BaseModel, Field

from opengpt4.engine.generate import Engine
from opengpt4.serve.app import create_app
from tests.helpers import chat_decoder, live_server

langchain_openai = pytest.importorskip("langchain_openai")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM would fetch its price list at import
litellm = pytest.importorskip("litellm")


class Pet(BaseModel):
    """A pet."""

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=30)
    vaccinated: bool


class Add(BaseModel):
    """Add two integers."""

    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)


@pytest.fixture(scope="module")
def base_url(tiny_tokenizer):
    with live_server(create_app({"tiny": Engine(chat_decoder(tiny_tokenizer), tiny_tokenizer, pack=False)})) as url:
        yield url


@pytest.fixture(scope="module")
def llm(base_url):
    return langchain_openai.ChatOpenAI(base_url=base_url, api_key="x", model="tiny", max_tokens=150, temperature=1.0,
                                       max_retries=0, timeout=60)


def test_langchain_with_structured_output(llm):
    # (json_mode sends no schema: the random model's keys need not end, so tests/test_tools.py checks it)
    for method in ("json_schema", "function_calling"):
        # strict: function_calling's schema gets additionalProperties false (else extra keys until max_tokens)
        structured = llm.with_structured_output(Pet, method=method, include_raw=True, strict=method == "function_calling")
        out = structured.invoke("Describe a pet.")
        assert out["parsing_error"] is None and isinstance(out["parsed"], Pet), (method, out["raw"])


def test_langchain_bind_tools(llm):
    reply = llm.bind_tools([Add], tool_choice="Add", strict=True).invoke("What is 2 + 3?")
    [call] = reply.tool_calls
    assert call["name"] == "Add" and Add.model_validate(call["args"]) and call["id"].startswith("call_")
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    streamed = None
    for chunk in llm.bind_tools([Add], tool_choice="any", strict=True).stream("What is 2 + 3?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert [c["name"] for c in streamed.tool_calls][:1] == ["Add"] and not streamed.invalid_tool_calls


def test_litellm_tool_call_and_structured_output(base_url):
    common = {"model": "openai/tiny", "api_base": base_url, "api_key": "x", "max_tokens": 150, "temperature": 1.0,
              "seed": 0}
    r = litellm.completion(messages=[{"role": "user", "content": "2 + 3?"}], tool_choice="required", tools=[
        {"type": "function", "function": {"name": "add", "parameters": {**Add.model_json_schema(),
                                                                        "additionalProperties": False}}}], **common)
    [call] = r.choices[0].message.tool_calls[:1]
    assert call.function.name == "add" and Add.model_validate_json(call.function.arguments)
    assert r.choices[0].finish_reason == "tool_calls"
    r = litellm.completion(messages=[{"role": "user", "content": "a pet"}], response_format=Pet, **common)
    assert Pet.model_validate_json(r.choices[0].message.content)
