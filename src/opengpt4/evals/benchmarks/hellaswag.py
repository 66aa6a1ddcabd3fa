"""HellaSwag (Zellers et al., 2019): sentence endings, scored by log-likelihood as lm-evaluation-harness does.

Data: `<data_dir>/hellaswag/hellaswag_val.jsonl` (or the spec's `path:`), from
https://github.com/rowanz/hellaswag/blob/master/data/hellaswag_val.jsonl: {ctx (or ctx_a +
ctx_b), endings, label, activity_label}.

Query "<activity_label>: <ctx>", endings as continuations, with lm-eval's clean-up of the
WikiHow artefacts (" [title]" -> ". ", other "[...]" removed, double spaces). acc and acc_norm
(per character), like the gauntlet's multiple choice.

`hellaswag_text` reads llama.cpp's text version instead (`hellaswag/hellaswag_val_full.txt.bz2`,
klosax/hellaswag_text_data, what `llama-perplexity --hellaswag` reads): all 10,042 validation
items, 6 lines each (the query, already cleaned; the gold label 0-3; the 4 endings). Its context
keeps ctx_b lower-case (the ctx_a / ctx_b boundary is lost), so scores follow llama.cpp's
procedure and come close to, not exactly to, lm-eval's `hellaswag`.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from typing import Any

from opengpt4.errors import DataFileError
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


def load_hellaswag_text(path: Path) -> list[dict[str, Any]]:
    """[{query, choices, gold}] from llama.cpp's 6-lines-per-item text version (bzip2 or plain)."""
    try:
        with bz2.open(path, "rt", encoding="utf-8") if path.suffix == ".bz2" else open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: not a readable HellaSwag text file ({type(e).__name__}: {e})") from None
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or len(lines) % 6:
        raise DataFileError(f"{path}: {len(lines)} lines; the text version has 6 per item (query, label, 4 endings)")
    out = []
    for i in range(0, len(lines), 6):
        label = lines[i + 1].strip()
        if label not in ("0", "1", "2", "3"):
            raise DataFileError(f"{path}:{i + 2}: the gold label must be 0-3, got {label[:40]!r}")
        out.append({"query": lines[i].strip(), "choices": [e.strip() for e in lines[i + 2:i + 6]], "gold": int(label)})
    return out


TEXT_SOURCE = "https://github.com/klosax/hellaswag_text_data/blob/main/hellaswag_val_full.txt.bz2"


class HellaSwag(FileEval):
    """The JSONL original, or llama.cpp's text version when the path ends in .txt or .txt.bz2."""

    default_path = "hellaswag/hellaswag_val.jsonl"

    @property
    def text_version(self) -> bool:
        return self.path.endswith((".txt", ".txt.bz2"))

    @property
    def source(self) -> str:  # what a missing file's error points to
        return TEXT_SOURCE if self.text_version else "https://github.com/rowanz/hellaswag/blob/master/data/hellaswag_val.jsonl"

    def load_samples(self) -> list[dict[str, Any]]:
        rows = load_hellaswag_text(self.file()) if self.text_version else load_hellaswag(self.file())
        return [{"sample_id": f"hellaswag/{i}", **row} for i, row in enumerate(rows)]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        requests = [[join(s["query"], c) for c in s["choices"]] for s in samples]
        return [multiple_choice_result(s["sample_id"], group, got, s["choices"], s["gold"])
                for s, group, got in zip(samples, requests, score_groups(self.completion_fn, requests), strict=True)]

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        return choice_metrics(results)
