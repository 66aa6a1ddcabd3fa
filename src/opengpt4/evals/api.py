"""The two contracts of the eval framework: completion functions (the model side) and eval classes.

A completion function turns prompts into completions and, where the model allows it, scores
continuations by log-likelihood (multiple choice). An eval class turns samples into scored
`SampleResult`s by calling a completion function; the runner does the rest (limit, seed,
cache, logs, statistics, calibration).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Scoring requests and results are the engine's (engine/score.py owns the token boundary
# rule); eval classes and completion functions name them from here.
from opengpt4.engine.score import ChatLoglikRequest, Loglik, LoglikRequest
from opengpt4.errors import UnknownEvalArgument

# A prompt is raw text (sent as is, no chat template) or OpenAI chat messages.
Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters of one completion request (part of the cache key)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: bool = False  # per-token logprobs of the output, where the model offers them


@dataclass
class CompletionResult:
    texts: list[str]  # the n completions
    logprobs: list[list[tuple[str, float]]] | None = None  # per completion: (token, logprob) pairs
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


class CompletionFn(Protocol):
    """The model side. One that can only complete text (no chat template, no /chat/completions)
    also sets `chat = False`: OpenAI Evals' templates then send it chat inputs flattened to text
    (see prompts.py); without the attribute a model is taken to be a chat model."""

    identity: str  # stable id of the model (weights hash / endpoint + model); keys the cache

    def complete(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[CompletionResult]: ...

    def loglikelihood(self, requests: Sequence[LoglikRequest | ChatLoglikRequest]) -> list[Loglik]:
        """Raise NotImplementedError where the model cannot score text (or a chat reply)."""
        ...


@dataclass
class SampleResult:
    sample_id: str  # stable across runs: compare pairs samples by it
    prompt: Any  # what was sent (text, messages, or the loglik requests)
    output: Any  # raw model output (text, or the per-choice logliks)
    parsed: Any  # the answer extracted from the output (None: nothing could be parsed)
    ideal: Any
    score: float | None  # None: unscorable (e.g. an unparseable grader answer), counted apart
    logprobs: Any = None
    usage: dict[str, int] | None = None
    # Multiple choice: "confidence" = probability of the chosen answer, for calibration.
    extra: dict[str, Any] = field(default_factory=dict)


class Eval:
    """Base of every eval class named by a spec's `class:` (see registry.py).

    The spec's `args:` are keyword arguments of the subclass; `samples_jsonl` paths are resolved
    against the registry's data directory by the registry. An argument that no class in the
    chain takes reaches this base and is refused, before anything runs. Subclasses implement
    `load_samples` and `run_batch`, and may add metrics in `aggregate` (e.g. a subject-weighted mean).
    """

    batch_size: int = 16  # samples per run_batch call (a local model batches within a call)
    metric: str | None = None  # what SampleResult.score measures; None: the spec's first metric

    def __init__(self, completion_fn: CompletionFn, *, seed: int = 0, data_dir: str | None = None,
                 **unknown: Any) -> None:
        if unknown:
            raise UnknownEvalArgument(type(self).__name__, sorted(unknown))
        self.completion_fn = completion_fn
        self.seed = seed
        self.data_dir = data_dir

    def load_samples(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        raise NotImplementedError

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        return {}
