"""World-fact QA in chat format: the pretraining world probe's questions, asked as chat user messages.

The questions are `World.eval_sets()["world_qa"]`, the same the pretraining probe asks
(train/evaluate.py) by kind: fact_seen (facts only read in documents), fact_template (facts
asked in pretraining, now in a held-out phrasing) and fact_unseen (entities never seen: the
chance-level control). The chat data never answers them (conversations.py, "probe facts"), so
after SFT this measures whether the facts pretraining taught are still reachable in chat, for
comparison with the probe's accuracy on the same questions.

The world is generated from `world_size` and `world_seed`, or from a pretraining data dir's
index.json (preset and seed) when `data_dir` is one.

Answer extraction: a chat reply is a sentence ("Kefaloth Geiksor works for Maxgagu."), not the
probe's bare first line, so the answer is the first value of the world (any fact's value, in
the question's language: a city, a person, a year, a word) that the reply names as a whole
word, case-sensitively, skipping values the question itself names (the subject). Correct when
it is the ideal. `exact_first_line` reports the probe's own rule (the first line is exactly
the ideal) next to it.
"""

from __future__ import annotations

import re
from typing import Any

from opengpt4.data.chat.conversations import question_text
from opengpt4.data.world import LANGUAGES, World
from opengpt4.evals.api import Decoding, Eval, SampleResult
from opengpt4.evals.benchmarks.common import world_for
from opengpt4.evals.benchmarks.system_constraints import rate


def value_pattern(world: World, lang: str) -> re.Pattern:
    """Every fact value of the world in `lang`, longest first, as whole words."""
    values = sorted({f.value_in(lang) for f in world.facts}, key=lambda v: (-len(v), v))
    return re.compile(r"(?<!\w)(" + "|".join(map(re.escape, values)) + r")(?!\w)")


def extract(reply: str, question: str, pattern: re.Pattern) -> str | None:
    """The first world value the reply names that the question does not."""
    for m in pattern.finditer(reply):
        if not re.search(rf"(?<!\w){re.escape(m.group(1))}(?!\w)", question):
            return m.group(1)
    return None


class WorldChat(Eval):
    batch_size = 16
    metric = "accuracy"

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, world_size: str = "mini",
                 world_seed: int = 0, max_tokens: int = 48, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.world = world_for(data_dir, world_size, world_seed)
        self.patterns = {lang: value_pattern(self.world, lang) for lang in LANGUAGES}
        self.decoding = Decoding(max_tokens=max_tokens, temperature=0.0)

    def load_samples(self) -> list[dict[str, Any]]:
        return [{"sample_id": f"world_chat/{i}", "question": question_text(q.prompt, q.lang), "ideal": q.answer,
                 "kind": q.kind, "lang": q.lang, "category": q.category}
                for i, q in enumerate(self.world.eval_sets()["world_qa"])]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        prompts = [[{"role": "user", "content": s["question"]}] for s in samples]
        completions = self.completion_fn.complete(prompts, self.decoding)
        results = []
        for sample, messages, completion in zip(samples, prompts, completions, strict=True):
            reply = completion.texts[0]
            answer = extract(reply, sample["question"], self.patterns[sample["lang"]])
            results.append(SampleResult(
                sample_id=sample["sample_id"], prompt=messages, output=reply, parsed=answer, ideal=sample["ideal"],
                score=float(answer == sample["ideal"]),
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                extra={"kind": sample["kind"], "lang": sample["lang"],
                       "exact_first_line": reply.strip().split("\n")[0].strip() == sample["ideal"]}))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        kinds = sorted({r.extra["kind"] for r in results})
        langs = sorted({r.extra["lang"] for r in results})
        return {
            "accuracy_by_kind": {k: rate([r.score == 1 for r in results if r.extra["kind"] == k]) for k in kinds},
            "accuracy_by_lang": {lang: rate([r.score == 1 for r in results if r.extra["lang"] == lang]) for lang in langs},
            "exact_first_line_by_kind": {k: rate([r.extra["exact_first_line"] for r in results if r.extra["kind"] == k])
                                         for k in kinds},
            "answered": rate([r.parsed is not None for r in results]),
        }
