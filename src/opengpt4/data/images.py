"""Synthetic image tasks: scenes of shapes, bar charts and rendered text, each with questions.

The miniature of the announcement's visual benchmarks (VQA, ChartQA, TextVQA/DocVQA): every
image is drawn from a seed with its answers known exactly, so a model of a few million
parameters can learn to look, and accuracy can be measured against the majority-class
baseline. Answers are deliberately balanced (uniform choices of colour, shape, count, value)
so that guessing the most common answer of a question type stays well under 50%.

Images travel between stages as PNG files plus a JSONL manifest in the LLaVA conversation
format, the same format real image-instruction data uses, so `read_llava` reads both.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from opengpt4.errors import DataFileError, ImageError
from opengpt4.files import iter_jsonl, read_text, write_jsonl
from opengpt4.model.reader import GLUE
from opengpt4.model.vision import load_image

KINDS = ("scene", "chart", "text")
SHAPES = ("circle", "square", "triangle", "cross", "star")
# Saturated and far apart, so they stay distinct after the model's bicubic resize.
COLORS = {
    "red": (230, 25, 25), "green": (30, 170, 50), "blue": (30, 80, 230),
    "yellow": (240, 220, 30), "purple": (150, 50, 200), "orange": (250, 140, 20),
}
TEXT_COLORS = {"black": (0, 0, 0), "red": COLORS["red"], "green": COLORS["green"],
               "blue": COLORS["blue"], "purple": COLORS["purple"]}
WHITE, BLACK, INK = (255, 255, 255), (0, 0, 0), (40, 40, 40)
# A 2x2 grid of (column, row) cells: four big cells keep shapes about 20 px wide at 64x64,
# still recognisable at the 32x32 of the test preset.
CELLS = [(0, 0), (1, 0), (0, 1), (1, 1)]
ROW_NAMES, COL_NAMES = ("top", "bottom"), ("left", "right")
RELATIONS = {"directly left of": (-1, 0), "directly right of": (1, 0), "directly above": (0, -1), "directly below": (0, 1)}
CONSONANTS, VOWELS = "BDFGKLMNPRSTVZ", "AEIOU"


@dataclass
class ImageSample:
    image: Image.Image  # RGB, size x size
    caption: str
    qa: list[tuple[str, str]]  # (question, short exact answer)
    kind: str  # "scene" | "chart" | "text"
    # What the image holds, as the image reader's slot words (model/reader.py: "" an empty slot, "##x" glued
    # to the word before), in a fixed layout per kind so that each slot is one place or field of the image.
    reading: tuple[str, ...] = ()


def _spelled(text: str, width: int) -> list[str]:
    """A string letter by letter in `width` slots (glued, the rest empty), then its full stop."""
    return [text[0], *(GLUE + c for c in text[1:])] + [""] * (width - len(text)) + [GLUE + "."]


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's built-in font, scalable through FreeType (in every Pillow wheel): no font file to ship.
    return ImageFont.load_default(size=max(size, 1))


def _fit_font(lines: Sequence[str], width: float, height: float, stroke: int) -> ImageFont.FreeTypeFont:
    """The largest font at which every line fits in width and all lines stacked fit in height."""
    for size in range(int(height), 3, -1):
        font = _font(size)
        boxes = [font.getbbox(line, stroke_width=stroke) for line in lines]
        if max(b[2] - b[0] for b in boxes) <= width and sum(b[3] - b[1] for b in boxes) * 1.3 <= height:
            return font
    return _font(4)


def _pick(rng: random.Random, qs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A random 2-4 of the candidate questions, in random order."""
    return rng.sample(qs, rng.randint(2, min(4, len(qs))))


# --- scenes ------------------------------------------------------------------------------


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = round(r * 0.85)  # about a circle's area, so size does not give the shape away
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        t = r // 3
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
    else:  # star: five points, alternating outer and inner radius
        pts = [(cx + rad * math.sin(a), cy - rad * math.cos(a))
               for i in range(10) for a, rad in [(i * math.pi / 5, r if i % 2 == 0 else r * 0.45)]]
        draw.polygon(pts, fill=fill)


