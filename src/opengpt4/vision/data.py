"""The visual data dir: caption data (stage 1), visual instruction chats (stage 2), held-out evals.

    opengpt4 vision data --out DIR [--preset mini] [--seed 0] [--pretrain-data DATA_DIR]

    DIR/images/{train,eval,reading}/NNNNNN.png   every image, 64x64 RGB PNG
    DIR/stage1.json      LLaVA JSON: "<image>\\nDescribe the image." -> the image's caption (and its
                         "reading": the image reader's slot words, model/reader.py)
    DIR/reading.json     more images for the image reader alone: [{"image", "kind", "reading"}]
    DIR/stage2.json      LLaVA JSON: short-answer chats about one image (shapes VQA, chart reading,
                         OCR of words and numbers, form fields), handwritten digits (several to a
                         chat, an image a turn), comparisons of two images ("image": [a, b]), and
                         text-only chats (no "image")
    DIR/eval/{shapes,charts,ocr,digits}.jsonl   one held-out question a line
    DIR/manifest.json    counts, the split rules and the deduplication figures

The files are LLaVA's format (a JSON array of {"id", "image", "conversations": [{"from":
"human"|"gpt"|"system", "value"}]}, "<image>" marking where each image goes), so LLaVA-style
data made elsewhere trains the same way (`read_visual_chats`).

Held out for the evals: other images (synthetic ones from another seed; a seeded 500 of
scikit-learn's 1,797 handwritten digits) asked in held-out phrasings (vision/templates.py).
An eval image pixel-identical to a training image is dropped, and so is an eval question whose
image has the content of a training image (same caption) asked the same question with the same
answer; `--pretrain-data` adds a pretraining data dir's images (what the ViT saw) to the pixel check.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from opengpt4.data.chat_io import Conversation
from opengpt4.data.images import generate_images
from opengpt4.errors import DataFileError
from opengpt4.files import atomic_write_dir, opengpt4_home, read_text, write_jsonl
from opengpt4.vision.templates import CAPTION_REQUESTS, DIGIT_QUESTION, TASKS, phrase

IMAGE_SIZE = 64
TRAIN_SEED, EVAL_SEED, READING_SEED = 10_000, 20_000, 30_000  # offsets: pretraining draws generate_images(seed) with the data seed
DIGITS_HELDOUT = 500
DIGIT_CAPTION = "A handwritten digit {}."


@dataclass(frozen=True)
class Preset:
    images: int  # synthetic training images (scenes, charts, text in rotation)
    eval_images: int  # synthetic eval images before deduplication
    digits_train: int  # at most 1,797 - DIGITS_HELDOUT
    digits_eval: int
    comparisons: int  # two-image chats
    text_chats: int  # text-only chats from the synthetic world (opengpt4.data.chat)
    digit_variants: int = 1  # training images per digit scan: the scan, then randomly shifted, turned and scaled copies
    digits_per_chat: int = 1  # stage 2 asks this many digits in one chat, one user turn each (see _digit_chats)
    # More synthetic images for the image reader alone (reading.json): with stage 1's 2,000 rendered texts it
    # read none of the held-out words in 500 steps; with 15,000 more texts, a number's first digit 0.68 after 250
    # steps, against 0.54 after 500 without.
    reading_images: int = 0


PRESETS = {
    "test": Preset(images=60, eval_images=30, digits_train=40, digits_eval=20, comparisons=10, text_chats=10,
                   digit_variants=2, digits_per_chat=2, reading_images=30),
    "mini": Preset(images=6000, eval_images=600, digits_train=1297, digits_eval=DIGITS_HELDOUT, comparisons=800,
                   text_chats=2000, digit_variants=6, digits_per_chat=4, reading_images=45_000),
}


@dataclass
class Item:
    """An image with what is known about it."""

    path: str  # relative to the data dir
    image: Image.Image
    kind: str  # scene, chart, text, digit
    caption: str
    qa: list[tuple[str, str]]  # canonical questions
    reading: tuple[str, ...]  # the image reader's slot words (data/images.py)


def pixel_key(image: Image.Image | np.ndarray) -> str:
    """Identity of an image's pixels (RGB at the stored size)."""
    a = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.uint8))
    return hashlib.sha1(repr(a.shape).encode() + a.tobytes()).hexdigest()


