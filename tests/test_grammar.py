"""Grammar-constrained decoding (engine/grammar.py), logit_bias, the tools part of the chat
template, and reading tool calls back (serve/tools.py), with the tiny random model: its output
is noise, so whatever structure it has comes from the grammar."""

import json
import random

import pytest
from pydantic import BaseModel, Field

from opengpt4.engine import grammar
from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import Scheduler
from opengpt4.errors import InvalidRequest, TokenizerError
from opengpt4.serve.tools import ToolCallReader
from opengpt4.tokenizer import TOOL_CALL_OPEN
from tests.helpers import chat_decoder

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                        "b": {"type": "integer", "minimum": -99, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
FUNCTIONS = {"get_weather": WEATHER, "add": ADD}


class Pet(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=30)
    kind: str = Field(pattern="^(cat|dog)$")
    vaccinated: bool


def strict_schema(model: type[BaseModel]) -> dict:
    return {**model.model_json_schema(), "additionalProperties": False}


@pytest.fixture(scope="module")
def engine(tiny_tokenizer) -> Engine:
    return Engine(chat_decoder(tiny_tokenizer), tiny_tokenizer, pack=False)


def complete(engine: Engine, params: SamplingParams, text: str = "the cat as json") -> list:
    prompt = engine.chat_prompt([{"role": "user", "content": text}])
    return engine.generate([prompt], params)[0]


def read_calls(text: str) -> list[tuple[str, dict]]:
    reader = ToolCallReader()
    assert reader.feed(text)[0] == ""
    return [(c.function.name, json.loads(c.function.arguments)) for c in reader.calls]


def test_strict_schema_output_validates_even_from_a_random_model(engine):
    g = grammar.json_schema_grammar(strict_schema(Pet))
    free = complete(engine, SamplingParams(max_tokens=60, temperature=0.0))[0].text
    assert not free.startswith("{")  # the grammar, not the model, makes it JSON
    finished = 0
    for seed in range(8):
        [c] = complete(engine, SamplingParams(max_tokens=120, temperature=1.0, seed=seed, grammar=g))
        if c.finish_reason == "stop":
            finished += 1
            Pet.model_validate_json(c.text)
        else:
            assert c.text.startswith('{"name": "')
    assert finished >= 6


def test_json_object_mode_gives_objects(engine):
    for seed in range(4):
        [c] = complete(engine, SamplingParams(max_tokens=80, temperature=1.0, seed=seed,
                                              grammar=grammar.json_object_grammar()))
        assert c.text.startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)


def test_required_tool_calls_are_calls_with_valid_arguments(engine):
    g = grammar.tool_call_grammar(FUNCTIONS, required=True, parallel=True)
    seen = set()
    for seed in range(6):
        [c] = complete(engine, SamplingParams(max_tokens=150, temperature=1.0, seed=seed, grammar=g))
        assert c.text.startswith(TOOL_CALL_OPEN + '[{"name": "')
        if c.finish_reason != "stop":
            continue
        for name, arguments in read_calls(c.text):
            seen.add(name)
            assert set(arguments) == set(FUNCTIONS[name]["required"])
            if name == "add":
                assert all(-99 <= v <= 99 for v in arguments.values())
            else:
                assert arguments["unit"] in ("C", "F") and len(arguments["city"]) <= 12
    assert seen


def accepts(engine: Engine, g: str, text: str) -> bool:
    """Whether `text` (as the tokenizer encodes it) is a complete output of grammar `g`."""
    matcher = engine.grammar_tokenizer.matcher(g)
    for token in engine.tokenizer.encode(text):
        if not matcher.allowed()[token]:
            return False
        matcher.consume(token)
    return bool(matcher.allowed()[engine.tokenizer.stop_ids].any())


def test_one_call_when_not_parallel_and_text_or_calls_under_auto(engine):
    one = grammar.tool_call_grammar({"add": ADD}, required=True, parallel=False)
    for seed in range(4):
        [c] = complete(engine, SamplingParams(max_tokens=60, temperature=1.0, seed=seed, grammar=one))
        if c.finish_reason == "stop":
            assert [name for name, _ in read_calls(c.text)] == ["add"]
    call = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    assert accepts(engine, one, f"<tool_call>[{call}]</tool_call>")
    assert not accepts(engine, one, f"<tool_call>[{call}, {call}]</tool_call>")
    auto = grammar.tool_call_grammar(FUNCTIONS, required=False, parallel=True)
    assert accepts(engine, auto, f"<tool_call>[{call}, {call}]</tool_call>")
    assert accepts(engine, auto, "Hello <tool_call> is text here") and accepts(engine, auto, "<tool")
    assert not accepts(engine, auto, "<tool_call>hello")  # once opened, only calls
    assert not accepts(engine, auto, '<tool_call>[{"name": "add", "arguments": {"a": 1}}]</tool_call>')
    with_schema = grammar.tool_call_grammar(FUNCTIONS, required=False, parallel=True, otherwise=ADD)
    assert accepts(engine, with_schema, '{"a": 5, "b": 6}') and not accepts(engine, with_schema, "hello")


