"""HellaSwag (Zellers et al., 2019): sentence endings, scored by log-likelihood as lm-evaluation-harness does.

Data: `<data_dir>/hellaswag/hellaswag_val.jsonl` (or the spec's `path:`), from
https://github.com/rowanz/hellaswag/blob/master/data/hellaswag_val.jsonl: {ctx (or ctx_a +
ctx_b), endings, label, activity_label}.

Query "<activity_label>: <ctx>", endings as continuations, with lm-eval's clean-up of the
WikiHow artefacts (" [title]" -> ". ", other "[...]" removed, double spaces). acc and acc_norm
(per character), like the gauntlet's multiple choice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from opengpt4.evals.api import SampleResult
from opengpt4.evals.benchmarks.common import FileEval, choice_metrics, join, multiple_choice_result, score_groups
from opengpt4.files import read_jsonl


def clean_hellaswag(text: str) -> str:
    """lm-eval's HellaSwag preprocessing of WikiHow artefacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: Path) -> list[dict[str, Any]]:
    """[{query, choices, gold}]; the context is ctx_a + " " + capitalised ctx_b where given, as in lm-eval."""
    out = []
    for row in read_jsonl(path):
        ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}" if "ctx_a" in row else row["ctx"]
        out.append({"query": clean_hellaswag(f"{row['activity_label']}: {ctx}"),
                    "choices": [clean_hellaswag(e) for e in row["endings"]], "gold": int(row["label"])})
    return out


class HellaSwag(FileEval):
    default_path = "hellaswag/hellaswag_val.jsonl"
    source = "https://github.com/rowanz/hellaswag/blob/master/data/hellaswag_val.jsonl"

    def load_samples(self) -> list[dict[str, Any]]:
        return [{"sample_id": f"hellaswag/{i}", **row} for i, row in enumerate(load_hellaswag(self.file()))]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        requests = [[join(s["query"], c) for c in s["choices"]] for s in samples]
        return [multiple_choice_result(s["sample_id"], group, got, s["choices"], s["gold"])
                for s, group, got in zip(samples, requests, score_groups(self.completion_fn, requests), strict=True)]

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        return choice_metrics(results)
