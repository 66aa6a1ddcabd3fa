"""The eval templates of OpenAI Evals (elsuite/basic and modelgraded), on our `api.Eval`.

Each reads `{"input": ..., "ideal": ...}` samples from `samples_jsonl`, asks the completion
function once per sample, and scores the answer as OpenAI Evals does:

- Match: the completion (stripped) starts with an ideal;
- Includes: an ideal appears in the completion (`ignore_case` optional);
- FuzzyMatch: normalized completion and ideal contain one another; token F1 reported too;
- JsonMatch: the completion parses as JSON equal to an ideal's JSON, key by key;
- ModelBasedClassify: a grader model classifies the completion with a modelgraded spec.

The runner gives every sample a `sample_id` before `run_batch`; templates keep it.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Any

from opengpt4.errors import OpenGPT4Error
from opengpt4.files import read_jsonl

from .api import CompletionFn, CompletionResult, Decoding, Eval, Prompt, SampleResult
from .registry import ModelGradedSpec, parse_modelgraded

INVALID = "__invalid__"  # a grader answer that names no choice (OpenAI Evals' INVALID_STR)

ANSWER_PROMPTS = {  # appended to the grader prompt when the eval asks for an eval_type (OpenAI Evals' wording)
    "classify": "Answer the question by printing only a single choice from {choices} (without quotes or "
                "punctuation) corresponding to the correct answer with no other text.",
    "classify_cot": "First, answer by printing a single choice from {choices} (without quotes or punctuation) "
                    "corresponding to the correct answer. Then, from the next line, explain your reasonings "
                    "step by step.",
    "cot_classify": "First, write out in a step by step manner your reasoning to be sure that your conclusion is "
                    "correct. Avoid simply stating the correct answer at the outset. Then print only a single "
                    "choice from {choices} (without quotes or punctuation) on its own line corresponding to the "
                    "correct answer. At the end, repeat just the answer by itself on a new line.\n\nReasoning:",
}


# --- helpers --------------------------------------------------------------------------------
def ideals(ideal: Any) -> list[Any]:
    return list(ideal) if isinstance(ideal, (list, tuple)) else [ideal]


def usage(*results: CompletionResult) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def chat_to_text(messages: list[dict[str, Any]]) -> str:
    """A chat prompt as text for a grader's template (OpenAI Evals' chat_prompt_to_text_prompt)."""
    prefixes = {"system": "", "user": "User: ", "assistant": "Assistant: "}
    text = ""
    for m in messages:
        role = m.get("name") or m.get("role", "")
        text += prefixes.get(role, role.capitalize() + ": ") + message_text(m.get("content", "")) + "\n"
    return text.lstrip()


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


# --- sample-file evals ----------------------------------------------------------------------
class JsonlEval(Eval):
    """Samples from a JSONL file; `required` keys are checked when loading, naming the line."""

    required: tuple[str, ...] = ("input", "ideal")

    def __init__(self, completion_fn: CompletionFn, *, samples_jsonl: str, seed: int = 0,
                 data_dir: str | None = None, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.samples_jsonl = samples_jsonl

    def load_samples(self) -> list[dict[str, Any]]:
        samples = read_jsonl(self.samples_jsonl)
        for i, sample in enumerate(samples):
            missing = [k for k in self.required if k not in sample]
            if missing:
                raise OpenGPT4Error(f"{self.samples_jsonl}: sample {i} lacks {', '.join(map(repr, missing))}")
        return samples


class BasicEval(JsonlEval):
    """One completion per sample, scored by `check`; few-shot chat turns as in OpenAI Evals."""

    metric = "accuracy"

    def __init__(self, completion_fn: CompletionFn, *, samples_jsonl: str, max_tokens: int = 500,
                 temperature: float = 0.0, num_few_shot: int = 0, few_shot_jsonl: str | None = None,
                 seed: int = 0, data_dir: str | None = None, **args: Any) -> None:
        super().__init__(completion_fn, samples_jsonl=samples_jsonl, seed=seed, data_dir=data_dir, **args)
        # Sampling (temperature > 0) is seeded by the run's seed, so a rerun samples the same text.
        self.decoding = Decoding(max_tokens=max_tokens, temperature=temperature,
                                 seed=seed if temperature > 0 else None)
        self.num_few_shot = num_few_shot
        self.few_shot: list[list[dict[str, Any]]] = []
        if num_few_shot > 0:
            if not few_shot_jsonl:
                raise OpenGPT4Error("num_few_shot > 0 needs few_shot_jsonl")
            rows = read_jsonl(few_shot_jsonl)[:num_few_shot]
            if not all(isinstance(r.get("sample"), list) for r in rows):
                raise OpenGPT4Error(f"{few_shot_jsonl}: few-shot rows must carry 'sample': a list of chat messages")
            self.few_shot = [r["sample"] for r in rows]

    def prompt(self, sample: dict[str, Any]) -> Prompt:
        """The sample's input with the few-shot turns placed before its last message."""
        prompt = sample["input"]
        if not self.few_shot:
            return prompt
        if not isinstance(prompt, list):
            raise OpenGPT4Error(f"sample {sample.get('sample_id')}: few-shot needs a chat input (a list of messages)")
        return prompt[:-1] + [m for shot in self.few_shot for m in shot] + prompt[-1:]

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


