"""`opengpt4 scaling data`: the sweep's data dir, in bytes, with its held-out code checked for leaks.

Training text: the synthetic world's documents and a code corpus of every library file of the
interpreter (the standard library without the `encodings` package, whose codec tables are
generated, and without test suites) plus the Python source installed beside it
(site-packages), minus
  - files over MAX_FILE_BYTES (generated tables and vendored bundles, not written code),
  - exact duplicates (vendored copies), and
  - any file that shares a SPAN_BYTES-byte span with a held-out module (a vendored `json`, a
    backport of `statistics`): the held-out set must measure Python, not memory.
Held out: `data.code.HELDOUT_MODULES`, all of it; its bits per byte is the sweep's metric.

The decontamination check reports the share of the held-out set's WINDOW_BYTES-byte windows
(every offset) that occur anywhere in the training text, and gzip -9 and xz -9e on the same
files (each file compressed alone) give floors a language model must beat.

The interpreter is pinned (PINNED_PYTHON): the standard library decides the split, so another
version would build another experiment. The data dir has the layout `data build` writes
(index.json, shards/<domain>.<split>.bin), so `opengpt4 train` and its loader read it as is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opengpt4.config import FORMAT_VERSION
from opengpt4.data.code import module_name, stdlib_files, stdlib_root
from opengpt4.data.world import World
from opengpt4.errors import ConfigError, OpenGPT4Error
from opengpt4.files import atomic_write_dir
from opengpt4.scaling.family import BYTE_OFFSET, byte_tokenizer

PINNED_PYTHON = (3, 11)
MAX_FILE_BYTES = 200_000
SPAN_BYTES, WINDOW_BYTES = 200, 50
CODE = "code"  # the code domain; its val split is the held-out modules
WORLD_SHARE = 0.12  # of training rows from the synthetic world (see mixture)
FUNCTIONS, FUNCTIONS_SHARE = "pycode", 0.04  # the world's Python functions, the capability problems' kin: part of WORLD_SHARE
GENERATED = ("encodings",)
_SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__", "site-packages"}
_HASH_BASE = 0x100000001B3  # odd, so multiplying by it is invertible mod 2^64


# --- windows -------------------------------------------------------------------------------
def window_hashes(data: bytes, width: int) -> np.ndarray:
    """A 64-bit polynomial hash of every `width`-byte window of `data` (len(data) - width + 1 of them).

    Built by doubling, h[a+b](i) = h[a](i) * P^b + h[b](i + a), so it costs log2(width) passes
    over the data instead of width."""
    x = np.frombuffer(data, np.uint8).astype(np.uint64) + np.uint64(1)  # + 1: a zero byte still counts
    if len(x) < width:
        return np.zeros(0, np.uint64)
    result, covered = None, 0
    power, span = x, 1  # the hashes of all `span`-byte windows, span = 1, 2, 4, ...
    with np.errstate(over="ignore"):
        while True:
            if width & span:
                if result is None:
                    result, covered = power, span
                else:
                    n = len(x) - covered - span + 1
                    result = result[:n] * np.uint64(pow(_HASH_BASE, span, 2**64)) + power[covered:covered + n]
                    covered += span
            if covered == width:
                return result
            n = len(power) - span
            power = power[:n] * np.uint64(pow(_HASH_BASE, span, 2**64)) + power[span:span + n]
            span *= 2


def _found(hashes: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `hashes` are in `sorted_set` (a sorted array): a boolean mask."""
    if len(sorted_set) == 0 or len(hashes) == 0:
        return np.zeros(len(hashes), bool)
    at = np.minimum(np.searchsorted(sorted_set, hashes), len(sorted_set) - 1)
    return sorted_set[at] == hashes


