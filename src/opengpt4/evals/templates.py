"""OpenAI Evals' basic templates (elsuite/basic, translate, test), on our `api.Eval`.

Each reads `{"input": ..., "ideal": ...}` samples from `samples_jsonl`, sends the input as
OpenAI Evals' completion functions do (prompts.render: a string is one system message for a
chat model), takes the arguments its OpenAI Evals class takes (no others), and scores and
reports as it does:

- Match: the completion, unstripped, starts with an ideal; accuracy, boostrap_std (their spelling);
- Includes: an ideal appears in the completion (`ignore_case`); accuracy, boostrap_std;
- FuzzyMatch: normalized completion and ideal contain one another; accuracy, f1_score;
- JsonMatch: the completion parses as JSON equal to an ideal's, key by key; accuracy;
- Translate: sentence BLEU > 30 (bleu.py, sacrebleu's rules); accuracy, sacrebleu_score;
- MatchWithSolvers: the task description as a system message before the chat input, as
  OpenAI Evals' default solver sends it; starts with the ideal or it capitalized; accuracy,
  bootstrap_std;
- TestMatch: Match on OpenAI Evals' three built-in samples.

Request parameters are those each class sends: Match, FuzzyMatch and JsonMatch are greedy
with max_tokens 500, 100 and 512. Includes, Translate and MatchWithSolvers send no temperature,
so the API's default of 1 applies (seeded here by the run's seed). Where a class sends no
max_tokens (Includes, MatchWithSolvers; Match declares 500 but never sends it) the API would
generate to the end of the context; here such requests stop at 500 tokens, and Match sends
the max_tokens it declares.

The runner gives every sample a `sample_id` before `run_batch`; templates keep it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from opengpt4.errors import InvalidEvalArgument, OpenGPT4Error
from opengpt4.files import read_jsonl

from .api import CompletionFn, CompletionResult, Decoding, Eval, Prompt, SampleResult
from .bleu import corpus_bleu, sentence_bleu
from .prompts import Chat, chat_to_text, is_chat, render, takes_chat
from .stats import half_sample_std

DEFAULT_MAX_TOKENS = 500  # Match's declared default; the cap where a class sends no max_tokens
API_TEMPERATURE = 1.0  # the API's default, for the classes that send no temperature


# --- helpers --------------------------------------------------------------------------------
def ideals(ideal: Any) -> list[Any]:
    return list(ideal) if isinstance(ideal, (list, tuple)) else [ideal]


def usage(*results: CompletionResult) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def normalize(s: str) -> str:
    """Lower-case, drop punctuation, articles and extra whitespace (SQuAD's normalization)."""
    s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def fuzzy_match(a: str, b: str) -> bool:
    a, b = normalize(a), normalize(b)
    if not a or not b:
        return a == b
    return a in b or b in a


def f1_score(prediction: str, answers: list[str]) -> float:
    def f1(answer: str) -> float:
        pred, gold = normalize(prediction).split(), normalize(answer).split()
        same = sum((Counter(pred) & Counter(gold)).values())
        if same == 0:
            return 0.0
        precision, recall = same / len(pred), same / len(gold)
        return 2 * precision * recall / (precision + recall)

    return max(f1(a) for a in answers)


def json_match(sampled: Any, correct: Any) -> bool:
    """Equal component by component; a missing value (None) never matches (OpenAI Evals' rule)."""
    if sampled is None or correct is None:
        return False
    if isinstance(sampled, dict):
        return isinstance(correct, dict) and all(
            json_match(sampled.get(k), correct.get(k)) for k in set(sampled) | set(correct))
    if isinstance(sampled, list):
        return isinstance(correct, list) and len(sampled) == len(correct) and all(
            json_match(s, c) for s, c in zip(sampled, correct, strict=True))
    return sampled == correct


def read_few_shot(num_few_shot: int, few_shot_jsonl: str | None) -> list[Chat]:
    """The first `num_few_shot` rows' `sample` chats (Match's and Translate's few-shot turns)."""
    if num_few_shot <= 0:
        return []
    if not few_shot_jsonl:
        raise InvalidEvalArgument("num_few_shot", "num_few_shot > 0 needs few_shot_jsonl")
    rows = read_jsonl(few_shot_jsonl)[:num_few_shot]
    if not all(is_chat(r.get("sample")) for r in rows):
        raise OpenGPT4Error(f"{few_shot_jsonl}: few-shot rows must carry 'sample': a list of chat messages")
    return [r["sample"] for r in rows]


# --- sample-file evals ----------------------------------------------------------------------
class JsonlEval(Eval):
    """Samples from a JSONL file; `required` keys are checked when loading, naming the line."""

    required: tuple[str, ...] = ("input", "ideal")

    def __init__(self, completion_fn: CompletionFn, *, samples_jsonl: str, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.samples_jsonl = samples_jsonl

    def load_samples(self) -> list[dict[str, Any]]:
        samples = read_jsonl(self.samples_jsonl)
        for i, sample in enumerate(samples):
            missing = [k for k in self.required if k not in sample]
            if missing:
                raise OpenGPT4Error(f"{self.samples_jsonl}: sample {i} lacks {', '.join(map(repr, missing))}")
        return samples


class BasicEval(JsonlEval):
    """One completion per sample, rendered for the model's kind and scored by `check`.
    Subclasses set `decoding` (with `request`) and may add few-shot turns (`few_shot`)."""

    metric = "accuracy"
    few_shot: list[Chat] = []
    decoding: Decoding

    def __init__(self, completion_fn: CompletionFn, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.chat = takes_chat(completion_fn)

    def request(self, max_tokens: int, temperature: float) -> Decoding:
        # Sampling is seeded by the run's seed, so a rerun samples the same text.
        return Decoding(max_tokens=max_tokens, temperature=temperature, seed=self.seed if temperature > 0 else None)

    def prompt(self, sample: dict[str, Any]) -> Prompt:
        """The sample's input with the few-shot turns placed before its last message."""
        prompt = sample["input"]
        if not self.few_shot:
            return render(prompt, self.chat)
        if not is_chat(prompt):
            raise OpenGPT4Error(f"sample {sample.get('sample_id')}: few-shot needs a chat input (a list of messages)")
        return render(prompt[:-1] + [m for shot in self.few_shot for m in shot] + prompt[-1:], self.chat)

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        """(parsed answer, score, extra) of one completion."""
        raise NotImplementedError

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        prompts = [self.prompt(s) for s in samples]
        results = self.completion_fn.complete(prompts, self.decoding)
        out = []
        for sample, prompt, result in zip(samples, prompts, results, strict=True):
            output = result.texts[0]
            parsed, score, extra = self.check(output, sample["ideal"])
            out.append(SampleResult(sample_id=sample["sample_id"], prompt=prompt, output=output, parsed=parsed,
                                    ideal=sample["ideal"], score=score,
                                    logprobs=result.logprobs[0] if result.logprobs else None,
                                    usage=usage(result), extra=extra))
        return out

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        """Match's and Includes' report (the key is spelled as OpenAI Evals spells it)."""
        scores = [r.score for r in results]
        return {"accuracy": mean(scores), "boostrap_std": half_sample_std(scores, seed=self.seed)}


class Match(BasicEval):
    def __init__(self, completion_fn: CompletionFn, *, max_tokens: int = DEFAULT_MAX_TOKENS, num_few_shot: int = 0,
                 few_shot_jsonl: str | None = None, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.decoding = self.request(max_tokens, 0.0)
        self.few_shot = read_few_shot(num_few_shot, few_shot_jsonl)

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        picked = next((i for i in map(str, ideals(ideal)) if output.startswith(i)), None)
        return picked, float(picked is not None), {}


class TestMatch(Match):
    """OpenAI Evals' smoke test: Match on three built-in samples (its spec names no samples_jsonl)."""

    __test__ = False  # not a pytest class, whatever its name
    SAMPLES = [{"input": [{"role": "system", "content": "Complete the phrase as concisely as possible."},
                          {"role": "user", "content": question}], "ideal": ideal}
               for question, ideal in (("Once upon a ", "time"), ("The first US president was ", "George Washington"),
                                       ("OpenAI was founded in 20", "15"))]

    def __init__(self, completion_fn: CompletionFn, **kw: Any) -> None:
        super().__init__(completion_fn, samples_jsonl="", **kw)

    def load_samples(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.SAMPLES)


class Includes(BasicEval):
    def __init__(self, completion_fn: CompletionFn, *, ignore_case: bool = False, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.ignore_case = ignore_case
        self.decoding = self.request(DEFAULT_MAX_TOKENS, API_TEMPERATURE)

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        text = output.lower() if self.ignore_case else output
        picked = next((i for i in map(str, ideals(ideal)) if (i.lower() if self.ignore_case else i) in text), None)
        return picked, float(picked is not None), {}


class FuzzyMatch(BasicEval):
    def __init__(self, completion_fn: CompletionFn, *, max_tokens: int = 100, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.decoding = self.request(max_tokens, 0.0)

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        answers = ideals(ideal)
        picked = next((i for i in answers if fuzzy_match(output, i)), None)
        return picked, float(picked is not None), {"f1": f1_score(output, answers)}

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        return {"accuracy": mean([r.score for r in results]), "f1_score": mean([r.extra["f1"] for r in results])}


class JsonMatch(BasicEval):
    def __init__(self, completion_fn: CompletionFn, *, max_tokens: int = 512, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.decoding = self.request(max_tokens, 0.0)

    def load_samples(self) -> list[dict[str, Any]]:
        samples = super().load_samples()
        for i, sample in enumerate(samples):  # a bad ideal is the data's fault: say so before running
            try:
                self.correct(sample["ideal"])
            except ValueError as e:
                raise OpenGPT4Error(f"{self.samples_jsonl}: sample {i}: ideal is not valid JSON ({e})") from None
        return samples

    @staticmethod
    def correct(ideal: Any) -> list[Any]:
        return [json.loads(i) if isinstance(i, str) else i for i in ideals(ideal)]

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        try:
            parsed = json.loads(output)
        except ValueError:
            return None, 0.0, {}
        return parsed, float(any(json_match(parsed, c) for c in self.correct(ideal))), {}

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        return {"accuracy": mean([r.score for r in results])}


class Translate(BasicEval):
    """A translation is right when its sentence BLEU against the ideals is over 30."""

    def __init__(self, completion_fn: CompletionFn, *, max_tokens: int = DEFAULT_MAX_TOKENS, num_few_shot: int = 0,
                 few_shot_jsonl: str | None = None, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        self.decoding = self.request(max_tokens, API_TEMPERATURE)
        self.few_shot = read_few_shot(num_few_shot, few_shot_jsonl)

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        bleu = sentence_bleu(output, [str(i) for i in ideals(ideal)])
        return output, float(bleu > 30), {"sacrebleu_sentence_score": bleu}

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        # Each sample against its own ideals (OpenAI Evals' call fails on a sample with several).
        references = [[str(i) for i in ideals(r.ideal)] for r in results]
        corpus = corpus_bleu([r.output for r in results], references) if results else None
        return {"accuracy": mean([r.score for r in results]), "sacrebleu_score": corpus}


class MatchWithSolvers(BasicEval):
    """OpenAI Evals' MatchWithSolvers as its default solver runs it: the task description as a
    system message, then the sample's chat. A text model gets it flattened with the solver's own
    prefixes ("System: ", "User: "…), stops at the next prefix and is read up to it."""

    SOLVER_PREFIXES = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "spacer": "-----"}

    def __init__(self, completion_fn: CompletionFn, *, task_description: str, n_samples: int | None = None,
                 shuffle: bool = True, **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        if not task_description:
            raise InvalidEvalArgument("task_description", "must be a text or the path of a file holding one")
        # As OpenAI Evals does: a string that names an existing file is read from it.
        self.task_description = Path(task_description).read_text() if os.path.exists(task_description) \
            else task_description
        self.n_samples, self.shuffle = n_samples, shuffle
        self.separators = [p.strip() for p in self.SOLVER_PREFIXES.values() if p.strip()]
        self.decoding = self.request(DEFAULT_MAX_TOKENS, API_TEMPERATURE)
        if not self.chat:
            self.decoding = dataclasses.replace(self.decoding, stop=tuple(self.separators))

    def load_samples(self) -> list[dict[str, Any]]:
        samples = super().load_samples()
        for i, sample in enumerate(samples):
            if not is_chat(sample["input"]) or any(set(m) != {"role", "content"} for m in sample["input"]):
                raise OpenGPT4Error(f"{self.samples_jsonl}: sample {i}: input must be chat messages with only "
                                    "'role' and 'content'")
        if self.shuffle:  # numpy's legacy seeded shuffle, as OpenAI Evals draws the subset
            np.random.RandomState(self.seed).shuffle(samples)
        return samples[:self.n_samples] if self.n_samples is not None else samples

    def prompt(self, sample: dict[str, Any]) -> Prompt:
        messages = [{"role": "system", "content": self.task_description}, *sample["input"]]
        return messages if self.chat else chat_to_text(messages, prefixes=self.SOLVER_PREFIXES)

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        if not self.chat:  # the solver cuts a text model's answer at the next turn it starts
            for separator in self.separators:
                output = output.split(separator)[0].strip()
        first = ideal if isinstance(ideal, str) else ideal[0]
        picked = next((i for i in (first, first.capitalize()) if output.startswith(i)), None)
        return picked, float(picked is not None), {}

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        scores = [r.score for r in results]
        return {"accuracy": mean(scores), "bootstrap_std": half_sample_std(scores, seed=self.seed)}
