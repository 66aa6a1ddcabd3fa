"""The image reader's parts (model/reader.py): slot words read back as text, the synthetic images'
readings say what the generator drew, the reader's own images leave out the eval images' pixels,
and the tokenizer writes an image's reading right after its placeholders, as the same text typed
after the image would be. The reader's training, and stage 2 and the delta with a reader, are in
test_vision_align.py."""

import json
import re

import pytest
import torch

from opengpt4.config import ModelConfig, ReaderConfig
from opengpt4.data.images import generate_images
from opengpt4.errors import ConfigError
from opengpt4.model.reader import ImageReader, join_words
from opengpt4.model.vision import load_image
from opengpt4.vision.data import build_visual_data, pixel_key


def test_slot_words_read_back_as_text():
    assert join_words(["word:", "Z", "##U", "", "##G", "##E", "", "##.", "color:", "green."]) == \
        "word: ZUGE. color: green."
    assert join_words(["top left:", "nothing.", "", "", "top right:", "red", "star."]) == \
        "top left: nothing. top right: red star."
    assert join_words(["", ""]) == ""


def test_readings_say_what_the_generator_drew():
    """Each scene object's colour and shape in its cell, each bar's value and the extremes, each
    text's word, number or form fields and its colour: parsed back out of the caption."""
    kinds = set()
    for sample in generate_images(5, 60):
        text, caption = join_words(sample.reading), sample.caption
        kinds.add(sample.kind)
        assert len(sample.reading) <= 14
        if sample.kind == "scene":
            objects = re.findall(r"an? (\w+) (\w+) at the (top|bottom) (left|right)", caption)
            for color, shape, row, col in objects:
                assert f"{row} {col}: {color} {shape}." in text, (text, caption)
            assert text.count("nothing.") == 4 - len(objects)
        elif sample.kind == "chart":
            values = dict(re.findall(r"(\w) is (\d)", caption))
            assert text == " ".join(f"{k}: {v}." for k, v in values.items()) + \
                f" tallest: {max(values, key=values.get)}. shortest: {min(values, key=values.get)}."
        else:
            color = re.search(r"(?:written in|form in) (\w+)", caption)[1]
            assert text.endswith(f"color: {color}.")
            if m := re.fullmatch(r'The word "(\w+)" written in \w+\.', caption):
                assert text.startswith(f"word: {m[1]}. ")
            elif m := re.fullmatch(r"The number (\d+) written in \w+\.", caption):
                assert text.startswith(f"number: {m[1]}. ")
            else:
                name, age = re.fullmatch(r"A form in \w+ with the name (\w+) and the age (\d+)\.", caption).groups()
                assert text.startswith(f"name: {name}. age: {age}. ")
    assert kinds == {"scene", "chart", "text"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_visual_data(tmp_path_factory.mktemp("visual") / "data", "test")


def test_the_data_dir_gives_every_training_image_a_reading_and_the_reader_more_images_not_the_evals(data_dir):
    stage1 = json.loads((data_dir / "stage1.json").read_text())
    assert all(isinstance(e["reading"], list) and e["reading"] for e in stage1)
    digits = [e for e in stage1 if e["kind"] == "digit"]
    assert digits and all(join_words(e["reading"]) == "digit: " + e["conversations"][1]["value"][-2:]
                          for e in digits)  # "A handwritten digit 7." -> "digit: 7."
    extra = json.loads((data_dir / "reading.json").read_text())
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert len(extra) == manifest["reading"]["images"] == 30 - manifest["reading"]["dropped_as_eval_pixels"]
    eval_pixels = {pixel_key(load_image(p)) for p in (data_dir / "images" / "eval").glob("*.png")}
    assert not {pixel_key(load_image(data_dir / e["image"])) for e in extra} & eval_pixels
    rows = [json.loads(line) for line in (data_dir / "eval" / "charts.jsonl").read_text().splitlines()]
    assert rows and all(join_words(r["reading"]).startswith("A: ") for r in rows)


def test_the_reading_goes_after_the_image_as_text_typed_there_would(tiny_tokenizer):
    """`read_image` writes each image's reading after its placeholders and a newline before the text
    that follows: the same ids as a chat with that text typed in, none of it a training target."""
    readings = {"a.png": "digit: 7.", "b.png": "top left: red star."}

    def chat(*parts):
        return [{"role": "user", "content": list(parts)}, {"role": "assistant", "content": "7"}]

    image = lambda name: {"type": "image", "image": name}  # noqa: E731
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    read = tiny_tokenizer.render_chat(chat(image("a.png"), text("What digit is this?")), read_image=readings.get)
    typed = tiny_tokenizer.render_chat(chat(image("a.png"), text("digit: 7.\nWhat digit is this?")))
    assert read.ids == typed.ids and read.loss_mask == typed.loss_mask and read.images == ["a.png"]
    two = tiny_tokenizer.render_chat(chat(image("a.png"), image("b.png"), text("Same?")), read_image=readings.get)
    assert two.ids == tiny_tokenizer.render_chat(chat(image("a.png"), text("digit: 7."), image("b.png"),
                                                      text("top left: red star.\nSame?"))).ids
    last = tiny_tokenizer.render_chat(chat(text("Look:"), image("a.png")), read_image=readings.get)
    assert last.ids == tiny_tokenizer.render_chat(chat(text("Look:"), image("a.png"), text("digit: 7."))).ids
    assert sum(read.loss_mask) == sum(typed.loss_mask) > 0


def test_the_reader_config_round_trips_and_refuses_a_vocabulary_without_the_empty_slot(tiny_model):
    reader = ReaderConfig(words=("", "digit:", "7."), slots=2, channels=(4, 8), hidden=16)
    config = ModelConfig.from_dict(json.loads(json.dumps(
        {**tiny_model.config.to_dict(), "vision": {**tiny_model.config.to_dict()["vision"], "reader": vars(reader)}})))
    assert config.vision.reader == reader
    logits = ImageReader(reader, config.vision.image_size)(torch.zeros(3, 3, 32, 32))
    assert logits.shape == (3, 2, 3)
    with pytest.raises(ConfigError, match="empty slot"):
        ReaderConfig(words=("digit:",))
    with pytest.raises(ConfigError, match="distinct"):
        ReaderConfig(words=("", "a", "a"))
