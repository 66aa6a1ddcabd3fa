"""Token ids → text deltas, safe to show as they arrive.

Two things make streaming text harder than decoding at the end:
- a character can span several byte-level tokens (emoji, CJK): a token that ends inside a
  character decodes to U+FFFD, so we wait for the rest before emitting anything;
- a stop string can span several tokens: the tail of the text that could still grow into
  a stop string is held back, and when a stop string completes, the text is cut before it.
Decoding re-reads only a short window of recent ids (the prefix/read offsets of TGI and
vLLM), so a long generation costs linear, not quadratic, time.
"""

from __future__ import annotations

from opengpt4.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] is context for the next decode
        self.read_offset = 0  # ids before this are already in self.text
        self.text = ""  # all complete text decoded so far (possibly cut at a stop string)
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False  # a stop string was found; nothing more will be emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to emit (often '')."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: release what was held back (an unfinished character decodes as U+FFFD)."""
        if self.stopped:
            return ""
        if self.read_offset < len(self.ids):
            before = self._decode(self.ids[self.prefix_offset : self.read_offset])
            self.text += self._decode(self.ids[self.prefix_offset :])[len(before) :]
            self.read_offset = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # A stop string can only start in the held-back tail: everything emitted was checked.
        hits = [i for i in (self.text.find(s, max(0, self.emitted - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            cut = min(hits)
            self.text, self.stopped = self.text[:cut], True
            delta, self.emitted = self.text[self.emitted :], cut
            return delta
        end = len(self.text) if final else len(self.text) - self._partial_stop_length()
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted : end], end
        return delta

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
