"""The world's multiple-choice exam, scored like MMLU: the GPT-4 announcement's exam accuracy and calibration.

The questions are `World.eval_sets()["world_mc"]`: facts that pretraining only states (never
asks, in any form), in the MMLU layout of the QA documents' multiple-choice practice: a header,
the question, options A-D (the truth and three values of the same kind), "Answer:". Samples
are `eval/world_mc.jsonl` of a pretraining data dir when it has one, else the questions of its
world (or of `world_size` and `world_seed`): the same rows either way.

Two formats of the same questions, with the same sample ids:
  - letters (the default, `world_exam`): each of " A" .. " D" scored after the prompt, as
    mmlu.py scores MMLU and as the practice documents write the answer;
  - cloze (`cloze: true`, `world_exam_cloze`): the options are not shown; each option's text is
    scored as " <value>\\n" after the bare question in the probe's "Question: …\\nAnswer:" layout
    (lm-eval's cloze formulation; the newline ends the answer, so "Kal" is not credited with
    "Kalrar"). It needs no mapping of letters to options, which the 5M-parameter d4 (no
    in-context copying) does not make: letters 0.21, cloze 0.97 (README, "Exam and calibration").
Either way the prediction is the highest summed log-likelihood and the confidence its softmax
probability among the four, so the runner writes the ECE and reliability.png.

Metrics: accuracy overall, per category and per language with Wilson 95% intervals; the chance
baseline (0.25), the majority baseline (always the most common right letter: the best a model
that ignores the options can do with letters), the mean confidence and how often each letter
is predicted (a model that always says "A" shows here).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from opengpt4.data.world import Question
from opengpt4.data.world_text import PHRASES
from opengpt4.errors import DataFileError
from opengpt4.evals.api import Eval, LoglikRequest, SampleResult
from opengpt4.evals.benchmarks.common import multiple_choice_result, score_groups, world_for
from opengpt4.evals.benchmarks.system_constraints import rate
from opengpt4.files import iter_jsonl

FILE = "eval/world_mc.jsonl"
LETTERS = "ABCD"
FIELDS = ("prompt", "ideal", "choices", "category", "lang")


def question_line(prompt: str, lang: str, choices: tuple[str, ...]) -> str | None:
    """The bare question of an exam prompt (header, blank line, question, options, "Answer:");
    None when the prompt is not in that layout with these options."""
    lines = prompt.split("\n")
    options = [f"{letter}. {c}" for letter, c in zip(LETTERS, choices, strict=True)]
    if len(lines) < 8 or lines[1] != "" or lines[-5:] != [*options, f"{PHRASES[lang].answer}:"]:
        return None
    return "\n".join(lines[2:-5])


def read_questions(path: Path) -> list[Question]:
    """world_mc.jsonl rows as questions; a bad row raises DataFileError naming file:line."""
    out = []
    for line, row in iter_jsonl(path):
        missing = [k for k in FIELDS if k not in row]
        if missing:
            raise DataFileError(f"{path}:{line}: a world_mc row needs {', '.join(FIELDS)} (missing: {', '.join(missing)})")
        choices = row["choices"]
        if not (isinstance(choices, list) and len(choices) == 4 and all(isinstance(c, str) for c in choices)):
            raise DataFileError(f"{path}:{line}: choices must be 4 strings, got {choices!r}")
        if row["ideal"] not in list(LETTERS):  # a list: "AB" is in the string "ABCD"
            raise DataFileError(f"{path}:{line}: ideal must be one of A, B, C, D, got {row['ideal']!r}")
        if row["lang"] not in PHRASES:
            raise DataFileError(f"{path}:{line}: unknown lang {row['lang']!r} (expected one of {', '.join(PHRASES)})")
        if not isinstance(row["prompt"], str) or question_line(row["prompt"], row["lang"], tuple(choices)) is None:
            raise DataFileError(f"{path}:{line}: the prompt is not a header, a question, options A-D with "
                                f"these choices and '{PHRASES[row['lang']].answer}:'")
        out.append(Question(row["prompt"], row["ideal"], "mc", row["category"], row["lang"], tuple(choices),
                            row.get("subject")))
    return out


def requests(q: Question, cloze: bool) -> list[LoglikRequest]:
    """One request per option, in A-D order."""
    if not cloze:
        return [LoglikRequest(q.prompt, f" {letter}") for letter in LETTERS]
    p = PHRASES[q.lang]
    context = f"{p.question}: {question_line(q.prompt, q.lang, q.choices)}\n{p.answer}:"
    return [LoglikRequest(context, f" {c}\n") for c in q.choices]


class WorldExam(Eval):
    """score = accuracy; aggregate adds it per category and language, and the baselines."""

    batch_size = 32
    metric = "accuracy"

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, world_size: str = "mini",
                 world_seed: int = 0, cloze: bool = False, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.world_size, self.world_seed, self.cloze = world_size, world_seed, cloze

    def load_samples(self) -> list[dict[str, Any]]:
        file = Path(self.data_dir) / FILE if self.data_dir else None
        if file is not None and file.is_file():
            questions = read_questions(file)
        else:
            questions = world_for(self.data_dir, self.world_size, self.world_seed).eval_sets()["world_mc"]
        return [{"sample_id": f"world_exam/{i}", "question": q} for i, q in enumerate(questions)]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        groups = [requests(s["question"], self.cloze) for s in samples]
        results = []
        for s, group, got in zip(samples, groups, score_groups(self.completion_fn, groups), strict=True):
            q: Question = s["question"]
            # acc_norm divides by the option's characters: the same as acc for letters, not for values.
            texts = [r.continuation for r in group] if self.cloze else list(LETTERS)
            results.append(multiple_choice_result(s["sample_id"], group, got, texts, LETTERS.index(q.answer),
                                                  category=q.category, lang=q.lang, options=list(q.choices)))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        if not results:
            return {}
        n = len(results)
        right = Counter(LETTERS[r.ideal] for r in results)
        majority, count = max(sorted(right.items()), key=lambda kv: kv[1])
        predicted = Counter(LETTERS[r.parsed] for r in results)

        def by(key: str) -> dict[str, Any]:
            return {v: rate([r.score == 1 for r in results if r.extra[key] == v])
                    for v in sorted({r.extra[key] for r in results})}

        return {"accuracy": rate([r.score == 1 for r in results]),
                "acc_norm": sum(r.extra["acc_norm"] for r in results) / n,
                "by_category": by("category"), "by_lang": by("lang"),
                "random_baseline": sum(1 / r.extra["num_choices"] for r in results) / n,
                "majority_baseline": {"letter": majority, "rate": count / n},
                "mean_confidence": sum(r.extra["confidence"] for r in results) / n,
                "predicted": {letter: predicted[letter] for letter in LETTERS}}
