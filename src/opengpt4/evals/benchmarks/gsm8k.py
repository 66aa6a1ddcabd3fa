"""GSM8K (Cobbe et al., 2021): grade-school maths word problems, few-shot chain of thought.

Data: `<data_dir>/gauntlet/gsm8k.jsonl` {context, chain_of_thought, answer}, the test set as
llm-foundry's eval gauntlet ships it: https://github.com/mosaicml/llm-foundry/blob/main/scripts/eval/local_data/symbolic_problem_solving/gsm8k.jsonl

Prompt (raw text): k solved exemplars, then the question:

    Question: <question>\\nAnswer: <chain of thought> The answer is <answer>.\\n\\n   (k times)
    Question: <question>\\nAnswer:

The model continues greedily until "\\nQuestion:" (it starts the next exercise) or 256
tokens; the answer is the last number in its completion (commas removed), compared
numerically with the gold answer.

Only the test set is stored here, so the k exemplars are drawn from it with a fixed seed
(`exemplar_seed`, not the run's seed, so that every run sees the same prompt) and are left
out of the scored samples: 1,319 - k questions are scored. The worked solutions' calculator
annotations ("<<16-3-4=9>>", a tool-use format of the dataset) are removed from exemplars.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from opengpt4.evals.api import Decoding, Eval, SampleResult
from opengpt4.evals.benchmarks.common import data_file
from opengpt4.files import read_jsonl

SOURCE = "https://github.com/mosaicml/llm-foundry/blob/main/scripts/eval/local_data/symbolic_problem_solving/gsm8k.jsonl"
STOP = ("\n\nQuestion:", "\nQuestion:")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
CALCULATOR = re.compile(r"<<[^>]*>>")


def last_number(text: str) -> float | None:
    """The last number in `text` ("1,234.5" -> 1234.5), or None."""
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def exemplar(row: dict[str, Any]) -> str:
    reasoning = CALCULATOR.sub("", row["chain_of_thought"]).strip()
    return f"Question: {row['context']}\nAnswer: {reasoning} The answer is {row['answer']}.\n\n"


class GSM8K(Eval):
    batch_size = 8

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, shots: int = 5,
                 exemplar_seed: int = 1234, max_tokens: int = 256, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.shots, self.exemplar_seed = shots, exemplar_seed
        self.decoding = Decoding(max_tokens=max_tokens, temperature=0.0, stop=STOP)

    def load_samples(self) -> list[dict[str, Any]]:
        rows = read_jsonl(data_file(self.data_dir, Path("gauntlet") / "gsm8k.jsonl", SOURCE))
        shots = set(random.Random(self.exemplar_seed).sample(range(len(rows)), self.shots))
        prefix = "".join(exemplar(rows[i]) for i in sorted(shots))
        return [{"sample_id": f"gsm8k/{i}", "prompt": f"{prefix}Question: {row['context']}\nAnswer:",
                 "answer": row["answer"]} for i, row in enumerate(rows) if i not in shots]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        completions = self.completion_fn.complete([s["prompt"] for s in samples], self.decoding)
        results = []
        for sample, completion in zip(samples, completions, strict=True):
            text = completion.texts[0]
            predicted, gold = last_number(text), last_number(str(sample["answer"]))
            results.append(SampleResult(
                sample_id=sample["sample_id"], prompt=sample["prompt"], output=text, parsed=predicted,
                ideal=gold, score=float(predicted is not None and gold is not None and abs(predicted - gold) < 1e-6),
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}))
        return results
