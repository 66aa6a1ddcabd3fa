"""Question templates: the phrasings stage 2 trains on, and held-out phrasings only the evals ask.

The synthetic image generator (data/images.py) asks each question in one canonical wording.
A model that only ever saw that wording could score by matching strings, so every question
type gets more train phrasings and one or two held-out phrasings: the visual evals ask only
held-out ones, and an answer must come from the image and the question's meaning.

A template is (id, eval task, canonical regex, train phrasings, held-out phrasings); the
regex's named groups fill the phrasings' {slots}. The canonical wording is a train phrasing.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from opengpt4.data.images import SHAPES


@dataclass(frozen=True)
class Template:
    id: str  # "scene.count": the question type, the unit of the majority-answer baseline
    task: str  # the eval that asks it: shapes, charts, ocr, digits ("" : trained, not evaluated)
    canonical: re.Pattern
    train: tuple[str, ...]
    heldout: tuple[str, ...]


def _t(id: str, task: str, canonical: str, train: tuple[str, ...], heldout: tuple[str, ...]) -> Template:
    return Template(id, task, re.compile(canonical), train, heldout)


TEMPLATES = (
    _t("scene.count", "shapes", r"How many shapes are there\?",
       ("How many shapes are there?", "Count the shapes in the image."),
       ("What is the number of shapes in the picture?",)),
    _t("scene.shape_of_color", "shapes", r"What shape is (?P<color>\w+)\?",
       ("What shape is {color}?", "Which shape is {color}?"),
       ("The {color} object is which shape?",)),
    _t("scene.color_of_shape", "shapes", rf"What color is the (?P<shape>{'|'.join(SHAPES)})\?",
       ("What color is the {shape}?", "Which color does the {shape} have?"),
       ("Tell me the color of the {shape}.",)),
    _t("scene.left_right", "shapes", r"Is the (?P<shape>\w+) on the left or the right\?",
       ("Is the {shape} on the left or the right?", "Left or right: where is the {shape}?"),
       ("Which side is the {shape} on, left or right?",)),
    _t("scene.top_bottom", "shapes", r"Is the (?P<shape>\w+) at the top or the bottom\?",
       ("Is the {shape} at the top or the bottom?", "Top or bottom: where is the {shape}?"),
       ("Is the {shape} in the upper or the lower half? Answer top or bottom.",)),
    _t("scene.relation", "shapes", r"What shape is (?P<rel>directly \w+(?: of)?) the (?P<shape>\w+)\?",
       ("What shape is {rel} the {shape}?", "Which shape is {rel} the {shape}?"),
       ("Name the shape {rel} the {shape}.",)),
    _t("chart.tallest", "charts", r"Which bar is the tallest\?",
       ("Which bar is the tallest?", "Which bar is highest?"), ("Which bar has the largest value?",)),
    _t("chart.shortest", "charts", r"Which bar is the shortest\?",
       ("Which bar is the shortest?", "Which bar is lowest?"), ("Which bar has the smallest value?",)),
    _t("chart.value", "charts", r"What is the value of bar (?P<bar>\w)\?",
       ("What is the value of bar {bar}?", "How tall is bar {bar}?"), ("Read the value of bar {bar}.",)),
    _t("chart.compare", "charts", r"Is (?P<a>\w) taller than (?P<b>\w)\?",
       ("Is {a} taller than {b}?", "Is bar {a} higher than bar {b}?"), ("Does bar {a} exceed bar {b}?",)),
    _t("chart.count", "charts", r"How many bars are there\?",
       ("How many bars are there?", "Count the bars."), ("What is the number of bars in the chart?",)),
    _t("text.word", "ocr", r"What word is written\?",
       ("What word is written?", "Read the word."), ("Which word does the image show?",)),
    _t("text.word_length", "", r"How many letters does the word have\?",
       ("How many letters does the word have?",), ("Count the letters of the word.",)),
    _t("text.first_letter", "", r"What is the first letter of the word\?",
       ("What is the first letter of the word?",), ("Which letter does the word start with?",)),
    _t("text.number", "ocr", r"What number is shown\?",
       ("What number is shown?", "Read the number."), ("Which number does the image show?",)),
    _t("text.number_length", "", r"How many digits does the number have\?",
       ("How many digits does the number have?",), ("Count the digits of the number.",)),
    _t("text.last_digit", "", r"What is the last digit of the number\?",
       ("What is the last digit of the number?",), ("Which digit does the number end with?",)),
    _t("form.age", "ocr", r"What is the age on the form\?",
       ("What is the age on the form?", "Read the age field."), ("Which age does the form give?",)),
    _t("form.name", "ocr", r"What is the name on the form\?",
       ("What is the name on the form?", "Read the name field."), ("Which name is on the form?",)),
    _t("text.color", "", r"What color is the text\?",
       ("What color is the text?", "Which color is the writing?"), ("In what color is the text written?",)),
    _t("digit.value", "digits", r"What digit is this\?",
       ("What digit is this?", "Which digit is written here?"), ("Read the handwritten digit.",)),
)
DIGIT_QUESTION = "What digit is this?"
CAPTION_REQUESTS = ("Describe the image.", "What does this image show?", "Give a short description of the picture.")
TASKS = ("shapes", "charts", "ocr", "digits")


def match(question: str) -> tuple[Template, dict[str, str]]:
    """The template of a canonical question, and its slot values."""
    for t in TEMPLATES:
        if m := t.canonical.fullmatch(question):
            return t, m.groupdict()
    raise KeyError(f"no template matches {question!r} (a question data/images.py added?)")


def phrase(question: str, rng: random.Random, split: str) -> tuple[str, Template]:
    """`question` (canonical) in a random phrasing of `split` ("train" or "heldout")."""
    t, slots = match(question)
    return rng.choice(t.train if split == "train" else t.heldout).format(**slots), t
