"""World-fact QA, greedy: the pretraining probe's questions, or the same facts in every language.

Two question sets, both from the seeded world (or a pretraining data dir's, via `world_for`):
- `probe`: `World.eval_sets()["world_qa"]`, the questions the pretraining probe asks
  (train/evaluate.py), by kind: fact_seen (facts only read in documents), fact_template (facts
  asked in pretraining, now in a held-out phrasing) and fact_unseen (entities never seen: the
  chance-level control).
- `languages`: `World.language_questions()`, the same fact_seen facts asked in each of the five
  languages (the announcement's MMLU-in-many-languages figure, in miniature).
The chat data never answers either (conversations.py asks only facts pretraining asked), so after
SFT this measures whether the facts pretraining taught are still reachable in chat.

Two formats:
- plain (`chat: false`, base models): the probe's "Question: …\\nAnswer:" prompt, correct when the
  first line of the greedy completion is exactly the ideal (the probe's rule).
- chat: the question as a user message. A chat reply is a sentence ("Kefaloth Geiksor works for
  Maxgagu."), so the answer is the first value of the asked attribute (any fact's value for it, in
  the question's language) that the reply names as a whole word, case-sensitively, skipping values
  the question itself names (the subject). Only the asked attribute's values count: French "a été
  écrit par …" names the season "été", and a reply about another attribute of the subject ("… is
  a builder by profession" to "Who employs …?") answers nothing. `exact_first_line` reports the
  probe's rule next to it.

Baseline: every question also carries its subject-blind guess (`World.blind_guess`, the most common
value of the asked attribute); `blind_baseline_by_lang` / `_by_kind` is the accuracy of always
answering that, the bar a model must clear to show it knows *whose* fact it is.
"""

from __future__ import annotations

import re
from typing import Any

from opengpt4.data.chat.conversations import question_text
from opengpt4.data.world import LANGUAGES, World, first_line
from opengpt4.errors import InvalidEvalArgument
from opengpt4.evals.api import Decoding, Eval, SampleResult
from opengpt4.evals.benchmarks.common import world_for
from opengpt4.evals.benchmarks.system_constraints import rate

QUESTION_SETS = ("probe", "languages")


def value_patterns(world: World) -> dict[tuple[str, str], re.Pattern]:
    """By (attribute, language): every value of that attribute in the world, longest first, as whole words."""
    values: dict[tuple[str, str], set[str]] = {}
    for f in world.facts:
        for lang in LANGUAGES:
            values.setdefault((f.attr.name, lang), set()).add(f.value_in(lang))
    longest_first = {key: sorted(found, key=lambda v: (-len(v), v)) for key, found in values.items()}
    return {key: re.compile(r"(?<!\w)(" + "|".join(map(re.escape, found)) + r")(?!\w)")
            for key, found in longest_first.items()}


def extract(reply: str, question: str, pattern: re.Pattern) -> str | None:
    """The first value `pattern` finds in the reply that the question does not name."""
    for m in pattern.finditer(reply):
        if not re.search(rf"(?<!\w){re.escape(m.group(1))}(?!\w)", question):
            return m.group(1)
    return None


class WorldQA(Eval):
    batch_size = 16
    metric = "accuracy"

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, world_size: str = "mini",
                 world_seed: int = 0, questions: str = "probe", chat: bool = True, max_tokens: int | None = None,
                 **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        if questions not in QUESTION_SETS:
            raise InvalidEvalArgument("questions", f"must be one of {', '.join(QUESTION_SETS)}, got {questions!r}")
        self.world = world_for(data_dir, world_size, world_seed)
        self.questions, self.chat = questions, bool(chat)
        # Chat replies are searched for the asked attribute's values; a plain answer is its first line.
        self.patterns = value_patterns(self.world) if self.chat else {}
        # A chat reply is a sentence; a plain answer is one line (the probe's 12 tokens).
        self.decoding = Decoding(max_tokens=max_tokens or (48 if self.chat else 12), temperature=0.0,
                                 stop=() if self.chat else ("\n",))

    def load_samples(self) -> list[dict[str, Any]]:
        qs = self.world.eval_sets()["world_qa"] if self.questions == "probe" else self.world.language_questions()
        name = "world_chat" if self.questions == "probe" else "world_languages"
        return [{"sample_id": f"{name}/{i}", "prompt": q.prompt, "question": question_text(q.prompt, q.lang),
                 "ideal": q.answer, "blind": q.blind, "kind": q.kind, "lang": q.lang, "attr": q.attr,
                 "category": q.category}
                for i, q in enumerate(qs)]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        prompts = [[{"role": "user", "content": s["question"]}] if self.chat else s["prompt"] for s in samples]
        completions = self.completion_fn.complete(prompts, self.decoding)
        results = []
        for sample, prompt, completion in zip(samples, prompts, completions, strict=True):
            reply = completion.texts[0]
            exact = first_line(reply) == sample["ideal"]
            answer = extract(reply, sample["question"], self.patterns[sample["attr"], sample["lang"]]) if self.chat \
                else first_line(reply)
            results.append(SampleResult(
                sample_id=sample["sample_id"], prompt=prompt, output=reply, parsed=answer, ideal=sample["ideal"],
                score=float(answer == sample["ideal"]),
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                extra={"kind": sample["kind"], "lang": sample["lang"], "exact_first_line": exact,
                       "blind_right": sample["blind"] == sample["ideal"]}))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        def by(key: str, value) -> dict[str, Any]:
            groups = sorted({r.extra[key] for r in results})
            return {g: rate([value(r) for r in results if r.extra[key] == g]) for g in groups}

        out = {"accuracy_by_kind": by("kind", lambda r: r.score == 1),
               "accuracy_by_lang": by("lang", lambda r: r.score == 1),
               "blind_baseline_by_kind": by("kind", lambda r: r.extra["blind_right"]),
               "blind_baseline_by_lang": by("lang", lambda r: r.extra["blind_right"])}
        if self.chat:
            out["exact_first_line_by_kind"] = by("kind", lambda r: r.extra["exact_first_line"])
            out["answered"] = rate([r.parsed is not None for r in results])
        return out
