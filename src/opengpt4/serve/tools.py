"""Tool calls and structured outputs: what a chat request's `tools`, `tool_choice` and
`response_format` turn into (the tools the prompt describes and the grammar the reply must
follow), and the reply read back as OpenAI's `tool_calls`, whole or as stream deltas.

The grammar (engine/grammar.py) fixes the reply's layout: either text (or a JSON value under
response_format) or exactly `<tool_call>[{"name": "f", "arguments": {...}}, ...]</tool_call>`
with fixed separators. So reading calls needs no general parser: `ToolCallReader` steps over
the known literals and tracks the nesting of each arguments object to know where it ends, which
lets a stream send each call's name as soon as it is written and its arguments piece by piece.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from opengpt4.engine.generate import Engine
from opengpt4.engine.grammar import json_schema_grammar, tool_call_grammar
from opengpt4.errors import InvalidRequest
from opengpt4.serve.schemas import ChatCompletionRequest, ChunkFunction, ChunkToolCall, FunctionCall, ToolCall
from opengpt4.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass
class ChatPlan:
    """How a chat request is generated and read back."""

    tools: list[dict[str, Any]] | None = None  # described in the system message
    response_schema: dict[str, Any] | None = None  # stated in the system message too
    grammar: str | None = None  # the reply's grammar (SamplingParams.grammar)
    calls: bool = False  # whether the reply may be tool calls (read with ToolCallReader)


def plan_chat(body: ChatCompletionRequest, engine: Engine) -> ChatPlan:
    """The plan for a request; InvalidRequest naming the field for what cannot be honoured."""
    schema = response_schema(body)
    if schema is not None:  # checked alone first, so an error names the field that caused it
        engine.grammar_tokenizer.check(json_schema_grammar(schema), "response_format")
    choice = body.tool_choice or ("auto" if body.tools else "none")
    if choice != "none" and not body.tools:
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
    if choice == "none":  # the tools are not described: the model cannot call them anyway
        return ChatPlan(response_schema=schema, grammar=json_schema_grammar(schema) if schema is not None else None)
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(body.tools):
        if tool.function.name in functions:
            raise InvalidRequest(f"tools[{i}]: a second function named {tool.function.name!r}", param=f"tools[{i}]")
        functions[tool.function.name] = tool.function.parameters or NO_ARGUMENTS
    parallel = body.parallel_tool_calls
    if not isinstance(choice, str):  # a named function: exactly one call of it
        name = choice.function.name
        if name not in functions:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        functions, parallel = {name: functions[name]}, False
    required = choice != "auto"
    grammar = tool_call_grammar(functions, required=required, parallel=parallel, otherwise=schema)
    engine.grammar_tokenizer.check(grammar, "tools")
    return ChatPlan([t.model_dump(exclude_none=True) for t in body.tools], None if required else schema, grammar,
                    calls=True)


def response_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema the reply must follow, if response_format asks for one."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    return fmt.json_schema.schema_ or {"type": "object"}


def check_logit_bias(bias: dict[int, float] | None, vocab_size: int) -> dict[int, float]:
    """The bias by token id, each id checked against the vocabulary (the values are checked by the schema)."""
    bias = dict(bias or {})
    for token in bias:
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"Invalid key in 'logit_bias': {token}. The token ids of this model are "
                                 f"0..{vocab_size - 1}.", param="logit_bias")
    return bias


@dataclass
class ToolCallReader:
    """One choice's reply read as it is generated: `feed` each text delta, get back the content
    to send and the tool-call deltas, in OpenAI's stream format."""

    text: str = ""  # everything fed so far
    calls: list[ToolCall] = field(default_factory=list)
    mode: str = "?"  # "?" (could still open a call), "content" or "calls"
    _pos: int = 0  # calls mode: how far `text` has been read
    _step: str = "["  # calls mode: the literal or part expected next
    _depth: int = 0  # the open braces/brackets of the arguments being read
    _in_string: bool = False
    _escaped: bool = False

    def feed(self, delta: str) -> tuple[str, list[ChunkToolCall]]:
        self.text += delta
        if self.mode == "content":
            return delta, []
        if self.mode == "?":
            if TOOL_CALL_OPEN.startswith(self.text):
                return "", []  # "<tool" may still become a call: hold it back
            if not self.text.startswith(TOOL_CALL_OPEN):
                self.mode = "content"
                return self.text, []
            self.mode, self._pos = "calls", len(TOOL_CALL_OPEN)
        return "", self._read_calls()

    def finish(self, finish_reason: str) -> tuple[str, str]:
        """At the end of the choice: content still held back, and the finish reason to report."""
        if self.mode == "?":
            self.mode = "content"
            return self.text, finish_reason
        return "", "tool_calls" if self.mode == "calls" and finish_reason == "stop" else finish_reason

    @property
    def content(self) -> str | None:
        return None if self.mode == "calls" else self.text

    def _read_calls(self) -> list[ChunkToolCall]:
        out: list[ChunkToolCall] = []
        while self._pos < len(self.text):
            if self._step == "arguments":
                start = self._pos
                self._scan_arguments()
                piece = self.text[start:self._pos]
                self.calls[-1].function.arguments += piece
                out.append(ChunkToolCall(index=len(self.calls) - 1, function=ChunkFunction(arguments=piece)))
                continue
            if self._step == "name":
                end = self.text.find('"', self._pos + 1)
                if end < 0:
                    break
                name = json.loads(self.text[self._pos:end + 1])
                self.calls.append(ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=name, arguments="")))
                out.append(ChunkToolCall(index=len(self.calls) - 1, id=self.calls[-1].id, type="function",
                                         function=ChunkFunction(name=name, arguments="")))
                self._pos, self._step = end + 1, ', "arguments": '
                continue
            if self._step == "next":  # after a call: another one, or the end
                if self.text.startswith(", ", self._pos):
                    self._pos, self._step = self._pos + 2, '{"name": '
                    continue
                if len(self.text) - self._pos < 2:
                    break
                self._step = "]" + TOOL_CALL_CLOSE
            literal = self._step
            if len(self.text) - self._pos < len(literal):
                break
            if not self.text.startswith(literal, self._pos):  # the grammar makes this impossible
                raise RuntimeError(f"tool call text out of the grammar's layout at {self._pos}: {self.text!r}")
            self._pos += len(literal)
            self._step = {"[": '{"name": ', '{"name": ': "name", ', "arguments": ': "arguments",
                          "}": "next"}.get(literal, "done")
            if self._step == "done":
                self._pos = len(self.text)
        return out

    def _scan_arguments(self) -> None:
        """Advance over the arguments object; at its closing brace, expect the call's own."""
        while self._pos < len(self.text):
            c = self.text[self._pos]
            self._pos += 1
            if self._in_string:  # a brace in a string does not count
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
                continue
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._step = "}"
                    return