def test_per_row_grammars_in_the_batched_scheduler(engine):
    """Rows with different grammars (and none) decode in one batch, each held to its own."""
    scheduler = Scheduler(engine, max_batch=4)
    prompt = engine.chat_prompt([{"role": "user", "content": "the cat"}])
    grammars = [grammar.json_schema_grammar(strict_schema(Pet)), None,
                grammar.tool_call_grammar(FUNCTIONS, required=True, parallel=True), grammar.json_object_grammar()]
    scheduler.start()
    try:
        handles = [scheduler.submit(prompt, SamplingParams(max_tokens=120, temperature=1.0, seed=i, grammar=g, n=2))
                   for i, g in enumerate(grammars)]
        outputs = []
        for h in handles:
            texts, finish = ["", ""], ["", ""]
            for d in h.deltas():
                texts[d.sample_index] += d.text
                finish[d.sample_index] = d.finish_reason or finish[d.sample_index]
            outputs.append(list(zip(texts, finish, strict=True)))
    finally:
        scheduler.stop()
    for text, finish in outputs[0]:
        assert finish == "length" or Pet.model_validate_json(text)
    assert not any(text.startswith("{") for text, _ in outputs[1])
    for text, finish in outputs[2]:
        assert text.startswith(TOOL_CALL_OPEN) and (finish == "length" or read_calls(text))
    for text, finish in outputs[3]:
        assert finish == "length" or isinstance(json.loads(text), dict)


def test_an_unenforceable_schema_is_refused_before_decoding(engine):
    bad = grammar.json_schema_grammar({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(InvalidRequest) as e:
        engine.grammar_tokenizer.check(bad, "response_format")
    assert e.value.param == "response_format"


def test_logit_bias_bans_and_forces(engine):
    greedy = complete(engine, SamplingParams(max_tokens=4, temperature=0.0))[0].token_ids
    banned = complete(engine, SamplingParams(max_tokens=4, temperature=0.0, logit_bias={greedy[0]: -100}))[0]
    assert greedy[0] not in banned.token_ids
    forced_id = engine.tokenizer.encode(" cat")[0]
    for temperature in (0.0, 1.0):
        forced = complete(engine, SamplingParams(max_tokens=6, temperature=temperature, seed=1, ignore_eos=True,
                                                 logit_bias={forced_id: 100}))[0]
        assert forced.token_ids == [forced_id] * 6
    for bad in (-100.5, 101):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias={1: bad})


def test_tools_render_in_the_system_message_and_results_as_user_turns(tiny_tokenizer):
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}},
            {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a":1,"b":1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "tool", "tool_call_id": "call_2", "content": "2"},
    ]
    text = tiny_tokenizer.decode(tiny_tokenizer.render_chat(messages, tools=tools, add_generation_prompt=True).ids)
    signatures = json.dumps([tools[0]["function"]])
    assert text.startswith(f"<|im_start|>system\nBe brief.\n\nYou can call these functions:\n<tools>{signatures}</tools>")
    assert ('<|im_start|>assistant\n<tool_call>[{"name": "add", "arguments": {"a": 2, "b": 3}}, '
            '{"name": "add", "arguments": {"a": 1, "b": 1}}]</tool_call><|im_end|>\n') in text
    assert text.endswith("<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n2\n"
                         "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # without tools nothing changes; an assistant's calls are trained on like its text
    plain = tiny_tokenizer.render_chat(messages[:2])
    assert tiny_tokenizer.decode(plain.ids) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n"
    encoding = tiny_tokenizer.render_chat(messages[1:3])
    trained = tiny_tokenizer.decode([t for t, m in zip(encoding.ids, encoding.loss_mask, strict=True) if m])
    assert trained.startswith("<tool_call>[") and trained.endswith("</tool_call><|im_end|>")
    # a response_format schema is stated in the system message too (after the tools, if any)
    told = tiny_tokenizer.decode(tiny_tokenizer.render_chat(messages[1:2], response_schema=ADD).ids)
    assert told.startswith(f"<|im_start|>system\nReply with JSON that follows this schema:\n{json.dumps(ADD)}<|im_end|>")
    both = tiny_tokenizer.decode(tiny_tokenizer.render_chat(messages[:2], tools=tools, response_schema=ADD).ids)
    assert f"If no function fits, answer in plain text.\n\nReply with JSON that follows this schema:\n{json.dumps(ADD)}" in both
    with pytest.raises(TokenizerError, match="arguments"):
        tiny_tokenizer.render_chat([{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}])


def test_tool_call_reader_reassembles_any_chunking():
    text = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Pa}ri\\"s{", "n": [1, {"a": 2}]}}, '
            '{"name": "add", "arguments": {}}]</tool_call>')
    for seed in range(50):
        rng, reader, deltas, i = random.Random(seed), ToolCallReader(), [], 0
        while i < len(text):
            j = min(len(text), i + rng.randint(1, 7))
            content, calls = reader.feed(text[i:j])
            assert content == ""
            deltas += calls
            i = j
        assert reader.finish("stop") == ("", "tool_calls") and reader.content is None
        firsts = [d for d in deltas if d.id is not None]
        assert [(d.index, d.function.name, d.type) for d in firsts] == [(0, "get_weather", "function"), (1, "add", "function")]
        arguments = ["".join(d.function.arguments or "" for d in deltas if d.index == k) for k in (0, 1)]
        assert json.loads(arguments[0]) == {"city": 'Pa}ri"s{', "n": [1, {"a": 2}]} and arguments[1] == "{}"
    # text that only looks like an opening for a while is content, held back until it is not
    reader = ToolCallReader()
    assert reader.feed("<too") == ("", []) and reader.feed("ls>") == ("<tools>", [])
    assert reader.finish("stop") == ("", "stop") and reader.content == "<tools>"
    reader = ToolCallReader()
    assert reader.feed("<tool_") == ("", []) and reader.finish("length") == ("<tool_", "length")
