"""Zero-shot tasks of the Mosaic eval gauntlet, scored by log-likelihood, and a CORE-style average.

Two formats (files under `<data_dir>/gauntlet/`, see shared/data/README.md):

- multiple choice `{query, choices, gold}`: each choice is scored as the continuation of the
  query, joined by a space unless the query already ends with whitespace (PIQA's queries end
  in "\\n"), as llm-foundry does. `acc` takes the choice with the highest total logprob;
  `acc_norm` divides by the choice's length in characters first (lm-eval's acc_norm), which
  removes the bias towards short answers. Confidence = softmax over the choices' logprobs.
- language modelling `{context, continuation}`: right when every continuation token is the
  model's greedy choice (exact greedy match, as in the gauntlet).

CORE-style average (DCLM / nanochat): each task's accuracy is centred on chance,
(acc - baseline) / (1 - baseline), baseline = mean 1/number-of-choices for multiple choice
and 0 for language modelling, and the centred scores are averaged over tasks.

This module also holds what the other benchmark modules share: where the data lives
(`data_file`) and how a set of choices is scored (`score_choices`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error
from opengpt4.evals.api import Eval, Loglik, LoglikRequest, SampleResult

# task -> (file under gauntlet/, kind, delimiter between context and continuation)
TASKS: dict[str, tuple[str, str, str]] = {
    "arc_easy": ("arc_easy.jsonl", "mc", " "),
    "arc_challenge": ("arc_challenge.jsonl", "mc", " "),
    "piqa": ("piqa.jsonl", "mc", " "),
    "siqa": ("siqa.jsonl", "mc", " "),
    "commonsense_qa": ("commonsense_qa.jsonl", "mc", " "),
    "openbook_qa": ("openbook_qa.jsonl", "mc", " "),
    "copa": ("copa.jsonl", "mc", " "),
    "boolq": ("boolq.jsonl", "mc", " "),
    "lambada_openai": ("lambada_openai.jsonl", "lm", " "),
    # A bare "clue answer" reads as one run-on sentence; llm-foundry's gauntlet puts this in between.
    "jeopardy_all": ("jeopardy_all.jsonl", "lm", "\nAnswer: "),
    "bigbench_operators": ("bigbench_operators.jsonl", "lm", " "),
}


# --- data ------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """$OPENGPT4_DATA_DIR, else ../shared/data next to the repository."""
    env = os.environ.get("OPENGPT4_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"


def data_file(data_dir: str | Path | None, relative: str | Path) -> Path:
    """A benchmark file: `relative` under data_dir (default: `default_data_dir()`), or an absolute path."""
    path = Path(data_dir or default_data_dir()) / relative
    if not path.is_file():
        raise OpenGPT4Error(f"benchmark data file not found: {path} (point OPENGPT4_DATA_DIR or the eval's "
                            f"data_dir at the folder holding {relative}; shared/data/README.md lists the files)")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- scoring ---------------------------------------------------------------------------------
def softmax(logprobs: Sequence[float]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first of equals, like numpy


@dataclass
class ChoiceScore:
    prediction: int  # argmax of the summed logprobs
    prediction_norm: int  # argmax of logprob / characters of the choice
    confidence: float  # softmax probability of `prediction` among the choices
    probs: list[float]


def score_choices(logprobs: Sequence[float], choices: Sequence[str]) -> ChoiceScore:
    probs = softmax(logprobs)
    pred = argmax(logprobs)
    norm = argmax([lp / max(len(c), 1) for lp, c in zip(logprobs, choices, strict=True)])
    return ChoiceScore(pred, norm, probs[pred], probs)


def join(context: str, continuation: str, delimiter: str = " ") -> LoglikRequest:
    """The request for `continuation` after `context`. The delimiter's trailing spaces go with
    the continuation (lm-eval's convention: " Paris" is one token), the rest of it (e.g.
    "\\nAnswer:") with the context, so that it is never scored; no space after whitespace."""
    head = delimiter.rstrip(" ")
    context += head
    space = "" if not context or context[-1].isspace() else delimiter[len(head):]
    return LoglikRequest(context, space + continuation)


def centered(accuracy: float, baseline: float) -> float:
    return (accuracy - baseline) / (1.0 - baseline)


def core_average(task_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CORE-style score of several tasks: {task: {"accuracy": a, "random_baseline": b}, ...}
    (what `GauntletTask.aggregate` returns) -> per-task centred scores and their mean."""
    if not task_metrics:
        raise ValueError("core_average needs at least one task")
    per_task = {name: centered(m["accuracy"], m["random_baseline"]) for name, m in task_metrics.items()}
    return {"core": sum(per_task.values()) / len(per_task), "centered": per_task}


