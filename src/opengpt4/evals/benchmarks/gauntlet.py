"""Zero-shot tasks of the Mosaic eval gauntlet, scored by log-likelihood, and a CORE-style average.

Data: `<data_dir>/gauntlet/<task>.jsonl`, from llm-foundry's eval gauntlet
(https://github.com/mosaicml/llm-foundry/tree/main/scripts/eval/local_data, one folder per
category; `TASKS` names each file's).

Two formats:

- multiple choice `{query, choices, gold}`: each choice is scored as the continuation of the
  query, joined by a space unless the query already ends with whitespace (PIQA's queries end
  in "\\n"), as llm-foundry does; acc, acc_norm and confidence as in `common`.
- language modelling `{context, continuation}`: right when every continuation token is the
  model's greedy choice (exact greedy match, as in the gauntlet).

CORE-style average (DCLM / nanochat): each task's accuracy is centred on chance,
(acc - baseline) / (1 - baseline), baseline = mean 1/number-of-choices for multiple choice
and 0 for language modelling, and the centred scores are averaged over tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error
from opengpt4.evals.api import Eval, SampleResult
from opengpt4.evals.benchmarks.common import (
    centered,
    choice_metrics,
    data_file,
    join,
    multiple_choice_result,
    score_groups,
)
from opengpt4.files import read_jsonl

FOUNDRY = "https://github.com/mosaicml/llm-foundry/blob/main/scripts/eval/local_data"
# task -> (file under gauntlet/, its llm-foundry folder, kind, delimiter between context and continuation)
TASKS: dict[str, tuple[str, str, str, str]] = {
    "arc_easy": ("arc_easy.jsonl", "world_knowledge", "mc", " "),
    "arc_challenge": ("arc_challenge.jsonl", "world_knowledge", "mc", " "),
    "piqa": ("piqa.jsonl", "commonsense_reasoning", "mc", " "),
    "siqa": ("siqa.jsonl", "commonsense_reasoning", "mc", " "),
    "commonsense_qa": ("commonsense_qa.jsonl", "commonsense_reasoning", "mc", " "),
    "openbook_qa": ("openbook_qa.jsonl", "commonsense_reasoning", "mc", " "),
    "copa": ("copa.jsonl", "commonsense_reasoning", "mc", " "),
    "boolq": ("boolq.jsonl", "reading_comprehension", "mc", " "),
    "lambada_openai": ("lambada_openai.jsonl", "language_understanding", "lm", " "),
    # A bare "clue answer" reads as one run-on sentence; llm-foundry's gauntlet puts this in between.
    "jeopardy_all": ("jeopardy_all.jsonl", "world_knowledge", "lm", "\nAnswer: "),
    "bigbench_operators": ("bigbench_operators.jsonl", "symbolic_problem_solving", "lm", " "),
}


def core_average(task_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CORE-style score of several tasks: {task: {"accuracy": a, "random_baseline": b}, ...}
    (what `GauntletTask.aggregate` returns) -> per-task centred scores and their mean."""
    if not task_metrics:
        raise ValueError("core_average needs at least one task")
    per_task = {name: centered(m["accuracy"], m["random_baseline"]) for name, m in task_metrics.items()}
    return {"core": sum(per_task.values()) / len(per_task), "centered": per_task}


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
        self.file, self.folder, self.kind, default_delimiter = TASKS[task]
        self.delimiter = default_delimiter if delimiter is None else delimiter

    def load_samples(self) -> list[dict[str, Any]]:
        source = f"{FOUNDRY}/{self.folder}/{self.file}"
        rows = read_jsonl(data_file(self.data_dir, Path("gauntlet") / self.file, source))
        return [{"sample_id": f"{self.task}/{i}", **row} for i, row in enumerate(rows)]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        if self.kind == "mc":
            requests = [[join(s["query"], c, self.delimiter) for c in s["choices"]] for s in samples]
        else:
            requests = [[join(s["context"], s["continuation"], self.delimiter)] for s in samples]
        results = []
        for sample, group, got in zip(samples, requests, score_groups(self.completion_fn, requests), strict=True):
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
