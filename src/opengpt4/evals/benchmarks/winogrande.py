"""WinoGrande (Sakaguchi et al., 2020), in lm-evaluation-harness's partial scoring.

Data: `<data_dir>/winogrande/dev.jsonl` (or the spec's `path:`), `dev.jsonl` of
https://storage.googleapis.com/ai2-mosaic/public/winogrande/winogrande_1.1.zip: {sentence with
one "_", option1, option2, answer "1"/"2"}. The gauntlet's {context_options, continuation,
gold} rows are read directly.

The context is the sentence up to the blank with an option filled in, the continuation is the
rest of the sentence, the same for both options, so only how well each option predicts it
counts. Rows without an answer (the test split) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opengpt4.evals.api import SampleResult
from opengpt4.evals.benchmarks.common import FileEval, choice_metrics, join, multiple_choice_result, score_groups
from opengpt4.files import read_jsonl


def load_winogrande(path: Path) -> list[dict[str, Any]]:
    """[{context_options, continuation, gold}] from either the original or the gauntlet format."""
    out = []
    for row in read_jsonl(path):
        if "context_options" in row:
            out.append({"context_options": row["context_options"], "continuation": row["continuation"],
                        "gold": int(row["gold"])})
        elif row.get("answer") in ("1", "2", 1, 2):
            blank = row["sentence"].index("_")
            before, after = row["sentence"][:blank], row["sentence"][blank + 1 :].strip()
            out.append({"context_options": [before + row["option1"], before + row["option2"]],
                        "continuation": after, "gold": int(row["answer"]) - 1})
    return out


class WinoGrande(FileEval):
    default_path = "winogrande/dev.jsonl"
    source = "https://storage.googleapis.com/ai2-mosaic/public/winogrande/winogrande_1.1.zip (dev.jsonl)"

    def load_samples(self) -> list[dict[str, Any]]:
        return [{"sample_id": f"winogrande/{i}", **row} for i, row in enumerate(load_winogrande(self.file()))]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        requests = [[join(c, s["continuation"]) for c in s["context_options"]] for s in samples]
        return [multiple_choice_result(s["sample_id"], group, got, [s["continuation"]] * len(group), s["gold"])
                for s, group, got in zip(samples, requests, score_groups(self.completion_fn, requests), strict=True)]

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        return choice_metrics(results)