class Decontamination:
    """The held-out texts' windows, checked against training texts one at a time."""

    def __init__(self, heldout: list[bytes]) -> None:
        self.spans = np.unique(np.concatenate([window_hashes(t, SPAN_BYTES) for t in heldout]))
        self.windows = np.concatenate([window_hashes(t, WINDOW_BYTES) for t in heldout])  # every offset
        self.unique_windows = np.unique(self.windows)
        self.seen: list[np.ndarray] = []  # the held-out windows found in training text so far

    def shares_span(self, text: bytes) -> bool:
        """Whether `text` has a SPAN_BYTES-byte span in common with the held-out set."""
        return bool(_found(window_hashes(text, SPAN_BYTES), self.spans).any())

    def add_training(self, text: bytes) -> None:
        h = window_hashes(text, WINDOW_BYTES)
        self.seen.append(np.unique(h[_found(h, self.unique_windows)]))

    def share(self) -> float:
        """The share of held-out windows (every offset) that occur in the training text added."""
        seen = np.unique(np.concatenate(self.seen)) if self.seen else np.zeros(0, np.uint64)
        return float(_found(self.windows, seen).mean()) if len(self.windows) else 0.0


# --- the corpus ----------------------------------------------------------------------------
def check_python() -> None:
    if sys.version_info[:2] != PINNED_PYTHON:
        pinned = ".".join(map(str, PINNED_PYTHON))
        raise ConfigError(f"the scaling corpus is pinned to Python {pinned} (its standard library decides the "
                          f"held-out split and the data's hash); this is Python {sys.version.split()[0]}")


def site_packages_root() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _library_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith((".dist-info", ".egg-info")))
        rel = Path(dirpath).relative_to(root)
        files += [rel / f for f in filenames if f.endswith(".py")]
    return sorted(files)


def candidate_files() -> list[tuple[str, Path]]:
    """(name, path) of every code file that may train: the stdlib's non-held-out, non-generated
    files, then site-packages', in a fixed order."""
    stdlib = [(f"stdlib:{module_name(f)}", stdlib_root() / f) for f in stdlib_files(heldout=False)
              if f.parts[0].removesuffix(".py") not in GENERATED]
    site = site_packages_root()
    return stdlib + [(f"site:{f.as_posix()}", site / f) for f in _library_files(site)]


