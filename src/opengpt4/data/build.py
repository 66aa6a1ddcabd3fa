"""`opengpt4 data build`: corpus -> tokenizer -> token shards, image store and eval sets.

The data dir (see DESIGN.md, "Formats"):

    index.json                     vocab, dtype, tokenizer metadata + sha256, files and counts
    tokenizer.json
    shards/<domain>.<split>.bin    flat ids; every document is [BOS] + tokens(text)
    shards/images.<split>.bin      [BOS, IMAGE] + tokens("\\nQuestion: q\\nAnswer: a\\n"...), one IMAGE id per image
    images/<split>.u8              (count, S, S, 3) uint8 pixels, the i-th image document's image
    eval/<name>.jsonl              held-out eval sets (truthful_mc: the myths with their options)

Everything is a pure function of (preset, seed, inputs): no timestamps, no absolute paths,
no unordered iteration, so the same seed rebuilds byte-identical files. Real input is read
and checked first, and the dir is written to a temp dir and renamed into place, so bad
input fails fast and never leaves a half-built dir behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from opengpt4.config import FORMAT_VERSION  # one version for checkpoints and data dirs
from opengpt4.data.code import HELDOUT_MODULES, stdlib_sources
from opengpt4.data.images import generate_images, read_llava
from opengpt4.data.world import Question, TruthfulQuestion, World
from opengpt4.errors import DataFileError, OpenGPT4Error
from opengpt4.files import atomic_write_dir, iter_jsonl, read_text, write_jsonl
from opengpt4.model.checkpoint import read_config
from opengpt4.model.vision import load_image
from opengpt4.tokenizer import Tokenizer

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
VAL_FRACTION = 0.02  # of real documents and images, held out for val loss


@dataclass(frozen=True)
class Preset:
    world: str  # World.generate size
    train_images: int
    val_images: int
    image_size: int
    vocab_size: int
    stdlib_train_bytes: int
    stdlib_val_bytes: int | None  # None: the full held-out modules
    tokenizer_chars: int  # BPE trains on at most this much text (a deterministic sample)


PRESETS = {
    "test": Preset("test", 100, 30, 32, 512, 100_000, 30_000, 1_000_000),
    "mini": Preset("mini", 4000, 300, 64, 8192, 2_000_000, None, 8_000_000),
}


@dataclass
class ImageDoc:
    pixels: np.ndarray  # (S, S, 3) uint8
    qa: list[tuple[str, str]]
    kind: str
    caption: str = ""

    @property
    def text(self) -> str:
        # Questions come straight after the image, exactly as the image_qa eval prompts them;
        # the caption closes the document.
        qa = "".join(f"\nQuestion: {q}\nAnswer: {a}\n" for q, a in self.qa)
        return qa + (f"\n{self.caption}\n" if self.caption else "")


# --- real input ----------------------------------------------------------------------------


def _read_jsonl(file: Path) -> list[str]:
    texts = []
    for lineno, row in iter_jsonl(file):
        if not isinstance(row.get("text"), str):
            raise DataFileError(f"{file}:{lineno}: expected an object with a string \"text\" field")
        texts.append(row["text"])
    return texts


def _read_parquet(file: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OpenGPT4Error(f"{file}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        column = pq.read_table(file, columns=["text"]).column("text").to_pylist()
    except (OSError, KeyError, ValueError) as e:  # pyarrow's errors subclass these
        raise OpenGPT4Error(f"{file}: cannot read a \"text\" column ({' '.join(str(e).split())})") from None
    if not all(isinstance(t, str) for t in column):
        raise OpenGPT4Error(f"{file}: the \"text\" column must hold strings only (no nulls)")
    return column


def _text_files(paths: Iterable[Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix in TEXT_SUFFIXES and f.is_file())
            if not found:
                raise OpenGPT4Error(f"{path}: no {'/'.join(TEXT_SUFFIXES)} files in this directory")
            files += found
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES:
                raise OpenGPT4Error(f"{path}: unsupported input type; expected {', '.join(TEXT_SUFFIXES)}")
            files.append(path)
        else:
            raise OpenGPT4Error(f"{path}: no such file or directory")
    return files


def read_text_inputs(paths: Iterable[Path]) -> list[str]:
    """Documents from .txt files (one each), .jsonl lines and .parquet rows ("text"), in order."""
    docs = []
    for file in _text_files(paths):
        if file.suffix == ".txt":
            texts = [read_text(file)]
        elif file.suffix == ".jsonl":
            texts = _read_jsonl(file)
        else:
            texts = _read_parquet(file)
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise OpenGPT4Error(f"{file}: empty (no text to train on)")
        docs += texts
    return docs


def _pixels(image: Image.Image, size: int) -> np.ndarray:
    img = load_image(image)  # RGB, transparency composited the same way the model sees it
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _split(items: Sequence, fraction: float = VAL_FRACTION) -> tuple[list, list]:
    """(train, val): val is an evenly spread `fraction` of the items, at least one if there are two."""
    n = len(items)
    n_val = max(1, round(n * fraction)) if n >= 2 else 0
    val_idx = {int((k + 0.5) * n / n_val) for k in range(n_val)}
    return [x for i, x in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]


# --- tokenizer -----------------------------------------------------------------------------


def _reuse_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a data dir (index.json) or a checkpoint dir (config.json)."""
    path = Path(path)
    if (path / "index.json").is_file():
        metadata = json.loads((path / "index.json").read_text())["tokenizer"]
    elif (path / "config.json").is_file():
        metadata = read_config(path)["tokenizer"]
    else:
        raise OpenGPT4Error(f"{path}: not a data dir (index.json) or checkpoint dir (config.json)")
    tok = Tokenizer.from_dir(path, metadata)
    if tok.image_id is None:
        raise OpenGPT4Error(f"{path}: its tokenizer has no image token, so it cannot tokenize image documents")
    return tok


