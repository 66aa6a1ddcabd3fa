"""What the benchmark modules share: where their data lives, and how a set of choices is scored.

Data: every benchmark reads its file through `data_file`, under the data directory (the eval's
`data_dir`, `--data-dir`, else $OPENGPT4_DATA_DIR, else ../shared/data next to the repository).
A missing file raises `BenchmarkDataMissing` naming the file and its public source, which the
CLI prints as one line. The world's evals generate their questions from the seeded world
instead (`world_for`): the one a pretraining data dir was built from, or a given size and seed.

Multiple choice: each choice is scored as a continuation of a context. `acc` takes the choice
with the highest total logprob; `acc_norm` divides by the choice's length in characters first
(lm-eval's acc_norm), which removes the bias towards short answers. Confidence = softmax over
the choices' logprobs (the calibration plot of the GPT-4 announcement). The chance baseline is
the mean of 1/number-of-choices, and `centered` puts accuracy on a scale where chance is 0 and
perfect is 1 (DCLM's CORE score, as nanochat uses it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opengpt4.data.world import SIZES, World
from opengpt4.errors import BenchmarkDataMissing, InvalidEvalArgument
from opengpt4.evals.api import Eval, Loglik, LoglikRequest, SampleResult


# --- data ------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """$OPENGPT4_DATA_DIR, else ../shared/data next to the repository."""
    env = os.environ.get("OPENGPT4_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[4].parent / "shared" / "data"


def data_file(data_dir: str | Path | None, relative: str | Path, source: str) -> Path:
    """A benchmark file: `relative` under data_dir (default: `default_data_dir()`), or an absolute path.
    `source` says where the public file comes from, for the error when it is missing."""
    path = Path(data_dir or default_data_dir()) / relative
    if not path.is_file():
        raise BenchmarkDataMissing(str(path), str(relative), source)
    return path


def world_for(data_dir: str | None, world_size: str, world_seed: int) -> World:
    """The world a pretraining data dir was built from (its index.json's preset and seed), else the
    one of `world_size` and `world_seed`."""
    index = Path(data_dir) / "index.json" if data_dir else None
    if index is not None and index.is_file():
        from opengpt4.data.build import PRESETS as DATA_PRESETS  # the data build's stack, for the world evals only

        meta = json.loads(index.read_text())
        world_size, world_seed = DATA_PRESETS[meta["preset"]].world, meta["seed"]
    if world_size not in SIZES:
        raise InvalidEvalArgument("world_size", f"{world_size!r} is not a world size ({', '.join(SIZES)})")
    return World.generate(world_seed, world_size)


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


def score_groups(completion_fn: Any, groups: Sequence[Sequence[LoglikRequest]]) -> list[list[Loglik]]:
    """Each group's logliks, all groups scored in one call: the scorer batches across samples
    and shares their contexts (a question's choices, a subject's few-shot prefix)."""
    logliks = iter(completion_fn.loglikelihood([r for group in groups for r in group]))
    return [[next(logliks) for _ in group] for group in groups]


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


class FileEval(Eval):
    """A benchmark read from one file: the spec's `path:`, absolute or under the data directory."""

    default_path = ""  # under the data directory
    source = ""  # where the public file comes from
    batch_size = 32

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, path: str | None = None,
                 **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.path = path or self.default_path

    def file(self) -> Path:
        return data_file(self.data_dir, self.path, self.source)