def _scene(rng: random.Random, size: int) -> ImageSample:
    bg_name, bg = rng.choice([("white", WHITE), ("black", BLACK)])
    n = rng.randint(1, 4)
    # Shapes may repeat (two circles) but colours never do, so "what shape is red" always has one answer.
    objs = [(rng.choice(SHAPES), color, cell)
            for color, cell in zip(rng.sample(list(COLORS), n), rng.sample(CELLS, n), strict=True)]
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    q = size // 4
    for shape, color, (col, row) in objs:
        # Jitter and radius are bounded so that every shape stays inside its own quarter.
        r = rng.randint(size * 9 // 64, size * 11 // 64)
        j = size // 16
        _draw_shape(draw, shape, q * (2 * col + 1) + rng.randint(-j, j), q * (2 * row + 1) + rng.randint(-j, j),
                    r, COLORS[color])

    where = {cell: shape for shape, _, cell in objs}
    unique = [o for o in objs if sum(s == o[0] for s, _, _ in objs) == 1]
    shape, color, _ = rng.choice(objs)
    qs = [("How many shapes are there?", str(n)), (f"What shape is {color}?", shape)]
    if unique:  # a question naming a shape needs exactly one of it
        shape, color, _ = rng.choice(unique)
        qs.append((f"What color is the {shape}?", color))
        shape, _, (col, row) = rng.choice(unique)
        qs.append((f"Is the {shape} on the left or the right?", COL_NAMES[col]))
        shape, _, (col, row) = rng.choice(unique)
        qs.append((f"Is the {shape} at the top or the bottom?", ROW_NAMES[row]))
        # "Directly": in a 2x2 grid a shape bottom-left is also left of one top-right.
        pairs = [(f"What shape is {rel} the {shape}?", where[nb]) for shape, _, (col, row) in unique
                 for rel, (dx, dy) in RELATIONS.items() if (nb := (col + dx, row + dy)) in where]
        if pairs:
            qs.append(rng.choice(pairs))
    parts = [f"{'an' if color == 'orange' else 'a'} {color} {shape} at the {ROW_NAMES[row]} {COL_NAMES[col]}"
             for shape, color, (col, row) in objs]
    caption = f"A {bg_name} image with {', '.join(parts[:-1])}{' and ' if n > 1 else ''}{parts[-1]}."
    held = {cell: (color, shape) for shape, color, cell in objs}
    reading = tuple(w for col, row in CELLS for w in (
        [f"{ROW_NAMES[row]} {COL_NAMES[col]}:", held[(col, row)][0], held[(col, row)][1] + "."]
        if (col, row) in held else [f"{ROW_NAMES[row]} {COL_NAMES[col]}:", "nothing.", ""]))
    return ImageSample(img, caption, _pick(rng, qs), "scene", reading)


# --- bar charts --------------------------------------------------------------------------


def _chart_layout(size: int, n_bars: int) -> tuple[int, int, int, int, int]:
    """(left margin, slot width, bar width, baseline y, pixels per unit): bar i spans x in
    [left + i*slot, left + i*slot + bar) and value v fills rows [baseline - v*unit, baseline)."""
    margin = size // 16
    slot = (size - 2 * margin) // n_bars
    baseline = size - size // 5
    unit = (baseline - size * 3 // 16) // 9  # room above the tallest bar (9) for its value
    return margin + (size - 2 * margin - slot * n_bars) // 2, slot, max(slot * 2 // 3, 1), baseline, unit


def _chart(rng: random.Random, size: int) -> ImageSample:
    n = rng.randint(3, 5)
    # Labels are A, B, C... in order, so finding bar C needs position, not reading tiny letters;
    # values are distinct, so tallest, shortest and comparisons never tie.
    labels, values = "ABCDE"[:n], rng.sample(range(1, 10), n)
    color = rng.choice(list(COLORS))
    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    left, slot, bar, baseline, unit = _chart_layout(size, n)
    font = _font(size * 3 // 16)  # not bold: at 12 px an outline merges 6, 8 and 9 into blobs
    draw.line((0, baseline, size - 1, baseline), fill=INK)
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x0 = left + i * slot
        draw.rectangle((x0, baseline - v * unit, x0 + bar - 1, baseline - 1), fill=COLORS[color])
        xc = x0 + bar / 2
        draw.text((xc, baseline - v * unit - 1), str(v), fill=INK, font=font, anchor="md")
        draw.text((xc, baseline + 1), label, fill=INK, font=font, anchor="mt")

    by = dict(zip(labels, values, strict=True))
    a, b = rng.sample(labels, 2)
    i = rng.choice(labels)
    qs = [("Which bar is the tallest?", max(by, key=by.get)),
          ("Which bar is the shortest?", min(by, key=by.get)),
          (f"What is the value of bar {i}?", str(by[i])),
          (f"Is {a} taller than {b}?", "yes" if by[a] > by[b] else "no"),
          ("How many bars are there?", str(n))]
    caption = f"A bar chart of {n} {color} bars: " + ", ".join(f"{k} is {v}" for k, v in by.items()) + "."
    reading = tuple(w for k in "ABCDE" for w in ([f"{k}:", f"{by[k]}."] if k in by else ["", ""])) + (
        "tallest:", f"{max(by, key=by.get)}.", "shortest:", f"{min(by, key=by.get)}.")
    return ImageSample(img, caption, _pick(rng, qs), "chart", reading)


# --- rendered text -----------------------------------------------------------------------


def _word(rng: random.Random, length: int) -> str:
    start = rng.randrange(2)  # pronounceable: consonants and vowels alternate
    return "".join(rng.choice(VOWELS if (k + start) % 2 else CONSONANTS) for k in range(length))


def _text(rng: random.Random, size: int) -> ImageSample:
    color = rng.choice(list(TEXT_COLORS))
    form = rng.choice(["word", "number", "form"])
    if form == "word":
        word = _word(rng, rng.randint(3, 5))
        lines, caption = [word], f'The word "{word}" written in {color}.'
        main = ("What word is written?", word)
        fields = ["word:", *_spelled(word, 5)]
        extra = [("How many letters does the word have?", str(len(word))),
                 ("What is the first letter of the word?", word[0])]
    elif form == "number":
        digits = rng.randint(2, 4)  # uniform length, so "how many digits" is balanced
        number = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        lines, caption = [number], f"The number {number} written in {color}."
        main = ("What number is shown?", number)
        fields = ["number:", *_spelled(number, 4)]
        extra = [("How many digits does the number have?", str(len(number))),
                 ("What is the last digit of the number?", number[-1])]
    else:
        name, age = _word(rng, 3), str(rng.randint(10, 99))
        lines, caption = [f"NAME: {name}", f"AGE: {age}"], f"A form in {color} with the name {name} and the age {age}."
        main = ("What is the age on the form?", age)
        fields = ["name:", *_spelled(name, 3), "age:", *_spelled(age, 2)]
        extra = [("What is the name on the form?", name)]
    extra.append(("What color is the text?", color))

    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    # A one-pixel outline at 64 px makes strokes bold enough to survive the resize to 32.
    stroke = size // 64
    font = _fit_font(lines, size * 0.9, size * (0.5 if form == "number" else 0.45) * len(lines), stroke)
    j = size // 16
    x, y = size / 2 + rng.randint(-j // 2, j // 2), size / 2 + rng.randint(-j, j)
    draw.multiline_text((x, y), "\n".join(lines), fill=TEXT_COLORS[color], font=font, anchor="mm", align="left",
                        stroke_width=stroke, stroke_fill=TEXT_COLORS[color])
    # The reading question always comes first: it is the point of the image.
    qa = [main] + rng.sample(extra, rng.randint(1, min(3, len(extra))))
    return ImageSample(img, caption, qa, "text", (*fields, "color:", f"{color}."))


def generate_images(seed: int, n: int, size: int = 64) -> list[ImageSample]:
    """n samples, kinds in rotation (scene, chart, text), each a function of (seed, index) only:
    the first k samples of a larger n are the same k samples."""
    makers = {"scene": _scene, "chart": _chart, "text": _text}
    # A string seed is hashed with SHA-512 by `random`, so nearby seeds give unrelated streams.
    return [makers[KINDS[i % 3]](random.Random(f"images:{seed}:{i}"), size) for i in range(n)]


# --- LLaVA-style manifests ---------------------------------------------------------------


def write_llava(samples: Sequence[ImageSample], out_dir: Path, name: str) -> Path:
    """Write out_dir/<name>/NNNNNN.png and out_dir/<name>.jsonl; return the manifest path.

    Images go to a temp dir renamed into place, then the manifest is written atomically: a
    crash leaves either the old pair or the new images beside the old manifest, never half a file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, img_dir = out_dir / f"{name}.jsonl", out_dir / name
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    old = Path(f"{tmp_dir}.old")
    entries = []
    try:
        for i, s in enumerate(samples):
            s.image.save(tmp_dir / f"{i:06d}.png", format="PNG")
            conv = []
            for k, (question, answer) in enumerate(s.qa):
                conv.append({"from": "human", "value": f"<image>\n{question}" if k == 0 else question})
                conv.append({"from": "gpt", "value": answer})
            entries.append({"id": f"{name}-{i:06d}", "image": f"{name}/{i:06d}.png", "kind": s.kind,
                            "caption": s.caption, "conversations": conv})
        if img_dir.exists():
            img_dir.rename(old)
        tmp_dir.rename(img_dir)
        write_jsonl(manifest, entries)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return manifest


def _parse(entry: object, where: str) -> tuple[str, list[tuple[str, str]]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise DataFileError(f"{where}: expected an object with an 'image' path")
    conv = entry.get("conversations")
    if not isinstance(conv, list) or not conv or len(conv) % 2:
        raise DataFileError(f"{where}: 'conversations' must be a non-empty list of human/gpt turn pairs")
    qa = []
    for k in range(0, len(conv), 2):
        h, g = conv[k], conv[k + 1]
        if not (isinstance(h, dict) and isinstance(g, dict) and h.get("from") == "human" and g.get("from") == "gpt"
                and isinstance(h.get("value"), str) and isinstance(g.get("value"), str)):
            raise DataFileError(f"{where}: turns {k} and {k + 1} are not a human question and a gpt answer")
        # Real data puts the marker before or after the question; the image position is ours to choose.
        qa.append((h["value"].replace("<image>", "").strip(), g["value"].strip()))
    return entry["image"], qa


def read_llava(manifest: Path) -> Iterator[tuple[Image.Image, list[tuple[str, str]]]]:
    """Yield (RGB image, [(question, answer), ...]) from a LLaVA-style manifest.

    JSONL, one entry a line, or a .json array as the LLaVA releases ship. Image paths are
    relative to the manifest's directory. A malformed entry raises DataFileError (a ValueError)
    and an unreadable image ImageError, both naming the manifest and the line (or entry).
    """
    manifest = Path(manifest)
    if manifest.suffix == ".json":
        try:
            entries = json.loads(read_text(manifest))
        except json.JSONDecodeError as e:
            raise DataFileError(f"{manifest}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(entries, list):
            raise DataFileError(f"{manifest}: expected a JSON array of conversations")
        located = [(f"{manifest}: entry {i}", entry) for i, entry in enumerate(entries)]
    else:
        located = [(f"{manifest}:{lineno}", entry) for lineno, entry in iter_jsonl(manifest)]
    # Check every entry before the first image: a bad manifest fails before any work is done.
    parsed = [(where, *_parse(entry, where)) for where, entry in located]
    for where, path, qa in parsed:
        try:
            image = load_image(manifest.parent / path)
        except ImageError as e:
            raise ImageError(f"{where}: {e}") from e
        yield image, qa