def _sample(texts: list[str], max_chars: int) -> list[str]:
    """Every k-th text, so the sample spans the whole corpus in about max_chars."""
    total = sum(map(len, texts))
    return texts[:: max(1, -(-total // max_chars))]


# --- writing -------------------------------------------------------------------------------


def _encode(tok: Tokenizer, texts: list[str], dtype: type, prefix: Sequence[int], special: bool = False) -> np.ndarray:
    """Concatenated [*prefix, *tokens(text)] for every text, as one flat array. special: the texts'
    control-token strings (<|im_start|>...) become those tokens (the world's chat domain, our own text)."""
    chunks = []
    for start in range(0, len(texts), 4096):  # bounded memory; the batch encode runs on all cores
        batch = texts[start : start + 4096]
        ids = [tok.encode(t, allow_special=True) for t in batch] if special else tok.encode_batch(batch)
        flat = itertools.chain.from_iterable(itertools.chain(prefix, x) for x in ids)
        chunks.append(np.fromiter(flat, dtype=dtype, count=sum(len(prefix) + len(x) for x in ids)))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype)


def _question_line(q: Question) -> dict:
    line = {"input": [{"role": "user", "content": q.prompt}], "ideal": q.answer, "prompt": q.prompt,
            "kind": q.kind, "category": q.category, "lang": q.lang}
    for key in ("choices", "subject", "tests", "attr", "blind"):
        if getattr(q, key) is not None:
            line[key] = list(q.choices) if key == "choices" else getattr(q, key)
    return line


def _truthful_line(q: TruthfulQuestion) -> dict:
    """A myth's question with its options (the world_truthfulqa eval's sample), in the eval sets' row layout."""
    return {"input": [{"role": "user", "content": q.prompt}], "ideal": q.true, "prompt": q.prompt,
            **dataclasses.asdict(q)}


def _image_qa(val_images: list[ImageDoc]) -> list[dict]:
    """One line per (val image, question); `image` indexes images/val.u8, the prompt follows the image."""
    lines = []
    for i, doc in enumerate(val_images):
        for q, a in doc.qa:
            prompt = f"\nQuestion: {q}\nAnswer:"
            lines.append({"input": [{"role": "user", "content": prompt}], "ideal": a, "prompt": prompt,
                          "image": i, "kind": doc.kind})
    return lines


def _check_out(out: Path) -> None:
    # atomic_write_dir replaces what is at `out`: only ever let it replace an older data dir.
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "index.json").is_file())):
        raise OpenGPT4Error(f"{out}: exists and is not a data dir; refusing to replace it")


