"""Visual evals: ANLS, relaxed accuracy, exact match and digit reading on hand-written cases; the
deduplication of eval images against training images (a planted duplicate is found); the visual
data dir's held-out split; the baselines; a run through the registry on the tiny vision model."""

import json

import numpy as np
import pytest
from PIL import Image

from opengpt4.engine.generate import Engine
from opengpt4.evals.benchmarks import visual_qa
from opengpt4.evals.benchmarks.visual_qa import anls, first_digit, majority_template_baseline, relaxed_match, score
from opengpt4.evals.completion import EngineCompletionFn
from opengpt4.evals.runner import run_eval
from opengpt4.vision import templates
from opengpt4.vision.data import build_visual_data, dedup, digit_image, pixel_key, read_eval, read_visual_chats


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_visual_data(tmp_path_factory.mktemp("visual") / "data", "test")


# --- metrics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, answer, expected", [
    ("ZUGE", "ZUGE", 1.0),
    ("zuge.", "ZUGE", 1.0),  # case and a final period do not count
    ("ZUGA", "ZUGE", 0.75),  # one edit in four characters
    ("NAME: KOB", "KOB", 0.0),  # 6 edits of 9: over the 0.5 threshold
    ("ab", "ac", 0.0),  # distance exactly 0.5 scores 0 (DocVQA: below the threshold only)
    ("1234", "123", 0.75),
    ("", "BOL", 0.0),
])
def test_anls(prediction, answer, expected):
    assert anls(prediction, answer) == pytest.approx(expected)


def test_anls_takes_the_best_of_several_answers():
    assert anls("colour", ["color", "colour"]) == 1.0
    assert anls("colr", ["color", "xyz"]) == pytest.approx(0.8)


@pytest.mark.parametrize("prediction, answer, expected", [
    ("5", "5", True),
    ("The value is 5.2", "5", True),  # 4% off
    ("5.3", "5", False),  # 6% off
    ("9", "9", True),
    ("8", "9", False),  # one unit on a small number is > 5%
    ("yes", "yes", True),
    ("Yes.", "yes", True),
    ("no", "yes", False),
    ("B", "B", True),
    ("bar B", "B", False),  # a non-numeric answer needs an exact match
    ("none", "5", False),
])
def test_relaxed_accuracy(prediction, answer, expected):
    assert relaxed_match(prediction, answer) is expected


def test_exact_match_and_digits():
    assert score("shapes", "Circle.", "circle") == ("circle", 1.0)
    assert score("shapes", "a circle", "circle")[1] == 0.0
    assert score("shapes", "right\nbecause", "right")[1] == 1.0  # the first line is the answer
    assert first_digit("It is a 7.") == "7" and first_digit("seven") is None
    assert score("digits", "7", "7") == ("7", 1.0) and score("digits", "1 or 7", "7")[1] == 0.0


def test_majority_answer_per_template_baseline():
    samples = [{"template": "a", "answer": "1"}, {"template": "a", "answer": "1"}, {"template": "a", "answer": "2"},
               {"template": "b", "answer": "x"}]
    assert majority_template_baseline(samples, "shapes") == pytest.approx(3 / 4)


# --- data, split and deduplication --------------------------------------------------------------


def test_digit_variants_move_the_ink_and_keep_it():
    """A training digit's extra copies are shifted, turned and scaled versions of its scan: other pixels,
    about as much ink, drawn from a seed (the data dir is the same on every machine)."""
    import random

    from sklearn.datasets import load_digits

    scan = load_digits().images[0]
    plain = np.asarray(digit_image(scan), np.float32)
    copies = [np.asarray(digit_image(scan, rng=random.Random(k)), np.float32) for k in range(5)]
    ink = (255 - plain).sum()
    for copy in copies:
        assert copy.shape == plain.shape and np.abs(copy - plain).mean() > 5
        assert 0.6 < (255 - copy).sum() / ink < 1.5
    assert np.array_equal(copies[0], np.asarray(digit_image(scan, rng=random.Random(0)), np.float32))