class Match(BasicEval):
    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        sampled = output.strip()
        picked = next((i for i in map(str, ideals(ideal)) if sampled.startswith(i)), None)
        return picked, float(picked is not None), {}


class Includes(BasicEval):
    def __init__(self, completion_fn: CompletionFn, *, ignore_case: bool = False, **args: Any) -> None:
        super().__init__(completion_fn, **args)
        self.ignore_case = ignore_case

    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        text = output.lower() if self.ignore_case else output
        picked = next((i for i in map(str, ideals(ideal)) if (i.lower() if self.ignore_case else i) in text), None)
        return picked, float(picked is not None), {}


class FuzzyMatch(BasicEval):
    def check(self, output: str, ideal: Any) -> tuple[Any, float, dict[str, Any]]:
        answers = ideals(ideal)
        picked = next((i for i in answers if fuzzy_match(output, i)), None)
        return picked, float(picked is not None), {"f1": f1_score(output, answers)}

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        f1 = [r.extra["f1"] for r in results]
        return {"f1_score": sum(f1) / len(f1)} if f1 else {}


class JsonMatch(BasicEval):
    def __init__(self, completion_fn: CompletionFn, *, max_tokens: int = 512, **args: Any) -> None:
        super().__init__(completion_fn, max_tokens=max_tokens, **args)

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


# --- model-graded ---------------------------------------------------------------------------
def get_choice(text: str, eval_type: str, choices: list[str]) -> str:
    """The choice a grader answered, as OpenAI Evals parses it: the first line (the last for
    cot_classify) that, without punctuation, starts or ends with a choice string."""
    lines = text.strip().split("\n")
    if eval_type.startswith("cot_classify"):
        lines = lines[::-1]
    for line in lines:
        line = "".join(ch for ch in line.strip() if ch not in string.punctuation)
        if not line:
            continue
        for choice in choices:
            if line.startswith(choice) or line.endswith(choice):
                return choice
    return INVALID


def fill(template: str, values: dict[str, Any], where: str) -> str:
    """str.format with only the template's slots, each one required; values are inserted verbatim."""
    slots = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = sorted(slots - set(values))
    if missing:
        raise OpenGPT4Error(f"{where}: no value for slot(s) {', '.join(missing)} of the grader prompt")
    return template.format(**{k: values[k] for k in slots})