def _read_source(path: Path) -> bytes | None:
    """The file's bytes if it is training material: UTF-8, not empty, not over the size cap."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return data if data.strip() else None


def heldout_sources() -> list[tuple[str, bytes]]:
    root = stdlib_root()
    return [(module_name(f), (root / f).read_bytes()) for f in stdlib_files(heldout=True)
            if (root / f).read_bytes().strip()]


def compression_floors(texts: Iterable[bytes]) -> dict[str, float]:
    """Bits per byte of gzip -9 and xz -9e over the texts, each compressed on its own."""
    texts = list(texts)
    raw = sum(map(len, texts))
    sizes = {"gzip-9": sum(len(gzip.compress(t, 9)) for t in texts),
             "xz-9e": sum(len(lzma.compress(t, preset=9 | lzma.PRESET_EXTREME)) for t in texts)}
    return {k: 8 * v / raw for k, v in sizes.items()}


def encode(texts: Iterable[bytes], bos: int) -> np.ndarray:
    """[BOS, *bytes + BYTE_OFFSET] for each text: the byte tokenizer's ids, without the tokenizer."""
    parts = []
    for t in texts:
        parts += [np.array([bos], np.uint16), np.frombuffer(t, np.uint8).astype(np.uint16) + BYTE_OFFSET]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def data_hash(data_dir: Path) -> str:
    """sha256 over index.json's shard entries and the shards' bytes: what a prediction was made on."""
    index = json.loads((data_dir / "index.json").read_text())
    h = hashlib.sha256()
    for domain in sorted(index["domains"]):
        for split in ("train", "val"):
            file = index["domains"][domain][split]["file"]
            h.update(file.encode())
            with open(data_dir / file, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
    return h.hexdigest()


def build(out: Path, seed: int = 0, world_size: str = "mini", max_files: int | None = None) -> dict:
    """Write the data dir at `out` (atomically); returns its index["scaling"] report.
    `max_files`: only the first code files (tests)."""
    check_python()
    out = Path(out)
    if out.exists() and not (out / "index.json").is_file():
        raise OpenGPT4Error(f"{out}: exists and is not a data dir; refusing to replace it")
    tok = byte_tokenizer()
    heldout = heldout_sources()
    check = Decontamination([t for _, t in heldout])
    candidates = candidate_files()[:max_files]
    code, dropped, seen_digests, skipped = [], [], set(), 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task("code files", total=len(candidates))
        for name, path in candidates:
            progress.advance(task)
            data = _read_source(path)
            digest = data and hashlib.sha256(data).digest()
            if data is None or digest in seen_digests:
                skipped += 1
                continue
            seen_digests.add(digest)
            if check.shares_span(data):
                dropped.append(name)
                continue
            check.add_training(data)
            code.append(data)
        progress.update(task, description="the world, the decontamination check, the floors")
        world = World.generate(seed, world_size)
        docs: dict[str, dict[str, list[bytes]]] = {}
        for split in ("train", "val"):
            for doc in world.documents(split):
                if doc.domain == "chat":  # chat-template text for chat models; the sweep's corpus (its data hash) predates it
                    continue
                docs.setdefault(doc.domain, {"train": [], "val": []})[split].append(doc.text.encode())
        for text in (t for d in docs.values() for t in d["train"]):
            check.add_training(text)
        docs[CODE] = {"train": code, "val": [t for _, t in heldout]}
        report = {
            "python": sys.version.split()[0], "seed": seed, "world": world_size,
            "heldout_modules": [m for m, _ in heldout], "heldout_bytes": sum(len(t) for _, t in heldout),
            "code_files": len(code), "code_bytes": sum(map(len, code)),
            "world_bytes": sum(len(t) for name, d in docs.items() if name != CODE for t in d["train"]),
            "skipped_files": skipped, "dropped_sharing_span": dropped,
            "span_bytes": SPAN_BYTES, "window_bytes": WINDOW_BYTES,
            "heldout_windows_in_training": check.share(),
            "floors_bits_per_byte": compression_floors(t for _, t in heldout),
        }
        report["train_bytes"] = report["code_bytes"] + report["world_bytes"]

        def write(tmp: Path) -> None:
            progress.update(task, description="writing the shards")
            (tmp / "shards").mkdir()
            tok.save(tmp)
            index = {"format_version": FORMAT_VERSION, "preset": "scaling", "seed": seed, "vocab_size": tok.vocab_size,
                     "dtype": "uint16", "tokenizer": tok.metadata(),
                     "tokenizer_sha256": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest(),
                     "domains": {}, "images": {}, "evals": {}}
            for name in sorted(docs):
                index["domains"][name] = {}
                for split, texts in docs[name].items():
                    file = f"shards/{name}.{split}.bin"
                    ids = encode(texts, tok.bos_id)
                    ids.tofile(tmp / file)
                    index["domains"][name][split] = {"file": file, "tokens": len(ids), "documents": len(texts),
                                                     "bytes": sum(map(len, texts))}
            index["scaling"] = report
            (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
            report["data_sha256"] = data_hash(tmp)
            index["scaling"] = report
            (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")

        atomic_write_dir(out, write)
    return report


def mixture(index: dict) -> dict[str, float]:
    """CODE gets 1 - WORLD_SHARE of the rows; the world's Python functions FUNCTIONS_SHARE; its other
    domains the rest in proportion to their bytes. By bytes alone the world would be 1.6% (4 MB beside
    250 MB of code) and its functions 0.1%: the sweep's models then pass none of the capability
    problems (a previous sweep: -mean log pass rate at the floor at every budget), so the capability
    fit had nothing to fit. At 4% a 3e13-FLOP run reads the 0.37 MB of functions about once, the
    target about three times."""
    world = {d: v["train"]["bytes"] for d, v in index["domains"].items() if d not in (CODE, FUNCTIONS)}
    total = sum(world.values())
    shares = {CODE: 1 - WORLD_SHARE, **{d: (WORLD_SHARE - FUNCTIONS_SHARE) * b / total for d, b in world.items()}}
    return shares | ({FUNCTIONS: FUNCTIONS_SHARE} if FUNCTIONS in index["domains"] else {})
