"""JSON mode (`response_format: {"type": "json_object"}`): decoding constrained to one JSON object.

`JsonPrefix` is a pushdown automaton over characters that accepts exactly the prefixes of a
JSON object (RFC 8259 grammar; the root must be an object, as OpenAI's JSON mode promises).
Its state is an immutable tuple, so trying a candidate token costs one `feed` of that token's
text and no copying. `constrained_token` picks the model's preferred token among those that
keep the text a valid prefix: candidates are tried in the order the sampler would draw them
(argmax first for greedy; resampling without the rejected ones otherwise), and when the top few
hundred are all invalid it scans the whole vocabulary by logit. Once the object is closed, the
only token allowed is end-of-turn, so a reply is always a complete object unless it runs out of
max_tokens (finish_reason "length", as with OpenAI).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

WHITESPACE = " \t\n\r"
DIGITS = "0123456789"
LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
MAX_WHITESPACE_RUN = 64  # a model stuck emitting newlines would otherwise spin until max_tokens

# modes
VALUE, OBJ_FIRST, OBJ_KEY, COLON, AFTER, ARR_FIRST, STRING, ESCAPE, UNICODE, NUMBER, LITERAL, DONE = range(12)
# number sub-states: what has been read so far
N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
N_CAN_END = {N_ZERO, N_INT, N_FRAC, N_EXP}


@dataclass(frozen=True)
class JsonPrefix:
    stack: str = ""  # open containers, innermost last: "o" object, "a" array
    mode: int = VALUE
    aux: object = None  # STRING: is a key; UNICODE: hex digits left; NUMBER: sub-state; LITERAL: chars left
    spaces: int = 0  # whitespace run length outside strings
    started: bool = False

    @property
    def complete(self) -> bool:
        return self.mode == DONE

    def feed(self, text: str) -> JsonPrefix | None:
        """The state after `text`, or None if `text` cannot continue a JSON object here."""
        state: JsonPrefix | None = self
        for ch in text:
            state = state._step(ch)
            if state is None:
                return None
        return state

    def _value_done(self) -> JsonPrefix:
        return JsonPrefix(self.stack, AFTER if self.stack else DONE, None, 0, True)

    def _step(self, ch: str) -> JsonPrefix | None:  # noqa: C901 - one branch per grammar state reads best
        stack, mode, aux = self.stack, self.mode, self.aux
        if mode == STRING:
            if ch == '"':
                return JsonPrefix(stack, COLON, None, 0, True) if aux else self._value_done()
            if ch == "\\":
                return JsonPrefix(stack, ESCAPE, aux, 0, True)
            return self if ord(ch) >= 0x20 else None
        if mode == ESCAPE:
            if ch == "u":
                return JsonPrefix(stack, UNICODE, (aux, 4), 0, True)
            return JsonPrefix(stack, STRING, aux, 0, True) if ch in '"\\/bfnrt' else None
        if mode == UNICODE:
            is_key, left = aux
            if ch not in "0123456789abcdefABCDEF":
                return None
            return JsonPrefix(stack, STRING, is_key, 0, True) if left == 1 else JsonPrefix(stack, UNICODE, (is_key, left - 1), 0, True)
        if mode == NUMBER:
            nxt = _number_step(aux, ch)
            if nxt is not None:
                return JsonPrefix(stack, NUMBER, nxt, 0, True)
            if aux not in N_CAN_END:
                return None
            return self._value_done()._step(ch)  # the character after a number belongs to what follows
        if mode == LITERAL:
            if ch != aux[0]:
                return None
            return self._value_done() if len(aux) == 1 else JsonPrefix(stack, LITERAL, aux[1:], 0, True)
        if ch in WHITESPACE:
            if not self.started or self.spaces >= MAX_WHITESPACE_RUN:  # the reply opens with "{"
                return None
            return JsonPrefix(stack, mode, aux, self.spaces + 1, self.started)
        if mode == DONE:
            return None
        if mode in (VALUE, ARR_FIRST):
            if mode == ARR_FIRST and ch == "]":
                return JsonPrefix(stack[:-1], AFTER if len(stack) > 1 else DONE, None, 0, True)
            if not self.started and ch != "{":
                return None  # json_object: the root is an object
            if ch == "{":
                return JsonPrefix(stack + "o", OBJ_FIRST, None, 0, True)
            if ch == "[":
                return JsonPrefix(stack + "a", ARR_FIRST, None, 0, True)
            if ch == '"':
                return JsonPrefix(stack, STRING, False, 0, True)
            if ch == "-" or ch in DIGITS:
                return JsonPrefix(stack, NUMBER, _number_step(None, ch), 0, True)
            if ch in LITERALS:
                return JsonPrefix(stack, LITERAL, LITERALS[ch], 0, True)
            return None
        if mode in (OBJ_FIRST, OBJ_KEY):
            if ch == '"':
                return JsonPrefix(stack, STRING, True, 0, True)
            if mode == OBJ_FIRST and ch == "}":
                return JsonPrefix(stack[:-1], AFTER if len(stack) > 1 else DONE, None, 0, True)
            return None
        if mode == COLON:
            return JsonPrefix(stack, VALUE, None, 0, True) if ch == ":" else None
        if mode == AFTER:
            top = stack[-1]
            if ch == ",":
                return JsonPrefix(stack, OBJ_KEY if top == "o" else VALUE, None, 0, True)
            if ch == ("}" if top == "o" else "]"):
                return JsonPrefix(stack[:-1], AFTER if len(stack) > 1 else DONE, None, 0, True)
        return None


def _number_step(sub: int | None, ch: str) -> int | None:
    """The number sub-state after `ch`, or None if `ch` does not extend the number."""
    if sub is None:
        return N_SIGN if ch == "-" else N_ZERO if ch == "0" else N_INT if ch in DIGITS else None
    if sub == N_SIGN:
        return N_ZERO if ch == "0" else N_INT if ch in DIGITS else None
    if sub in (N_ZERO, N_INT):
        if ch == ".":
            return N_DOT
        if ch in "eE":
            return N_E
        return N_INT if sub == N_INT and ch in DIGITS else None
    if sub in (N_DOT, N_FRAC):
        if ch in DIGITS:
            return N_FRAC
        return N_E if sub == N_FRAC and ch in "eE" else None
    if sub == N_E:
        return N_ESIGN if ch in "+-" else N_EXP if ch in DIGITS else None
    return N_EXP if ch in DIGITS else None  # N_ESIGN, N_EXP


def constrained_token(logits: Tensor, state: JsonPrefix, token_texts: list[str], stop_ids: set[int],
                      sample, first_tries: int = 256) -> tuple[int, JsonPrefix]:
    """The token `sample(logits)` would choose, restricted to tokens that keep a valid prefix.

    `sample(logits) -> int` is the row's own sampler (greedy, or seeded multinomial), so the
    constraint changes which tokens are possible, not how they are drawn. Returns the token and
    the state after it (end-of-turn leaves the state as is)."""
    if state.complete:
        return min(stop_ids), state
    logits = logits.float().clone()
    for _ in range(first_tries):
        token = sample(logits)
        if token not in stop_ids:  # end-of-turn only once the object is closed (handled above)
            nxt = state.feed(token_texts[token])
            if nxt is not None and token_texts[token]:
                return token, nxt
        logits[token] = float("-inf")
        if torch.isneginf(logits).all():
            break
    for token in torch.argsort(logits, descending=True).tolist():  # rare: scan the rest by logit
        if token not in stop_ids and token_texts[token]:
            nxt = state.feed(token_texts[token])
            if nxt is not None:
                return token, nxt
    raise RuntimeError("JSON mode: no token of the vocabulary continues the object")
