"""OpenAI Evals' model-graded classification (elsuite/modelgraded), on our `api.Eval`.

A modelgraded spec (a registry's `modelgraded/*.yaml`) is a grader prompt with slots, the
choices the grader may answer and their scores, and `input_outputs`: which sample key the
policy model completes into which slot. For each sample, as OpenAI Evals does:

1. the inputs are scrubbed (braces doubled) and the policy completes each input whose slot the
   sample does not fill already; `multicomp_n` > 1 asks for that many completions, joined with
   the spec's `output_template`;
2. the grader answers the spec's prompt, its slots filled from the completions, the sample's
   own keys, `modelgraded_spec_args` and `n` (= multicomp_n); the eval's `eval_type` appends
   OpenAI Evals' answer instructions;
3. the answer is read line by line with `match_fn` (last line first when the spec's eval_type,
   else the eval's, is a cot_classify); no match is `__invalid__`, scored as the lowest choice
   score ("each invalid contributes the lowest score", as OpenAI Evals puts it);
4. `metaeval`: the choice is compared with the sample's labelled `choice` (metascore).

Everything that OpenAI Evals would only fail on at the first sample (an unknown eval_type or
match_fn, a missing slot, no output_template for multicomp_n) is refused before anything runs.
The report holds OpenAI Evals' keys: `counts/<choice>`, `score`, `metascore`.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opengpt4.errors import InvalidEvalArgument, OpenGPT4Error

from .api import CompletionFn, CompletionResult, Decoding, SampleResult
from .prompts import Chat, fill, fill_prompt, is_chat, render, scrub_braces, slots, takes_chat
from .templates import JsonlEval, mean, usage

INVALID = "__invalid__"  # a grader answer that names no choice (OpenAI Evals' INVALID_STR)

ANSWER_PROMPTS = {  # appended to the grader prompt when the eval names an eval_type (OpenAI Evals' wording)
    "classify": "Answer the question by printing only a single choice from {choices} (without quotes or "
                "punctuation) corresponding to the correct answer with no other text.",
    "classify_cot": "First, answer by printing a single choice from {choices} (without quotes or punctuation) "
                    "corresponding to the correct answer. Then, from the next line, explain your reasonings "
                    "step by step.",
    "cot_classify": "First, write out in a step by step manner your reasoning to be sure that your conclusion is "
                    "correct. Avoid simply stating the correct answer at the outset. Then print only a single "
                    "choice from {choices} (without quotes or punctuation) on its own line corresponding to the "
                    "correct answer. At the end, repeat just the answer by itself on a new line.\n\nReasoning:",
    "cot_classify_jp": "まず、一歩一歩あなたの推論を書き出してください。単に正しい答えを最初に述べることを避けてください。"
                       "次に、{choices}（引用符や句読点なし）から正しい答えに対応する1つの選択肢を単独の行に書きだしてください。"
                       "最後に、答えだけを新しい行に繰り返してください。\n\n推論：",
}
EVAL_TYPES = tuple(ANSWER_PROMPTS)

# How a line of the grader's answer (punctuation removed) is matched against a choice. As in
# OpenAI Evals, "include" asks whether the *line* is inside the choice.
MATCH_FNS = {
    "include": lambda line, choice: line in choice,
    "exact": lambda line, choice: line == choice,
    "endswith": lambda line, choice: line.endswith(choice),
    "starts_or_endswith": lambda line, choice: line.startswith(choice) or line.endswith(choice),
}

# choice_strings keywords: n choices, with n = multicomp_n (one per policy completion).
FROM_N = {"from_n": lambda i: str(i + 1), "from_n_abc": lambda i: string.ascii_lowercase[i % 26],
          "from_n_ABC": lambda i: string.ascii_uppercase[i % 26]}


@dataclass
class ModelGradedSpec:
    name: str
    prompt: str | Chat  # a template with {input}/{completion}/{ideal}-style slots
    choice_strings: list[str] | str  # the choices, or a FROM_N keyword
    input_outputs: dict[str, str]  # sample key of a prompt -> slot its completion fills
    choice_scores: dict[str, float] | str | None = None  # per choice, or "from_strings"
    eval_type: str | None = None  # decides how the grader's answer is read
    output_template: str | None = None  # joins multicomp_n completions: {i}, {i_abc}, {i_ABC}, {output}, {n}

    def slots(self) -> list[str]:
        texts = [self.prompt] if isinstance(self.prompt, str) else [m.get("content", "") for m in self.prompt]
        return sorted({s for t in texts for s in slots(t)})

    def choices(self, n: int) -> list[str]:
        if isinstance(self.choice_strings, str):  # parse_modelgraded keeps only FROM_N keywords as strings
            return [FROM_N[self.choice_strings](i) for i in range(n)]
        return self.choice_strings

    def scores(self, choices: list[str]) -> dict[str, float] | None:
        if self.choice_scores == "from_strings":
            try:
                return {c: float(c) for c in choices}
            except ValueError:
                raise OpenGPT4Error(f"modelgraded spec {self.name!r}: choice_scores 'from_strings' needs numeric "
                                    f"choices, got {choices}") from None
        return self.choice_scores if isinstance(self.choice_scores, dict) else None


def check_choices(choices: list[str], where: str) -> None:
    bad = [c for c in choices if not c or any(ch in string.punctuation for ch in c)]
    if not choices or bad:  # the answer is read with its punctuation removed, so no choice may hold any
        raise OpenGPT4Error(f"{where}: choice strings must be non-empty and free of punctuation, got {choices}")


def parse_modelgraded(name: str, raw: Any, file: Path | None = None) -> ModelGradedSpec:
    """Check and normalize one modelgraded spec ("ABCDE" -> a list). Keys OpenAI Evals does not
    read (e.g. format_type) are ignored, as it ignores them."""
    where = f"{file}: modelgraded spec {name!r}" if file else f"modelgraded spec {name!r}"
    if not isinstance(raw, dict):
        raise OpenGPT4Error(f"{where} must be a mapping")
    missing = [k for k in ("prompt", "choice_strings") if k not in raw]
    if missing:
        raise OpenGPT4Error(f"{where} lacks {', '.join(missing)}")
    choices = raw["choice_strings"]
    if not (isinstance(choices, str) and choices in FROM_N):
        choices = list(choices) if isinstance(choices, str) else [str(c) for c in choices]
        check_choices(choices, where)
    scores = raw.get("choice_scores")
    if isinstance(scores, dict):
        scores = {str(k): float(v) for k, v in scores.items()}
        if isinstance(choices, list) and not set(choices) <= set(scores):
            raise OpenGPT4Error(f"{where}: choice_scores must give a score to each of {choices}")
    elif scores not in (None, "from_strings"):
        raise OpenGPT4Error(f"{where}: choice_scores must be a mapping or 'from_strings', got {scores!r}")
    eval_type = raw.get("eval_type")
    if eval_type is not None and eval_type not in EVAL_TYPES:
        raise OpenGPT4Error(f"{where}: eval_type must be one of {', '.join(EVAL_TYPES)}, got {eval_type!r}")
    prompt = raw["prompt"]
    if not isinstance(prompt, str) and not is_chat(prompt):
        raise OpenGPT4Error(f"{where}: prompt must be a string or a list of chat messages")
    spec = ModelGradedSpec(name=name, prompt=prompt, choice_strings=choices,
                           input_outputs=dict(raw.get("input_outputs") or {"input": "completion"}),
                           choice_scores=scores, eval_type=eval_type, output_template=raw.get("output_template"))
    if isinstance(choices, list):
        spec.scores(choices)  # numeric choices for from_strings
    return spec


def get_choice(text: str, eval_type: str, choices: list[str], match_fn: str = "starts_or_endswith") -> str:
    """The choice a grader answered, as OpenAI Evals reads it: the first line (the last for a
    cot_classify) that, without punctuation, matches a choice."""
    lines = text.strip().split("\n")
    if eval_type.startswith("cot_classify"):
        lines = lines[::-1]
    for line in lines:
        line = "".join(ch for ch in line.strip() if ch not in string.punctuation)
        if not line:
            continue
        for choice in choices:
            if MATCH_FNS[match_fn](line, choice):
                return choice
    return INVALID


class ModelBasedClassify(JsonlEval):
    metric = "score"

    def __init__(self, completion_fn: CompletionFn, *, modelgraded_spec: ModelGradedSpec | dict[str, Any],
                 modelgraded_spec_args: dict[str, Any] | None = None, sample_kwargs: dict[str, Any] | None = None,
                 eval_kwargs: dict[str, Any] | None = None, multicomp_n: int | str = 1, eval_type: str | None = None,
                 match_fn: str | None = None, metaeval: bool = False, grader: CompletionFn | None = None,
                 **kw: Any) -> None:
        super().__init__(completion_fn, **kw)
        if isinstance(modelgraded_spec, str):
            raise OpenGPT4Error(f"modelgraded spec {modelgraded_spec!r}: load it through the registry")
        mg = modelgraded_spec if isinstance(modelgraded_spec, ModelGradedSpec) else \
            parse_modelgraded("inline", modelgraded_spec)
        if multicomp_n == "from_models":
            raise InvalidEvalArgument("multicomp_n", "'from_models' compares several policy models; opengpt4 runs "
                                                     "one model per eval, so give the number of completions")
        if not isinstance(multicomp_n, int) or isinstance(multicomp_n, bool) or multicomp_n < 1:
            raise InvalidEvalArgument("multicomp_n", f"must be a positive integer, got {multicomp_n!r}")
        if multicomp_n > 1 and not mg.output_template:
            raise InvalidEvalArgument("multicomp_n", f"modelgraded spec {mg.name!r} has no output_template to join "
                                                     f"{multicomp_n} completions with")
        if eval_type is not None and eval_type not in EVAL_TYPES:
            raise InvalidEvalArgument("eval_type", f"must be one of {', '.join(EVAL_TYPES)}, got {eval_type!r}")
        if (mg.eval_type or eval_type) is None:
            raise InvalidEvalArgument("eval_type", f"neither the eval nor modelgraded spec {mg.name!r} names one, "
                                                   "so the grader's answer cannot be read")
        if (match_fn or "starts_or_endswith") not in MATCH_FNS:
            raise InvalidEvalArgument("match_fn", f"must be one of {', '.join(MATCH_FNS)}, got {match_fn!r}")
        self.mg, self.n, self.metaeval = mg, multicomp_n, metaeval
        self.read_as = mg.eval_type or eval_type  # the spec's eval_type decides how answers are read
        self.match_fn = match_fn or "starts_or_endswith"
        self.choices = mg.choices(multicomp_n)
        self.choice_scores = mg.scores(self.choices)
        self.grader = grader or completion_fn
        self.spec_args = dict(modelgraded_spec_args or {})
        self.required = tuple(mg.input_outputs) + (("choice",) if metaeval else ())
        self.sample_decoding = self._decoding("sample_kwargs", sample_kwargs or {}, n=multicomp_n)
        self.grade_decoding = self._decoding("eval_kwargs", eval_kwargs or {})
        self.template = [{"role": "user", "content": mg.prompt}] if isinstance(mg.prompt, str) else mg.prompt
        if eval_type is not None:
            answer = ANSWER_PROMPTS[eval_type].format(choices=" or ".join(f'"{c}"' for c in self.choices))
            last = self.template[-1]
            self.template = [*self.template[:-1], {**last, "content": last["content"] + "\n\n" + answer}]

    def _decoding(self, name: str, kwargs: dict[str, Any], n: int = 1) -> Decoding:
        """OpenAI Evals' sample_kwargs / eval_kwargs: max_tokens 1024 and greedy unless told otherwise."""
        unknown = sorted(set(kwargs) - {"max_tokens", "temperature"})
        if unknown:
            raise InvalidEvalArgument(name, f"takes max_tokens and temperature, not {', '.join(unknown)}")
        temperature = float(kwargs.get("temperature", 0.0))
        return Decoding(max_tokens=int(kwargs.get("max_tokens", 1024)), temperature=temperature, n=n,
                        seed=self.seed if temperature > 0 else None)

    def load_samples(self) -> list[dict[str, Any]]:
        """The samples, each checked to fill every slot of the grader prompt before anything runs."""
        samples = super().load_samples()
        given = set(self.mg.input_outputs.values()) | set(self.spec_args) | {"n"}
        for i, sample in enumerate(samples):
            missing = sorted(set(self.mg.slots()) - given - set(sample))
            if missing:
                raise OpenGPT4Error(f"{self.samples_jsonl}: sample {i}: no value for slot(s) {', '.join(missing)} "
                                    f"of modelgraded spec {self.mg.name!r}")
        return samples

    def join(self, texts: list[str]) -> str:
        """One completion, or multicomp_n of them through the output template (OpenAI Evals' concat)."""
        if self.n == 1:
            return texts[0]
        assert self.mg.output_template is not None  # checked in __init__
        return "".join(fill(self.mg.output_template, {"i": i + 1, "i_abc": string.ascii_lowercase[i % 26],
                                                      "i_ABC": string.ascii_uppercase[i % 26], "output": text,
                                                      "n": len(texts)}, f"output_template of {self.mg.name!r}")
                       for i, text in enumerate(texts)).strip()

    def score(self, choice: str) -> float | None:
        if self.choice_scores is None:
            return None
        return min(self.choice_scores.values()) if choice == INVALID else self.choice_scores[choice]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        policy_chat, grader_chat = takes_chat(self.completion_fn), takes_chat(self.grader)
        completions: list[dict[str, str]] = [{} for _ in samples]
        spent: list[list[CompletionResult]] = [[] for _ in samples]
        for key, slot in self.mg.input_outputs.items():
            todo = [i for i, s in enumerate(samples) if slot not in s]
            if not todo:
                continue
            results = self.completion_fn.complete([render(samples[i][key], policy_chat) for i in todo],
                                                  self.sample_decoding)
            for i, result in zip(todo, results, strict=True):
                completions[i][slot] = self.join(result.texts)
                spent[i].append(result)
        prompts = []
        for i, sample in enumerate(samples):
            scrubbed = {**sample, **{k: scrub_braces(sample[k]) for k in self.mg.input_outputs}}
            values = {**completions[i], **scrubbed, **self.spec_args, "n": self.n}
            prompts.append(render(fill_prompt(self.template, values, f"sample {sample['sample_id']}"), grader_chat))
        grades = self.grader.complete(prompts, self.grade_decoding)
        first_key = next(iter(self.mg.input_outputs))
        out = []
        for i, (sample, prompt, grade) in enumerate(zip(samples, prompts, grades, strict=True)):
            choice = get_choice(grade.texts[0], self.read_as, self.choices, self.match_fn)
            outputs = {slot: completions[i].get(slot, sample.get(slot)) for slot in self.mg.input_outputs.values()}
            extra: dict[str, Any] = {"grader_prompt": prompt, "grader_output": grade.texts[0]}
            if self.metaeval:
                extra["metascore"] = choice == sample["choice"]
            out.append(SampleResult(
                sample_id=sample["sample_id"], prompt=render(sample[first_key], policy_chat),
                output=next(iter(outputs.values())) if len(outputs) == 1 else outputs, parsed=choice,
                ideal=sample.get("ideal"), score=self.score(choice), usage=usage(*spent[i], grade), extra=extra))
        return out

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        """OpenAI Evals' report: counts/<choice> of the choices given, score, metascore."""
        counts = Counter(r.parsed for r in results)
        report: dict[str, Any] = {f"counts/{c}": counts[c] for c in [*self.choices, INVALID] if counts[c]}
        scores = [r.score for r in results if r.score is not None]
        if scores:
            report["score"] = mean(scores)
        metascores = [float(r.extra["metascore"]) for r in results if "metascore" in r.extra]
        if metascores:
            report["metascore"] = mean(metascores)
        return report
