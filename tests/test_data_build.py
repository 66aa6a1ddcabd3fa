"""`opengpt4 data build` through the real CLI: determinism, the data dir format, real input, bad input."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from opengpt4.data.code import HELDOUT_MODULES
from opengpt4.data.images import generate_images, write_llava
from opengpt4.data.world import LANGUAGES, World
from opengpt4.evals.benchmarks.world_truthful import read_questions
from opengpt4.tokenizer import Tokenizer

DOMAINS = {"world", "qa", "chat", "misconceptions", "math", "pycode", "stdlib"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", "data", "build", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def build(out: Path, *args) -> Path:
    r = run_cli("--preset", "test", "--out", out, *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    return out


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def documents(ids: np.ndarray, bos: int) -> list[np.ndarray]:
    return np.split(ids, np.flatnonzero(ids == bos)[1:])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("build") / "a", "--seed", "0")


@pytest.fixture(scope="module")
def index(data) -> dict:
    return json.loads((data / "index.json").read_text())


@pytest.fixture(scope="module")
def tok(data, index) -> Tokenizer:
    return Tokenizer.from_dir(data, index["tokenizer"])


def shard(data: Path, index: dict, file: str) -> np.ndarray:
    return np.fromfile(data / file, dtype=index["dtype"])


def test_same_seed_is_byte_identical_other_seed_differs(data, tmp_path):
    again = build(tmp_path / "b", "--seed", "0")
    other = build(tmp_path / "c", "--seed", "1")
    assert tree_hashes(again) == tree_hashes(data)
    assert len(tree_hashes(data)) > 15
    differing = {f for f, h in tree_hashes(other).items() if tree_hashes(data).get(f) != h}
    assert {"index.json", "shards/world.train.bin", "images/train.u8"} <= differing


def test_index_lists_shards_whose_documents_start_at_bos_and_decode_back(data, index, tok):
    assert set(index["domains"]) == DOMAINS
    assert index["dtype"] == "uint16" and index["vocab_size"] == tok.vocab_size == 512
    assert index["tokenizer_sha256"] == hashlib.sha256((data / "tokenizer.json").read_bytes()).hexdigest()
    assert str(data) not in (data / "index.json").read_text()  # relative paths only
    for name, splits in index["domains"].items():
        assert set(splits) == {"train", "val"}
        for split, entry in splits.items():
            assert entry["file"] == f"shards/{name}.{split}.bin"
            assert (data / entry["file"]).stat().st_size == 2 * entry["tokens"]
            ids = shard(data, index, entry["file"])
            if entry["documents"]:
                assert ids[0] == tok.bos_id  # every document starts with BOS, and BOS starts only documents
            assert np.count_nonzero(ids == tok.bos_id) == entry["documents"]
        assert splits["train"]["tokens"] > 0
    # Decoding gives back the text exactly: the held-out stdlib shard is the eval file's sources.
    stdlib_val = documents(shard(data, index, "shards/stdlib.val.bin"), tok.bos_id)
    heldout = [json.loads(line) for line in (data / "eval/stdlib_heldout.jsonl").read_text().splitlines()]
    assert [tok.decode(d[1:]) for d in stdlib_val] == [row["text"] for row in heldout]
    assert all(row["module"].split(".")[0] in HELDOUT_MODULES for row in heldout)
    world_doc = tok.decode(documents(shard(data, index, "shards/world.train.bin"), tok.bos_id)[0][1:])
    assert len(world_doc) > 20 and sum(c.isalpha() for c in world_doc) > len(world_doc) / 2


def test_image_shards_match_the_generator_and_eval_sets_are_chat_rows(data, index, tok):
    size = index["image_size"]
    assert size == 32
    samples = generate_images(0, 130, 32)
    for split, count in (("train", 100), ("val", 30)):
        entry = index["images"][split]
        assert entry["count"] == entry["documents"] == count
        pixels = np.fromfile(data / entry["pixels_file"], dtype=np.uint8)
        assert pixels.size == count * size * size * 3
        first = samples[0 if split == "train" else 100]
        assert np.array_equal(pixels.reshape(count, size, size, 3)[0], np.asarray(first.image))
        docs = documents(shard(data, index, entry["tokens_file"]), tok.bos_id)
        assert len(docs) == count and all(d[1] == tok.image_id and tok.image_id not in d[2:] for d in docs)
        assert f"Answer: {first.qa[0][1]}" in tok.decode(docs[0][2:])
    assert set(index["evals"]) >= set(World.generate(0, "test").eval_sets()) | {"image_qa", "stdlib_heldout"}
    for name, file in index["evals"].items():
        rows = [json.loads(line) for line in (data / file).read_text(encoding="utf-8").splitlines()]
        assert rows, name
        if name != "stdlib_heldout":
            assert all(r["input"][0]["content"] == r["prompt"] and isinstance(r["ideal"], str) for r in rows)
    image_qa = [json.loads(line) for line in (data / "eval/image_qa.jsonl").read_text().splitlines()]
    assert {r["image"] for r in image_qa} == set(range(30))
    assert image_qa[0]["ideal"] == samples[100].qa[0][1]


def test_truthful_mc_stores_each_myths_false_answer_as_the_eval_reads_it(data, index):
    assert index["evals"]["truthful_mc"] == "eval/truthful_mc.jsonl"
    questions = read_questions(data / "eval/truthful_mc.jsonl")
    assert questions == World.generate(0, "test").truthful_questions()
    assert all(q.myth != q.true for q in questions) and {q.lang for q in questions} == set(LANGUAGES)


def test_text_and_llava_inputs_become_shards_with_a_reused_tokenizer(data, tmp_path):
    inputs = tmp_path / "corpus"
    inputs.mkdir()
    (inputs / "book.txt").write_text("Once upon a time, a tokenizer met a shard.\n", encoding="utf-8")
    lines = [{"text": f"Document number {i} is about naïve café owners."} for i in range(3)]
    (inputs / "web.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    manifest = write_llava(generate_images(99, 5, 32), tmp_path, "real")
    out = build(tmp_path / "out", "--input", inputs, "--llava", manifest, "--tokenizer", data)
    index = json.loads((out / "index.json").read_text())
    assert (out / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
    tok = Tokenizer.from_dir(out, index["tokenizer"])
    text = index["domains"]["text"]
    assert (text["train"]["documents"], text["val"]["documents"]) == (3, 1)
    decoded = [tok.decode(d[1:]) for split in ("train", "val")
               for d in documents(shard(out, index, text[split]["file"]), tok.bos_id)]
    assert sorted(decoded) == sorted(["Once upon a time, a tokenizer met a shard.\n"] + [r["text"] for r in lines])
    assert (index["images"]["train"]["count"], index["images"]["val"]["count"]) == (104, 31)


def _corrupt_png(tmp: Path) -> tuple[Path, str]:
    manifest = write_llava(generate_images(3, 2, 32), tmp, "bad")
    png = sorted((tmp / "bad").glob("*.png"))[1]
    png.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return manifest, png.name


@pytest.mark.parametrize("case", ["empty", "latin1", "jsonl_without_text", "corrupt_png"])
def test_bad_input_fails_in_one_line_naming_the_file_and_writes_nothing(tmp_path, case):
    if case == "corrupt_png":
        manifest, name = _corrupt_png(tmp_path)
        args = ["--llava", manifest]
    else:
        name = {"empty": "empty.txt", "latin1": "latin.txt", "jsonl_without_text": "rows.jsonl"}[case]
        content = {"empty": b"", "latin1": "café crème".encode("latin-1"),
                   "jsonl_without_text": b'{"text": "fine"}\n{"content": "no text field"}\n'}[case]
        (tmp_path / name).write_bytes(content)
        args = ["--input", tmp_path / name]
    out = tmp_path / "out"
    r = run_cli("--preset", "test", "--out", out, *args)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and name in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.slow
def test_mini_build_finishes_within_three_minutes(tmp_path):
    t0 = time.perf_counter()
    r = run_cli("--preset", "mini", "--out", tmp_path / "mini")
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    index = json.loads((tmp_path / "mini/index.json").read_text())
    sizes = {name: {s: e["tokens"] for s, e in splits.items()} for name, splits in index["domains"].items()}
    sizes["images"] = {s: e["tokens"] for s, e in index["images"].items()}
    print(f"mini build: {elapsed:.1f} s; tokens: {json.dumps(sizes)}")
    assert elapsed <= 180