def test_dedup_finds_a_planted_pixel_copy_and_a_same_content_question():
    train = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(5)]
    train_pixels = {pixel_key(im) for im in train}
    train_content = {("A red circle.", "What shape is red?", "circle")}
    fresh = Image.new("RGB", (8, 8), (0, 0, 255))
    rows = [
        {"pixel_key": pixel_key(train[3].copy()), "caption": "x", "canonical": "q", "answer": "a"},  # planted copy
        {"pixel_key": pixel_key(train[3].copy()), "caption": "x", "canonical": "q2", "answer": "b"},  # same image
        {"pixel_key": pixel_key(fresh), "caption": "A red circle.", "canonical": "What shape is red?",
         "answer": "circle"},  # other pixels, same content, question and answer
        {"pixel_key": pixel_key(fresh), "caption": "A red circle.", "canonical": "How many shapes are there?",
         "answer": "1"},  # same content, another question: kept
        {"pixel_key": pixel_key(np.full((8, 8, 3), 7, np.uint8)), "caption": "", "canonical": "q", "answer": "a"},
    ]
    kept, figures = dedup(rows, train_pixels, train_content)
    assert kept == rows[3:]
    assert figures == {"images": 3, "questions": 5, "pixel_identical_images": 1, "pixel_identical_questions": 2,
                       "same_content_questions": 1, "kept_questions": 2}


def test_eval_questions_are_held_out_phrasings_of_images_not_in_training(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    trained = read_visual_chats(data_dir / "stage2.json") + read_visual_chats(data_dir / "stage1.json")
    train_pixels = set()
    questions = set()
    for c in trained:
        for m in c.messages:
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            train_pixels |= {pixel_key(Image.open(p["image"])) for p in parts if p["type"] == "image"}
            questions |= {p["text"] for p in parts if p["type"] == "text" and m["role"] == "user"}
    for task in templates.TASKS:
        rows = read_eval(data_dir, task)
        assert rows and len(rows) == manifest["eval"][task] == manifest["dedup"][task]["kept_questions"]
        for r in rows:
            assert pixel_key(Image.open(r["image"])) not in train_pixels
            assert r["question"] not in questions
            template, slots = templates.match(r["canonical"])
            assert template.task == task and r["question"] in {h.format(**slots) for h in template.heldout}
    digits = read_eval(data_dir, "digits")
    assert {r["answer"] for r in digits} <= set("0123456789")
    train_digits = [c for c in read_visual_chats(data_dir / "stage2.json") if c.meta["kind"] == "digit"]
    # the test preset: 40 scans, 2 images each, 2 digits to a chat, each its own user turn with one image
    assert len(train_digits) == manifest["stage2"]["digit"] == 40
    for chat in train_digits:
        users = [m for m in chat.messages if m["role"] == "user"]
        assert len(users) == 2 and all([p["type"] for p in m["content"]] == ["image", "text"] for m in users)
        assert all(m["content"] in set("0123456789") for m in chat.messages if m["role"] == "assistant")


def test_every_generated_question_has_a_template():
    from opengpt4.data.images import generate_images

    found = {templates.match(q)[0].id for s in generate_images(3, 300) for q, _ in s.qa}
    assert found == {t.id for t in templates.TEMPLATES} - {"digit.value"}


def test_baselines_blank_and_mismatched_images(data_dir):
    real = visual_qa.VisualQA(None, data_dir=str(data_dir), task="shapes").load_samples()
    blank = visual_qa.VisualQA(None, data_dir=str(data_dir), task="shapes", images="blank").load_samples()
    blind = visual_qa.VisualQA(None, data_dir=str(data_dir), task="shapes", images="mismatched").load_samples()
    assert all(s["shown"] == s["image"] for s in real)
    assert all(s["shown"] is None for s in blank)
    assert all(s["shown"] != s["image"] for s in blind)


def test_a_visual_eval_runs_through_the_registry_on_a_vision_model(data_dir, tiny_model, tiny_tokenizer, tmp_path):
    fn = EngineCompletionFn(Engine(tiny_model, tiny_tokenizer, pack=False), "tiny-vision", batch_size=8)
    report = run_eval("visual_charts", fn, limit=6, data_dir=str(data_dir), cache=False, out_dir=tmp_path,
                      progress=False)
    assert report["metric"] == "relaxed_accuracy" and report["n"] == 6 and 0 <= report["score"] <= 1
    assert 0 <= report["metrics"]["majority_template_baseline"] <= 1
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum("sample_id" in x for x in lines) == 6
