"""MMLU (Hendrycks et al., 2021), k-shot, scored by log-likelihood as in the original harness.

Data: `<data_dir>/mmlu/{dev,test}/<subject>_<split>.csv` (question, A, B, C, D, answer letter;
no header), the folders of https://people.eecs.berkeley.edu/~hendrycks/data.tar.

Prompt of a question of subject S (the file stem, underscores as spaces):

    The following are multiple choice questions (with answers) about S.\\n\\n
    <dev question 1>\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer: X\\n\\n   (k dev examples)
    <question>\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:

Each letter is scored as the continuation " A" .. " D"; the prediction is the most likely
letter, and its softmax probability among the four is the confidence (the GPT-4
announcement's calibration plot). Every question of a subject shares the few-shot block,
which the local log-likelihood batches run once per batch.

Metrics: accuracy over all questions (the subject-size-weighted mean, the usual headline),
and in `aggregate` the per-subject accuracies and their unweighted (macro) mean.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error
from opengpt4.evals.api import Eval, LoglikRequest, SampleResult
from opengpt4.evals.benchmarks.common import data_file, default_data_dir, multiple_choice_result, score_groups

SOURCE = "https://people.eecs.berkeley.edu/~hendrycks/data.tar"
LETTERS = "ABCD"


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for i, row in enumerate(rows, 1):
        if len(row) != 6 or row[5] not in LETTERS:
            raise OpenGPT4Error(f"{path}:{i}: expected question, A, B, C, D, answer letter; got {row!r}")
    return rows


def format_question(row: list[str], answer: bool) -> str:
    text = row[0] + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row[1:5], strict=True))
    return text + (f"\nAnswer: {row[5]}\n\n" if answer else "\nAnswer:")


def header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


class MMLU(Eval):
    batch_size = 64  # one subject's questions share a prefix: larger batches share it more

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, shots: int = 5,
                 split: str = "test", subjects: list[str] | None = None, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.shots, self.split, self.subjects = shots, split, subjects

    def subject_names(self) -> list[str]:
        if self.subjects:
            return self.subjects
        folder = Path(self.data_dir or default_data_dir()) / "mmlu" / self.split
        names = sorted(p.name.removesuffix(f"_{self.split}.csv") for p in folder.glob(f"*_{self.split}.csv"))
        # No files at all: the first subject's file is then the one reported missing.
        return names or ["abstract_algebra"]

    def load_samples(self) -> list[dict[str, Any]]:
        samples = []
        for subject in self.subject_names():
            rows = read_csv(data_file(self.data_dir, f"mmlu/{self.split}/{subject}_{self.split}.csv", SOURCE))
            dev = read_csv(data_file(self.data_dir, f"mmlu/dev/{subject}_dev.csv", SOURCE))[: self.shots]
            prefix = header(subject) + "".join(format_question(r, answer=True) for r in dev)
            samples += [{"sample_id": f"mmlu/{subject}/{i}", "subject": subject,
                         "prompt": prefix + format_question(row, answer=False), "answer": row[5]}
                        for i, row in enumerate(rows)]
        return samples

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        requests = [[LoglikRequest(s["prompt"], f" {letter}") for letter in LETTERS] for s in samples]
        return [multiple_choice_result(s["sample_id"], group, got, list(LETTERS), LETTERS.index(s["answer"]),
                                       subject=s["subject"])
                for s, group, got in zip(samples, requests, score_groups(self.completion_fn, requests), strict=True)]

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        by_subject: dict[str, list[float]] = {}
        for r in results:
            if r.score is not None:
                by_subject.setdefault(r.extra["subject"], []).append(r.score)
        if not by_subject:
            return {}
        subjects = {s: {"accuracy": sum(v) / len(v), "n": len(v)} for s, v in sorted(by_subject.items())}
        total = sum(len(v) for v in by_subject.values())
        return {
            "accuracy": sum(sum(v) for v in by_subject.values()) / total,
            "macro_accuracy": sum(s["accuracy"] for s in subjects.values()) / len(subjects),
            "subjects": subjects,
        }