def multiple_choice_result(sample_id: str, requests: list[LoglikRequest], logliks: Sequence[Loglik],
                           choices: Sequence[str], gold: int, **extra: Any) -> SampleResult:
    """The SampleResult of one multiple-choice question; `choices` are the texts acc_norm divides by."""
    logprobs = [r.logprob for r in logliks]
    s = score_choices(logprobs, choices)
    contexts = {r.context for r in requests}  # one context (most tasks): logged once, not per choice
    prompt = {"context": requests[0].context, "continuations": [r.continuation for r in requests]} \
        if len(contexts) == 1 else [[r.context, r.continuation] for r in requests]
    return SampleResult(
        sample_id=sample_id, prompt=prompt, output=logprobs,
        parsed=s.prediction, ideal=gold, score=float(s.prediction == gold),
        extra={"confidence": s.confidence, "acc_norm": float(s.prediction_norm == gold),
               "num_choices": len(choices), **extra},
    )


def choice_metrics(results: Sequence[SampleResult]) -> dict[str, Any]:
    """acc, acc_norm and the chance baseline of multiple-choice results."""
    scored = [r for r in results if r.score is not None]
    if not scored:
        return {}
    n = len(scored)
    baseline = sum(1 / r.extra["num_choices"] for r in scored) / n
    accuracy = sum(r.score for r in scored) / n
    return {"accuracy": accuracy, "acc_norm": sum(r.extra["acc_norm"] for r in scored) / n,
            "random_baseline": baseline, "centered": centered(accuracy, baseline), "n": n}


# --- the eval --------------------------------------------------------------------------------
class GauntletTask(Eval):
    """One gauntlet task, chosen by the spec's `task:` (a key of TASKS)."""

    batch_size = 32

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, task: str,
                 delimiter: str | None = None, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        if task not in TASKS:
            raise OpenGPT4Error(f"unknown gauntlet task {task!r}; choose one of: {', '.join(TASKS)}")
        self.task = task
        self.file, self.kind, default_delimiter = TASKS[task]
        self.delimiter = default_delimiter if delimiter is None else delimiter

    def load_samples(self) -> list[dict[str, Any]]:
        rows = read_jsonl(data_file(self.data_dir, Path("gauntlet") / self.file))
        return [{"sample_id": f"{self.task}/{i}", **row} for i, row in enumerate(rows)]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        if self.kind == "mc":
            requests = [[join(s["query"], c, self.delimiter) for c in s["choices"]] for s in samples]
        else:
            requests = [[join(s["context"], s["continuation"], self.delimiter)] for s in samples]
        logliks = iter(self.completion_fn.loglikelihood([r for group in requests for r in group]))
        results = []
        for sample, group in zip(samples, requests, strict=True):
            got = [next(logliks) for _ in group]
            if self.kind == "mc":
                results.append(multiple_choice_result(sample["sample_id"], group, got, sample["choices"],
                                                      int(sample["gold"])))
            else:
                [loglik] = got
                extra = {"num_tokens": loglik.num_tokens}
                if "category" in sample:
                    extra["category"] = sample["category"]
                results.append(SampleResult(
                    sample_id=sample["sample_id"], prompt=[group[0].context, group[0].continuation],
                    output=loglik.logprob, parsed=loglik.is_greedy, ideal=True,
                    score=float(loglik.is_greedy), extra=extra))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        if self.kind == "mc":
            return choice_metrics(results)
        scored = [r for r in results if r.score is not None]
        if not scored:
            return {}
        accuracy = sum(r.score for r in scored) / len(scored)
        out: dict[str, Any] = {"accuracy": accuracy, "random_baseline": 0.0, "centered": accuracy,
                               "n": len(scored)}
        categories = sorted({r.extra["category"] for r in scored if "category" in r.extra})
        if categories:
            out["categories"] = {c: sum(r.score for r in scored if r.extra.get("category") == c)
                                 / sum(1 for r in scored if r.extra.get("category") == c) for c in categories}
        return out
