"""Synthetic image tasks: determinism, balance, answers checked against the pixels, LLaVA files."""

import collections
import json
import re

import numpy as np
import pytest
from PIL import Image

from opengpt4.data.images import COLORS, SHAPES, TEXT_COLORS, ImageSample, generate_images, read_llava, write_llava
from opengpt4.errors import ImageError

N = 600
UNIT = {64: 4, 32: 2}  # chart pixels per value unit, by image size
BINARY = {"yes", "no", "left", "right", "top", "bottom"}


@pytest.fixture(scope="module")
def samples() -> list[ImageSample]:
    return generate_images(0, N)


def question_type(q: str) -> str:
    """The question with its specifics (shape, colour, bar label, relation) masked out."""
    q = re.sub(r"directly (left of|right of|above|below)", "directly _", q)
    return re.sub(r"\b(?:[A-Z]|" + "|".join(SHAPES + tuple(COLORS)) + r")\b", "_", q)


# --- an independent reader of scenes and charts, from the pixels alone -------------------


def classify(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = box.shape
    fill = box.mean()
    if fill > 0.92:
        return "square"
    if fill > 0.65:
        return "circle"
    if box[-1].sum() >= 0.8 * w and box[0].sum() <= 0.3 * w:
        return "triangle"
    if box[:, w // 2].all() and box[h // 2].all():
        return "cross"
    return "star"


def read_scene(img: Image.Image) -> list[tuple[str, str, float, float]]:
    """(shape, colour, centre x, centre y) of every object: each has its own palette colour."""
    a = np.asarray(img)
    objs = []
    for color, rgb in COLORS.items():
        mask = (a == rgb).all(-1)
        if mask.any():
            ys, xs = np.nonzero(mask)
            objs.append((classify(mask), color, xs.mean(), ys.mean()))
    return objs


def answer_scene(img: Image.Image, q: str) -> str:
    objs, half = read_scene(img), img.width / 2

    def the(shape: str) -> tuple:
        found = [o for o in objs if o[0] == shape]
        assert len(found) == 1, f"{q!r} names a shape that is not unique: {objs}"
        return found[0]

    if q == "How many shapes are there?":
        return str(len(objs))
    if m := re.fullmatch(r"What shape is (\w+)\?", q):
        return next(o[0] for o in objs if o[1] == m[1])
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        return the(m[1])[1]
    if m := re.fullmatch(r"Is the (\w+) on the left or the right\?", q):
        return "left" if the(m[1])[2] < half else "right"
    if m := re.fullmatch(r"Is the (\w+) at the top or the bottom\?", q):
        return "top" if the(m[1])[3] < half else "bottom"
    m = re.fullmatch(r"What shape is directly (left of|right of|above|below) the (\w+)\?", q)
    assert m, f"unknown scene question {q!r}"
    _, _, tx, ty = the(m[2])
    horizontal = m[1] in ("left of", "right of")
    sign = -1 if m[1] in ("left of", "above") else 1
    found = [o[0] for o in objs if (abs(o[3] - ty) < half / 2 and sign * (o[2] - tx) > half / 2 if horizontal
                                    else abs(o[2] - tx) < half / 2 and sign * (o[3] - ty) > half / 2)]
    assert len(found) == 1, f"{q!r}: {found}"
    return found[0]


def read_bars(img: Image.Image) -> list[int]:
    """Pixel heights of the bars, left to right: bars are the only saturated pixels of a chart."""
    a = np.asarray(img).astype(int)
    colored = a.max(-1) - a.min(-1) > 60
    cols = colored.any(0)
    starts = [x for x in range(len(cols)) if cols[x] and (x == 0 or not cols[x - 1])]
    return [int(colored[:, x].sum()) for x in starts]


def answer_chart(img: Image.Image, q: str) -> str:
    heights = read_bars(img)
    labels = "ABCDE"[: len(heights)]
    h = dict(zip(labels, heights, strict=True))
    if q == "How many bars are there?":
        return str(len(heights))
    if q == "Which bar is the tallest?":
        return max(h, key=h.get)
    if q == "Which bar is the shortest?":
        return min(h, key=h.get)
    if m := re.fullmatch(r"What is the value of bar ([A-E])\?", q):
        assert h[m[1]] % UNIT[img.width] == 0
        return str(h[m[1]] // UNIT[img.width])
    m = re.fullmatch(r"Is ([A-E]) taller than ([A-E])\?", q)
    assert m, f"unknown chart question {q!r}"
    return "yes" if h[m[1]] > h[m[2]] else "no"


# --- tests -------------------------------------------------------------------------------


def test_images_are_deterministic_per_seed_and_a_shorter_run_is_a_prefix():
    a, b, c = generate_images(7, 30), generate_images(7, 30), generate_images(8, 30)
    assert [(s.image.tobytes(), s.qa, s.caption, s.kind) for s in a] == [
        (s.image.tobytes(), s.qa, s.caption, s.kind) for s in b]
    assert sum(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, c, strict=True)) <= 2
    assert [s.image.tobytes() for s in generate_images(7, 10)] == [s.image.tobytes() for s in a[:10]]


def test_kinds_split_evenly_into_64px_images_with_short_one_word_answers(samples):
    assert collections.Counter(s.kind for s in samples) == {"scene": N // 3, "chart": N // 3, "text": N // 3}
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (64, 64)
        assert 2 <= len(s.qa) <= 4 and len({q for q, _ in s.qa}) == len(s.qa)
        assert s.caption.endswith(".") and len(s.caption) < 200
        for q, a in s.qa:
            assert q.endswith("?") and re.fullmatch(r"[A-Za-z0-9]{1,8}", a), (q, a)


def test_no_dominant_answer_per_question_type(samples):
    answers = collections.defaultdict(collections.Counter)
    for s in samples:
        for q, a in s.qa:
            answers[question_type(q)][a] += 1
    assert len(answers) >= 18
    for qtype, counts in answers.items():
        share = counts.most_common(1)[0][1] / counts.total()
        # Two-way questions can only be balanced around 1/2; the rest must stay well below.
        assert share < (0.6 if set(counts) <= BINARY else 0.5), (qtype, counts)


@pytest.mark.parametrize("size", [64, 32])
def test_scene_answers_match_pixels(samples, size):
    scenes = [s for s in (samples if size == 64 else generate_images(1, 150, size)) if s.kind == "scene"]
    for s in scenes:
        for q, a in s.qa:
            assert answer_scene(s.image, q) == a, (q, a, s.caption)
    # Every shape is drawn and recognised, and questions of every kind are asked.
    assert {shape for s in scenes for shape, *_ in read_scene(s.image)} == set(SHAPES)
    assert len({question_type(q) for s in scenes for q, _ in s.qa}) == 6


@pytest.mark.parametrize("size", [64, 32])
def test_chart_answers_match_bar_heights(samples, size):
    charts = [s for s in (samples if size == 64 else generate_images(1, 150, size)) if s.kind == "chart"]
    for s in charts:
        for q, a in s.qa:
            assert answer_chart(s.image, q) == a, (q, a, s.caption)
        # The caption's values are the drawn heights too.
        values = [int(v) for v in re.findall(r"[A-E] is (\d)", s.caption)]
        assert read_bars(s.image) == [v * UNIT[size] for v in values]


@pytest.mark.parametrize("size", [64, 32])
def test_text_is_drawn_in_its_colour_and_fits(samples, size):
    texts = [s for s in (samples if size == 64 else generate_images(1, 150, size)) if s.kind == "text"]
    for s in texts:
        a = np.asarray(s.image)
        ink = ~(a == 255).all(-1)
        assert not ink[[0, -1]].any() and not ink[:, [0, -1]].any(), s.caption  # nothing clipped
        xs = np.nonzero(ink.any(0))[0]
        assert xs[-1] - xs[0] > size * 0.3, s.caption  # large letters, not a speck
        color = re.search(r"(\w+) with the name|in (\w+)\.$", s.caption)
        color = color[1] or color[2]
        # Antialiased ink is a blend of white and the text colour: the darkest pixel shows its hue.
        amount = 255 - a[ink].astype(float)
        darkest, want = amount[amount.sum(1).argmax()], 255 - np.array(TEXT_COLORS[color], float)
        assert np.allclose(darkest / darkest.sum(), want / want.sum(), atol=0.03), (s.caption, darkest)
        assert ("What color is the text?", color) in s.qa or all(q != "What color is the text?" for q, _ in s.qa)
        main_q, main_a = s.qa[0]
        assert main_a in s.caption and main_q.startswith("What")


def test_llava_write_then_read_gives_back_images_and_qa_and_rewrites_whole(tmp_path, samples):
    subset = samples[:12]
    manifest = write_llava(subset, tmp_path, "val")
    assert manifest == tmp_path / "val.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val", "val.jsonl"]  # no temp files left
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines[0]["image"] == "val/000000.png" and lines[0]["kind"] == subset[0].kind
    assert lines[0]["conversations"][0]["value"] == "<image>\n" + subset[0].qa[0][0]
    assert [t["from"] for t in lines[0]["conversations"]] == ["human", "gpt"] * len(subset[0].qa)
    read = list(read_llava(manifest))
    assert [(img.tobytes(), qa) for img, qa in read] == [(s.image.tobytes(), s.qa) for s in subset]
    # Writing again replaces the pair whole.
    write_llava(subset[:3], tmp_path, "val")
    assert len(list(read_llava(manifest))) == 3 and len(list((tmp_path / "val").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val", "val.jsonl"]


def test_read_llava_accepts_other_writers(tmp_path):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "pics" / "a.png")
    entry = {"id": "x", "image": "pics/a.png", "conversations": [
        {"from": "human", "value": "What color is it?\n<image>"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Is it wide?"}, {"from": "gpt", "value": "yes"}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(entry) + "\n\n")
    (tmp_path / "m.json").write_text(json.dumps([entry, entry], indent=2))  # as the LLaVA releases ship
    for manifest, count in [("m.jsonl", 1), ("m.json", 2)]:
        read = list(read_llava(tmp_path / manifest))
        assert len(read) == count
        img, qa = read[0]
        assert img.size == (20, 10) and img.getpixel((0, 0)) == (255, 0, 0)
        assert qa == [("What color is it?", "red"), ("Is it wide?", "yes")]


def test_failed_write_keeps_the_old_pair(tmp_path):
    good = generate_images(0, 3)
    write_llava(good, tmp_path, "d")
    broken = ImageSample(image=None, caption="", qa=[("q?", "a")], kind="scene")
    with pytest.raises(AttributeError):
        write_llava([*good, broken], tmp_path, "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.jsonl"]
    assert [img.tobytes() for img, _ in read_llava(tmp_path / "d.jsonl")] == [s.image.tobytes() for s in good]


def test_read_llava_errors_name_the_culprit(tmp_path):
    write_llava(generate_images(0, 3), tmp_path, "d")
    manifest = tmp_path / "d.jsonl"
    (tmp_path / "d" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError, match=r"d\.jsonl:2: .*000001\.png"):
        list(read_llava(manifest))
    (tmp_path / "d" / "000001.png").unlink()
    with pytest.raises(ImageError, match=r"d\.jsonl:2: .*000001\.png.*no such file"):
        list(read_llava(manifest))
    lines = manifest.read_text().splitlines()
    manifest.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: not valid JSON"):
        list(read_llava(manifest))
    manifest.write_text(json.dumps({"image": "d/000000.png", "conversations": [{"from": "gpt", "value": "x"}]}))
    with pytest.raises(ValueError, match=r"d\.jsonl:1: 'conversations'"):
        list(read_llava(manifest))
    manifest.write_bytes(b'{"image": "caf\xe9.png"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: not UTF-8"):
        list(read_llava(manifest))