class ModelBasedClassify(JsonlEval):
    """OpenAI Evals' model-graded classification.

    For each `input_outputs` pair (sample key -> slot), the model completes the sample's prompt
    unless the sample already carries the slot; the grader then answers the modelgraded spec's
    prompt with those slots filled. A grader answer that names no choice is `__invalid__` with
    score None: counted apart (`invalid`), not silently the lowest score as OpenAI Evals does.
    The eval's own `eval_type` (if any) appends OpenAI Evals' answer instructions and decides
    how the answer is parsed; else the spec's eval_type parses it (default classify).
    """

    metric = "score"

    def __init__(self, completion_fn: CompletionFn, *, samples_jsonl: str,
                 modelgraded_spec: ModelGradedSpec | dict[str, Any], eval_type: str | None = None,
                 grader: CompletionFn | None = None, modelgraded_spec_args: dict[str, Any] | None = None,
                 sample_kwargs: dict[str, Any] | None = None, eval_kwargs: dict[str, Any] | None = None,
                 seed: int = 0, data_dir: str | None = None, **args: Any) -> None:
        super().__init__(completion_fn, samples_jsonl=samples_jsonl, seed=seed, data_dir=data_dir, **args)
        if isinstance(modelgraded_spec, str):
            raise OpenGPT4Error(f"modelgraded spec {modelgraded_spec!r}: load it through the registry")
        mg = modelgraded_spec if isinstance(modelgraded_spec, ModelGradedSpec) else \
            parse_modelgraded("inline", modelgraded_spec)
        if eval_type is not None and eval_type not in ANSWER_PROMPTS:
            raise OpenGPT4Error(f"eval_type must be one of {', '.join(ANSWER_PROMPTS)}, got {eval_type!r}")
        self.mg, self.append_answer = mg, eval_type is not None
        self.eval_type = eval_type or mg.eval_type or "classify"
        self.grader = grader or completion_fn
        self.spec_args = dict(modelgraded_spec_args or {})
        self.required = tuple(mg.input_outputs)
        self.sample_decoding = self._decoding(sample_kwargs or {})
        self.grade_decoding = self._decoding(eval_kwargs or {})

    def _decoding(self, kwargs: dict[str, Any]) -> Decoding:
        """OpenAI Evals' sample_kwargs / eval_kwargs: max_tokens 1024 and greedy unless told otherwise."""
        temperature = float(kwargs.get("temperature", 0.0))
        return Decoding(max_tokens=int(kwargs.get("max_tokens", 1024)), temperature=temperature,
                        seed=self.seed if temperature > 0 else None)

    def grader_prompt(self, values: dict[str, Any], where: str) -> list[dict[str, Any]]:
        text_values = {k: chat_to_text(v) if isinstance(v, list) and v and isinstance(v[0], dict) else v
                       for k, v in values.items()}
        messages = [{"role": "user", "content": self.mg.prompt}] if isinstance(self.mg.prompt, str) else self.mg.prompt
        messages = [{**m, "content": fill(message_text(m.get("content", "")), text_values, where)} for m in messages]
        if self.append_answer:
            choices = " or ".join(f'"{c}"' for c in self.mg.choice_strings)
            answer = ANSWER_PROMPTS[self.eval_type].format(choices=choices)
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + "\n\n" + answer}
        return messages

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        completions: list[dict[str, str]] = [{} for _ in samples]
        spent: list[list[CompletionResult]] = [[] for _ in samples]
        for key, slot in self.mg.input_outputs.items():
            todo = [i for i, s in enumerate(samples) if slot not in s]
            if not todo:
                continue
            results = self.completion_fn.complete([samples[i][key] for i in todo], self.sample_decoding)
            for i, result in zip(todo, results, strict=True):
                completions[i][slot] = result.texts[0]
                spent[i].append(result)
        prompts = [self.grader_prompt({**completions[i], **s, **self.spec_args}, f"sample {s['sample_id']}")
                   for i, s in enumerate(samples)]
        grades = self.grader.complete(prompts, self.grade_decoding)
        out = []
        for i, (sample, prompt, grade) in enumerate(zip(samples, prompts, grades, strict=True)):
            choice = get_choice(grade.texts[0], self.eval_type, self.mg.choice_strings)
            scores = self.mg.choice_scores
            score = scores[choice] if scores is not None and choice != INVALID else None
            outputs = {slot: completions[i].get(slot, sample.get(slot)) for slot in self.mg.input_outputs.values()}
            first_key = next(iter(self.mg.input_outputs))
            out.append(SampleResult(
                sample_id=sample["sample_id"], prompt=sample[first_key],
                output=next(iter(outputs.values())) if len(outputs) == 1 else outputs,
                parsed=choice, ideal=sample.get("ideal"), score=score, usage=usage(*spent[i], grade),
                extra={"grader_prompt": prompt, "grader_output": grade.texts[0]}))
        return out

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        counts = Counter(r.parsed for r in results)
        invalid = counts.pop(INVALID, 0)
        return {"counts": {c: counts.get(c, 0) for c in self.mg.choice_strings}, "invalid": invalid,
                "invalid_rate": invalid / len(results) if results else 0.0}