def build(
    preset: str,
    out: str | Path,
    seed: int = 0,
    *,
    text_inputs: Iterable[Path] = (),
    llava: Iterable[Path] = (),
    tokenizer: str | Path | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Build the data dir for `preset` at `out` (atomically) and return its path."""
    if preset not in PRESETS:
        raise OpenGPT4Error(f"unknown data preset {preset!r}; choose from {', '.join(PRESETS)}")
    if tokenizer is not None and vocab_size is not None:
        raise OpenGPT4Error("give either --tokenizer (reuse one) or --vocab-size (train one), not both")
    p, out, t0 = PRESETS[preset], Path(out), time.perf_counter()
    text_inputs, llava = list(text_inputs), list(llava)
    _check_out(out)
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    # Live display on a terminal only; piped stderr keeps just the one-line result or error.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("reading input", total=6)

        def stage(description: str) -> None:
            progress.update(task, description=description, advance=1)

        # Real input first: a bad file fails in a second, before any generating or writing.
        text_train, text_val = _split(read_text_inputs(text_inputs))
        real_images = [ImageDoc(_pixels(img, p.image_size), qa, "llava")
                       for manifest in llava for img, qa in read_llava(Path(manifest))]
        stage("generating the world")
        world = World.generate(seed, p.world)
        docs: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"train": [], "val": []})
        for split in ("train", "val"):
            for doc in world.documents(split):
                docs[doc.domain][split].append(doc.text)
        if text_inputs:
            docs["text"] = {"train": text_train, "val": text_val}
        stage("reading the standard library")
        stdlib_train, skipped_train = stdlib_sources("train", p.stdlib_train_bytes)
        stdlib_val, skipped_val = stdlib_sources("val", p.stdlib_val_bytes)
        docs["stdlib"] = {"train": [t for _, t in stdlib_train], "val": [t for _, t in stdlib_val]}
        stage("drawing images")
        samples = generate_images(seed, p.train_images + p.val_images, p.image_size)
        synthetic = [ImageDoc(_pixels(s.image, p.image_size), s.qa, s.kind, s.caption) for s in samples]
        real_train, real_val = _split(real_images)
        images = {"train": synthetic[: p.train_images] + real_train, "val": synthetic[p.train_images :] + real_val}

        stage("training the tokenizer" if tokenizer is None else "loading the tokenizer")
        if tokenizer is None:
            corpus = [t for name in sorted(docs) for t in docs[name]["train"]] + [d.text for d in images["train"]]
            tok = Tokenizer.train(_sample(corpus, p.tokenizer_chars), vocab_size or p.vocab_size)
        else:
            tok = _reuse_tokenizer(Path(tokenizer))
        dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
        eval_sets = {name: [_question_line(q) for q in qs] for name, qs in world.eval_sets().items()}
        eval_sets["world_languages"] = [_question_line(q) for q in world.language_questions()]
        eval_sets["truthful_mc"] = [_truthful_line(q) for q in world.truthful_questions()]
        eval_sets["image_qa"] = _image_qa(images["val"])
        eval_sets["stdlib_heldout"] = [{"module": m, "text": t} for m, t in stdlib_val]

        def write(tmp: Path) -> None:
            stage("tokenizing")
            for sub in ("shards", "images", "eval"):
                (tmp / sub).mkdir()
            tok.save(tmp)
            index = {
                "format_version": FORMAT_VERSION, "preset": preset, "seed": seed, "vocab_size": tok.vocab_size,
                "dtype": np.dtype(dtype).name, "tokenizer": tok.metadata(),
                "tokenizer_sha256": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest(),
                "image_size": p.image_size, "domains": {}, "images": {}, "evals": {},
                "stdlib": {"heldout_modules": list(HELDOUT_MODULES), "skipped_non_utf8": skipped_train + skipped_val},
            }
            for name in sorted(docs):
                index["domains"][name] = {}
                for split, texts in docs[name].items():
                    progress.update(task, description=f"tokenizing {name} ({split})")
                    file = f"shards/{name}.{split}.bin"
                    ids = _encode(tok, texts, dtype, [tok.bos_id], special=name == "chat")
                    ids.tofile(tmp / file)
                    index["domains"][name][split] = {"file": file, "tokens": len(ids), "documents": len(texts)}
            for split, split_docs in images.items():
                tokens_file, pixels_file = f"shards/images.{split}.bin", f"images/{split}.u8"
                ids = _encode(tok, [d.text for d in split_docs], dtype, [tok.bos_id, tok.image_id])
                ids.tofile(tmp / tokens_file)
                pixels = np.zeros((len(split_docs), p.image_size, p.image_size, 3), np.uint8)
                for i, d in enumerate(split_docs):
                    pixels[i] = d.pixels
                pixels.tofile(tmp / pixels_file)
                index["images"][split] = {"tokens_file": tokens_file, "pixels_file": pixels_file, "tokens": len(ids),
                                          "count": len(split_docs), "documents": len(split_docs)}
            stage("writing eval sets")
            for name in sorted(eval_sets):
                index["evals"][name] = f"eval/{name}.jsonl"
                write_jsonl(tmp / index["evals"][name], eval_sets[name])
            (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")

        atomic_write_dir(out, write)
    console.print(f"built {preset} data in {time.perf_counter() - t0:.1f} s: {out}", highlight=False)
    return out