def dedup(rows: list[dict[str, Any]], train_pixels: set[str],
          train_content: set[tuple[str, str, str]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Eval rows (with "pixel_key", "caption", "canonical", "answer") less those whose image is
    pixel-identical to a training image, or whose (caption, canonical question, answer) a training
    image has; the figures say how many of each were dropped."""
    images = {r["pixel_key"] for r in rows}
    same_pixels = images & train_pixels
    kept, content = [], 0
    for r in rows:
        if r["pixel_key"] in same_pixels:
            continue
        if r["caption"] and (r["caption"], r["canonical"], r["answer"]) in train_content:
            content += 1
            continue
        kept.append(r)
    return kept, {"images": len(images), "questions": len(rows), "pixel_identical_images": len(same_pixels),
                  "pixel_identical_questions": sum(r["pixel_key"] in same_pixels for r in rows),
                  "same_content_questions": content, "kept_questions": len(kept)}


# --- sources -------------------------------------------------------------------------------


def digit_image(scan: np.ndarray, size: int = IMAGE_SIZE, rng: random.Random | None = None) -> Image.Image:
    """An 8x8 scan (0..16, ink high) as dark ink on white, smoothly enlarged like the other images.

    With `rng`, a randomly moved copy (shifted up to 3/32 of the side, turned up to 12 degrees,
    scaled 0.85-1.15): 1,297 training scans are few enough for the model to memorise them (held-out
    accuracy stalls while the training loss falls), and these are the variations between
    handwritten digits that the held-out scans show, as in the augmentations MNIST models train with.
    """
    ink = np.round(255 - scan * (255 / 16)).astype(np.uint8)
    image = Image.fromarray(ink, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    if rng is not None:
        shift = 3 * size / 32
        image = image.rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR, fillcolor=255)
        scale = rng.uniform(0.85, 1.15)
        c = size / 2  # the affine maps output (x, y) to input (a x + b y + c0, ...): scale about the centre, then shift
        dx, dy = rng.uniform(-shift, shift), rng.uniform(-shift, shift)
        image = image.transform((size, size), Image.Transform.AFFINE,
                                (1 / scale, 0, c - c / scale - dx, 0, 1 / scale, c - c / scale - dy),
                                Image.Resampling.BILINEAR, fillcolor=255)
    return image.convert("RGB")


def digit_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train scans, train labels, held-out scans, held-out labels): a seeded DIGITS_HELDOUT held out."""
    from sklearn.datasets import load_digits  # shipped in scikit-learn; imported here: it takes a second

    digits = load_digits()
    order = np.random.default_rng([seed, 8]).permutation(len(digits.target))
    heldout, train = order[:DIGITS_HELDOUT], order[DIGITS_HELDOUT:]
    return digits.images[train], digits.target[train], digits.images[heldout], digits.target[heldout]


def _items(split: str, preset: Preset, seed: int) -> list[Item]:
    synthetic = generate_images((TRAIN_SEED if split == "train" else EVAL_SEED) + seed,
                                preset.images if split == "train" else preset.eval_images, IMAGE_SIZE)
    items = [Item("", s.image, s.kind, s.caption, s.qa, s.reading) for s in synthetic]
    tr_x, tr_y, ev_x, ev_y = digit_split(seed)
    scans, labels = (tr_x, tr_y) if split == "train" else (ev_x, ev_y)
    n = preset.digits_train if split == "train" else preset.digits_eval
    variants = preset.digit_variants if split == "train" else 1
    rng = random.Random(f"vision:{seed}:digits")
    items += [Item("", digit_image(x, rng=rng if k else None), "digit", DIGIT_CAPTION.format(y),
                   [(DIGIT_QUESTION, str(y))], ("digit:", f"{y}."))
              for k in range(variants) for x, y in zip(scans[:n], labels[:n], strict=True)]
    for i, item in enumerate(items):
        item.path = f"images/{split}/{i:06d}.png"
    return items


def _turns(qa: list[tuple[str, str]], n_images: int = 1) -> list[dict[str, str]]:
    conv = []
    for k, (q, a) in enumerate(qa):
        conv.append({"from": "human", "value": "<image>\n" * n_images + q if k == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def _digit_chats(digits: list[Item], per_chat: int, rng: random.Random) -> list[dict[str, Any]]:
    """The digits' questions, `per_chat` to a chat, one image and question per user turn, in a
    seeded order. A digit's question and answer are a few tokens beside the 16 of its image and the
    ~30 of the system prompt and role markers that every chat carries: four to a chat cut the tokens
    per digit by a third, and the first turn of each is still the eval's one-image question."""
    order = rng.sample(digits, len(digits))
    out = []
    for start in range(0, len(order), per_chat):
        group = order[start : start + per_chat]
        turns = [t for it in group for t in _turns([(phrase(q, rng, "train")[0], a) for q, a in it.qa])]
        out.append({"id": f"digits-{len(out):06d}", "image": [it.path for it in group], "kind": "digit",
                    "conversations": turns})
    return out


def _count(item: Item) -> int:
    """A scene's shapes (its caption names each one "at the" cell it fills), or a digit's value."""
    return item.caption.count(" at the ") if item.kind == "scene" else int(item.caption[-2])


def _comparisons(items: list[Item], n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Two-image chats: which of two scenes has more shapes, which of two digits is larger."""
    pools = {"scene": ([it for it in items if it.kind == "scene"],
                       "Which image has more shapes, the first or the second?"),
             "digit": ([it for it in items if it.kind == "digit"],
                       "Which image shows the larger digit, the first or the second?")}
    out: list[dict[str, Any]] = []
    while len(out) < n:
        pool, ask = pools["scene" if len(out) % 2 else "digit"]
        a, b = rng.sample(pool, 2)
        if _count(a) == _count(b):
            continue
        out.append({"id": f"compare-{len(out):06d}", "image": [a.path, b.path], "kind": "compare",
                    "conversations": _turns([(ask, "first" if _count(a) > _count(b) else "second")], 2)})
    return out


def _text_chats(n: int, seed: int) -> list[dict[str, Any]]:
    """Text-only chats (world facts, arithmetic, code) in LLaVA's format, so that stage 2 keeps the
    LM talking about text too (LLaVA-1.5 mixes ShareGPT chats in for the same reason)."""
    from opengpt4.data.chat.conversations import ChatWorld
    from opengpt4.data.world import World

    chat = ChatWorld(World.generate(seed, "mini"), seed)
    rng = random.Random(f"vision:{seed}:text")
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    out = []
    for i in range(n):
        sample = getattr(chat, ("fact", "math", "code")[i % 3])(rng, "train")
        turns = [{"from": roles[m["role"]], "value": m["content"], **({"weight": m["weight"]} if "weight" in m else {})}
                 for m in sample.messages]
        out.append({"id": f"text-{i:06d}", "kind": "text-only", "conversations": turns})
    return out


def _eval_rows(items: list[Item], rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for it in items:
        key = pixel_key(it.image)
        for q, a in it.qa:
            question, t = phrase(q, rng, "heldout")
            if t.task:
                # A digit's caption says only its value: the content check is for synthetic scenes.
                rows.append({"id": f"{t.task}-{len(rows):06d}", "task": t.task, "image": it.path, "question": question,
                             "answer": a, "template": t.id, "canonical": q, "kind": it.kind,
                             "caption": it.caption if it.kind != "digit" else "", "reading": list(it.reading),
                             "pixel_key": key})
    return rows


def _pretraining_pixels(data_dir: Path) -> set[str]:
    """Pixel keys of a pretraining data dir's training images (images/train.u8)."""
    index = json.loads(read_text(data_dir / "index.json"))
    meta, side = index["images"]["train"], index["image_size"]
    pixels = np.memmap(data_dir / meta["pixels_file"], dtype=np.uint8, mode="r", shape=(meta["count"], side, side, 3))
    return {pixel_key(p) for p in pixels}


def build_visual_data(out: str | Path, preset: str = "mini", seed: int = 0,
                      pretrain_data: str | Path | None = None) -> Path:
    """Write the visual data dir (see the module docstring) atomically; returns its path."""
    p = PRESETS[preset]
    train, evals = _items("train", p, seed), _items("eval", p, seed)
    rng = random.Random(f"vision:{seed}")
    stage1 = [{"id": f"caption-{i:06d}", "image": it.path, "kind": it.kind, "reading": list(it.reading),
               "conversations": _turns([(rng.choice(CAPTION_REQUESTS), it.caption)])} for i, it in enumerate(train)]
    stage2 = [{"id": f"vqa-{i:06d}", "image": it.path, "kind": it.kind,
               "conversations": _turns([(phrase(q, rng, "train")[0], a) for q, a in it.qa])}
              for i, it in enumerate(train) if it.kind != "digit"]
    stage2 += _digit_chats([it for it in train if it.kind == "digit"], p.digits_per_chat, rng)
    stage2 += _comparisons(train, p.comparisons, rng) + _text_chats(p.text_chats, seed)
    train_pixels = {pixel_key(it.image) for it in train}
    if pretrain_data is not None:
        train_pixels |= _pretraining_pixels(Path(pretrain_data))
    train_content = {(it.caption, q, a) for it in train if it.kind != "digit" for q, a in it.qa}
    rows = _eval_rows(evals, rng)
    # The reader's own images leave out any that repeat an eval image's pixels (the evals stay as they are).
    eval_pixels = {pixel_key(it.image) for it in evals}
    reading = [Item(f"images/reading/{i:06d}.png", s.image, s.kind, s.caption, [], s.reading)
               for i, s in enumerate(generate_images(READING_SEED + seed, p.reading_images, IMAGE_SIZE))]
    reading = [it for it in reading if pixel_key(it.image) not in eval_pixels]
    figures, kept = {}, {}
    for task in TASKS:
        kept[task], figures[task] = dedup([r for r in rows if r["task"] == task], train_pixels, train_content)

    def write(tmp: Path) -> None:
        for it in train + evals + reading:
            (tmp / it.path).parent.mkdir(parents=True, exist_ok=True)
            it.image.save(tmp / it.path, format="PNG")
        (tmp / "reading.json").write_text(json.dumps([{"image": it.path, "kind": it.kind, "reading": list(it.reading)}
                                                      for it in reading], ensure_ascii=False, indent=0) + "\n")
        (tmp / "stage1.json").write_text(json.dumps(stage1, ensure_ascii=False, indent=0) + "\n")
        (tmp / "stage2.json").write_text(json.dumps(stage2, ensure_ascii=False, indent=0) + "\n")
        for task in TASKS:
            write_jsonl(tmp / "eval" / f"{task}.jsonl", kept[task])
        kinds: dict[str, int] = {}
        for entry in stage2:
            kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
        manifest = {"preset": preset, "seed": seed, "image_size": IMAGE_SIZE, "pretrain_data": str(pretrain_data or ""),
                    "stage1": len(stage1), "stage2": kinds,
                    "reading": {"images": len(reading), "dropped_as_eval_pixels": p.reading_images - len(reading)}, "eval": {t: len(kept[t]) for t in TASKS},
                    "dedup": figures,
                    "split": "train images: generate_images(10000 + seed), eval: generate_images(20000 + seed) "
                             f"(pretraining draws generate_images(seed)); digits: a seeded {DIGITS_HELDOUT} of "
                             "load_digits held out; eval questions in held-out phrasings only (vision/templates.py)"}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    return atomic_write_dir(out, write)


def default_data_dir(preset: str = "mini", seed: int = 0) -> Path:
    """The visual data dir `vision align` and the visual evals use when none is given: built once."""
    out = opengpt4_home() / "vision-data" / f"{preset}-seed{seed}"
    if not (out / "manifest.json").is_file():
        print(f"building the visual data in {out} (once)", file=sys.stderr)
        build_visual_data(out, preset, seed)
    return out


# --- reading -------------------------------------------------------------------------------


def _turn(turn: Any, where: str, images: list[str]) -> dict[str, Any]:
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    if not (isinstance(turn, dict) and turn.get("from") in roles and isinstance(turn.get("value"), str)):
        raise DataFileError(f"{where}: a turn must be {{'from': human|gpt|system, 'value': str}}, got {turn!r:.80}")
    pieces = turn["value"].split("<image>")
    message: dict[str, Any] = {"role": roles[turn["from"]]}
    if "weight" in turn:
        message["weight"] = turn["weight"]
    if len(pieces) == 1:
        message["content"] = turn["value"]
        return message
    parts: list[dict[str, Any]] = []
    for k, text in enumerate(pieces):
        if k:
            if not images:
                raise DataFileError(f"{where}: more <image> markers than images")
            parts.append({"type": "image", "image": images.pop(0)})
        if text.strip("\n"):
            parts.append({"type": "text", "text": text.strip("\n")})
    message["content"] = parts
    return message


def read_visual_chats(file: str | Path) -> list[Conversation]:
    """Conversations (OpenAI messages, images as {"type": "image", "image": path} parts) from a LLaVA
    JSON array or JSONL. "image" is a path, a list of paths or absent (a text-only chat); paths are
    relative to the file's directory. An entry without "<image>" markers gets its images at the
    start of its first human turn, as LLaVA's loader places them."""
    file = Path(file)
    text = read_text(file)
    try:
        entries = json.loads(text) if file.suffix == ".json" else [json.loads(line) for line in text.splitlines()
                                                                    if line.strip()]
    except json.JSONDecodeError as e:
        raise DataFileError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise DataFileError(f"{file}: expected a non-empty JSON array of conversations")
    out = []
    for i, entry in enumerate(entries):
        where = f"{file}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list) or not entry["conversations"]:
            raise DataFileError(f"{where}: expected an object with a non-empty 'conversations' list")
        image = entry.get("image")
        paths = [image] if isinstance(image, str) else list(image or [])
        if not all(isinstance(p, str) for p in paths):
            raise DataFileError(f"{where}: 'image' must be a path or a list of paths")
        turns = entry["conversations"]
        markers = sum(t.get("value", "").count("<image>") for t in turns if isinstance(t, dict)
                      and isinstance(t.get("value"), str))
        if markers == 0 and paths:
            first = next(k for k, t in enumerate(turns) if isinstance(t, dict) and t.get("from") == "human")
            turns = [*turns[:first], {**turns[first], "value": "<image>\n" * len(paths) + turns[first]["value"]},
                     *turns[first + 1:]]
        elif markers != len(paths):
            raise DataFileError(f"{where}: {markers} <image> markers but {len(paths)} images")
        images = [str(file.parent / p) for p in paths]
        out.append(Conversation([_turn(t, where, images) for t in turns], where, {"kind": entry.get("kind", "")}))
    return out


def read_eval(data_dir: str | Path, task: str) -> list[dict[str, Any]]:
    """The held-out questions of one task, image paths made absolute."""
    data_dir = Path(data_dir)
    rows = [json.loads(line) for line in read_text(data_dir / "eval" / f"{task}.jsonl").splitlines() if line]
    for r in rows:
        r["image"] = str(data_dir / r["image"])
    return rows


def iter_images(conversations: Iterable[Conversation]) -> Iterable[str]:
    """Every image path the conversations name, in order."""
    for c in conversations:
        for m in c.messages:
            if isinstance(m["content"], list):
                yield from (part["image"] for part in m["content"] if part["type"] == "image")
