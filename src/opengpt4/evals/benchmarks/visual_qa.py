"""Visual question answering on held-out images and held-out phrasings, with its baselines.

    visual_shapes   shapes VQA (colour, shape, count, position), exact match as in VQA
    visual_charts   bar-chart reading, relaxed accuracy as in ChartQA (a number within 5%, else exact)
    visual_ocr      words, numbers and form fields, ANLS as in DocVQA
    visual_digits   scikit-learn's real handwritten digits (held-out scans), accuracy

The questions come from a visual data dir (`opengpt4 vision data`; `data_dir`, default the one
`vision align` uses), already deduplicated against the training images (vision/data.py). Each
asks with one image, as a chat message of an image_url part (a PNG data URL) and the question,
so local checkpoints and OpenAI-compatible servers are asked alike.

Baselines, as the same eval with `images`: `blank` (a white image in place of each), and
`mismatched` (each question shown another question's image: the model answering blind, with
answers still shaped like image answers). Every report also carries `majority_template_baseline`:
answering each question with the most common answer of its question template among these
questions, a question-only guess that knows the answer distribution (an upper bound on what
the question alone gives). The from-scratch mini model is another `--model` for the same evals.
"""

from __future__ import annotations

import base64
import io
import re
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from opengpt4.errors import InvalidEvalArgument
from opengpt4.evals.api import Decoding, Eval, SampleResult

METRICS = {"shapes": "accuracy", "charts": "relaxed_accuracy", "ocr": "anls", "digits": "accuracy"}
IMAGES = ("real", "blank", "mismatched")
ANLS_THRESHOLD = 0.5  # DocVQA: a reading further than this normalised edit distance scores 0
RELAXED_TOLERANCE = 0.05  # ChartQA: a number within 5% of the answer is right
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalise(text: str) -> str:
    """The first line, lowercased, spaces collapsed, a final period dropped."""
    line = text.strip().split("\n")[0]
    return " ".join(line.lower().split()).rstrip(".").strip()


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def anls(prediction: str, answers: str | list[str]) -> float:
    """Average Normalised Levenshtein Similarity of one prediction (DocVQA, Biten et al. 2019): the
    best over the accepted answers of 1 - edit distance / longer length, case-insensitive, 0 when
    that distance is ANLS_THRESHOLD or more."""
    best = 0.0
    for answer in [answers] if isinstance(answers, str) else answers:
        p, a = normalise(prediction), normalise(answer)
        distance = levenshtein(p, a) / max(len(p), len(a), 1)
        best = max(best, 1 - distance if distance < ANLS_THRESHOLD else 0.0)
    return best


def relaxed_match(prediction: str, answer: str) -> bool:
    """ChartQA's relaxed accuracy: a numeric answer within RELAXED_TOLERANCE of the truth (the first
    number in the reply), anything else an exact match."""
    try:
        target = float(answer)
    except ValueError:
        return normalise(prediction) == normalise(answer)
    found = _NUMBER.search(prediction)
    if found is None:
        return False
    value = float(found.group())
    return abs(value - target) <= RELAXED_TOLERANCE * abs(target) if target else value == 0


def first_digit(text: str) -> str | None:
    found = re.search(r"\d", text)
    return found.group() if found else None


def score(task: str, reply: str, answer: str) -> tuple[Any, float]:
    """(what was read from the reply, its score) under the task's metric."""
    if task == "digits":
        digit = first_digit(reply)
        return digit, float(digit == answer)
    if task == "charts":
        return normalise(reply), float(relaxed_match(reply, answer))
    if task == "ocr":
        return normalise(reply), anls(reply, answer)
    return normalise(reply), float(normalise(reply) == normalise(answer))


def data_url(path: str | None) -> str:
    """A PNG file (None: a white 64x64 image) as a data URL."""
    if path is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (255, 255, 255)).save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def majority_template_baseline(samples: list[dict[str, Any]], task: str) -> float:
    """The score of answering each question with its template's most common answer here."""
    by_template: dict[str, Counter] = {}
    for s in samples:
        by_template.setdefault(s["template"], Counter())[s["answer"]] += 1
    guess = {t: c.most_common(1)[0][0] for t, c in by_template.items()}
    return sum(score(task, guess[s["template"]], s["answer"])[1] for s in samples) / max(len(samples), 1)


class VisualQA(Eval):
    batch_size = 16

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, task: str = "shapes",
                 images: str = "real", max_tokens: int = 16, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        if task not in METRICS:
            raise InvalidEvalArgument("task", f"{task!r} is not one of {', '.join(METRICS)}")
        if images not in IMAGES:
            raise InvalidEvalArgument("images", f"{images!r} is not one of {', '.join(IMAGES)}")
        self.task, self.images, self.metric = task, images, METRICS[task]
        self.decoding = Decoding(max_tokens=max_tokens, temperature=0.0)

    def load_samples(self) -> list[dict[str, Any]]:
        from opengpt4.vision.data import default_data_dir, read_eval

        rows = read_eval(self.data_dir or default_data_dir(), self.task)
        shown: list[str | None] = [r["image"] for r in rows]
        if self.images == "blank":
            shown = [None] * len(rows)
        elif self.images == "mismatched":  # half the list away, then on to the first other image
            n = len(rows)
            for i in range(n):
                j = (i + n // 2) % n
                while rows[j]["image"] == rows[i]["image"] and j != (i - 1) % n:
                    j = (j + 1) % n
                shown[i] = rows[j]["image"]
        self.samples = [{"sample_id": f"visual_{self.task}/{r['id']}", "question": r["question"], "answer": r["answer"],
                         "template": r["template"], "image": r["image"], "shown": s}
                        for r, s in zip(rows, shown, strict=True)]
        return self.samples

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        prompts = [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(s["shown"])}},
                                                 {"type": "text", "text": s["question"]}]}] for s in samples]
        completions = self.completion_fn.complete(prompts, self.decoding)
        results = []
        for s, completion in zip(samples, completions, strict=True):
            reply = completion.texts[0]
            parsed, value = score(self.task, reply, s["answer"])
            results.append(SampleResult(
                sample_id=s["sample_id"], prompt={"image": s["shown"], "question": s["question"]}, output=reply,
                parsed=parsed, ideal=s["answer"], score=value,
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                extra={"template": s["template"]}))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        asked = {r.sample_id for r in results}
        samples = [s for s in self.samples if s["sample_id"] in asked]
        templates = sorted({r.extra["template"] for r in results})
        by_template = {t: sum(r.score for r in results if r.extra["template"] == t)
                       / sum(r.extra["template"] == t for r in results) for t in templates}
        return {"images": self.images, f"{self.metric}_by_template": by_template,
                "majority_template_baseline": majority_template_baseline(samples, self.task)}
