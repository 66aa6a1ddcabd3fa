"""Grammar-constrained decoding with llguidance (the engine vLLM, SGLang and llama.cpp use).

A request's output can be held to a grammar: a JSON schema (`response_format`), any JSON
object (JSON mode), or tool calls in the chat template's `<tool_call>[...]</tool_call>` format.
The grammar is llguidance's serialized form, a string, so it travels in `SamplingParams` and
every choice of every request gets its own `Matcher` (the per-row parser state). Each step the
matcher gives the set of tokens that keep the output a prefix of the grammar's language; the
one sampler (`sampling.next_token`) masks the rest to -inf, so greedy, seeded sampling,
penalties and logit_bias all work unchanged on what is left. llguidance computes a mask in
~0.1 ms for SmolLM2's 49k vocabulary, a small fraction of a decode step.

JSON is written with fixed separators (`", "` and `": "`, Python's json.dumps style) and no
other whitespace: a small model left free to add whitespace can spin on newlines until
max_tokens, and a fixed layout lets the server stream tool-call arguments without a parser.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import numpy as np
import torch
from torch import Tensor

from opengpt4.errors import InvalidRequest
from opengpt4.tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, Tokenizer

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """Output exactly one JSON value valid under `schema`."""
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)


def json_object_grammar() -> str:
    """JSON mode: one JSON object, any keys (OpenAI's json_object)."""
    return json_schema_grammar({"type": "object"})


def tool_call_grammar(functions: dict[str, dict[str, Any]], *, required: bool, parallel: bool,
                      otherwise: dict[str, Any] | None = None) -> str:
    """Tool calls as the chat template asks for them:
    `<tool_call>[{"name": "f", "arguments": {...}}, ...]</tool_call>`, each call's arguments valid
    under its function's parameter schema. `functions`: name -> parameters schema.
    required: the reply must be calls; otherwise it may instead be text that does not start with
    `<tool_call>`, or, given `otherwise` (a response_format schema), a JSON value valid under it.
    parallel: one or more calls; else exactly one."""
    calls = []
    for i, (name, schema) in enumerate(functions.items()):
        head = '{"name": ' + json.dumps(name) + ', "arguments": '  # the layout format_tool_calls writes
        calls.append(f"call_{i}: {_lit(head)} %json {json.dumps(_layout(schema))} {_lit('}')}")
    more = f' ({_lit(", ")} call)*' if parallel else ""
    lines = [f"calls: {_lit(TOOL_CALL_OPEN + '[')} call{more} {_lit(']' + TOOL_CALL_CLOSE)}",
             "call: " + " | ".join(f"call_{i}" for i in range(len(functions))), *calls]
    if required:
        start = "start: calls"
    elif otherwise is not None:
        start = f"start: calls | %json {json.dumps(_layout(otherwise))}"
    else:
        # llguidance's regexes have complement (~) and intersection (&): any text but a call's opening.
        lines.append(rf"TEXT: /(.|\n)*/ & ~/{_regex_escape(TOOL_CALL_OPEN)}(.|\n)*/")
        start = "start: calls | TEXT"
    return llguidance.LLMatcher.grammar_from_lark("\n".join([start, *lines]))


def _lit(text: str) -> str:
    """A lark string literal (JSON's escapes are lark's)."""
    return json.dumps(text)


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$/" else c for c in text)


def _layout(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with our JSON layout as its llguidance options (x-guidance)."""
    return {**schema, "x-guidance": JSON_LAYOUT}


class GrammarTokenizer:
    """llguidance's view of a model's vocabulary (built once per engine: ~0.2 s for 49k tokens).
    Masks are as wide as the model's logits; every end-of-turn id counts as end of output."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._tokenizer = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size,
                                                 eos_token=tokenizer.stop_ids)

    def check(self, grammar: str, param: str) -> None:
        """InvalidRequest naming `param` if llguidance cannot compile the grammar (an unsupported
        or malformed schema): raised before the request is queued."""
        error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise InvalidRequest(f"{param}: the schema cannot be enforced: {error}", param=param)

    def matcher(self, grammar: str) -> Matcher:
        return Matcher(llguidance.LLMatcher(self._tokenizer, grammar, log_level=0), self.vocab_size)


class Matcher:
    """One output's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher, self._vocab_size = matcher, vocab_size
        self._check()

    def allowed(self) -> Tensor:
        """Bool (V,): the tokens that keep the output in the grammar (end-of-turn once it is complete)."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self._vocab_size].astype(bool))

    def consume(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._check()

    def _check(self) -> None:
        # Only a grammar that slipped past GrammarTokenizer.check, or a token outside the mask
        # (a bug), gets here: fail the one request rather than sample from an empty set.
        if self._matcher.is_error():
            raise InvalidRequest(f"constrained decoding failed: {self._matcher.get_error()}")
