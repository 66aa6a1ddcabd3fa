"""The codebase corpus: the Python standard library source of the running interpreter.

GPT-4's report predicted the final loss on a held-out slice of its own codebase from much
smaller runs. Our miniature: a fixed set of pure-Python stdlib modules never enters
training; their source is the "codebase loss" set (the val split of the `stdlib` domain and
`eval/stdlib_heldout.jsonl`) whose loss the scaling sweep predicts.

Everything is deterministic for a given interpreter: files are chosen by a hash of their
relative path (not Python's salted `hash`) and returned sorted by path.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

# Held out of training (a module is a top-level file `name.py` or a package dir `name/`).
# All are pure Python, self-contained and ordinary code (parsing, numerics, text, algorithms),
# so their loss measures how well the model learned Python, not one odd file.
HELDOUT_MODULES = (
    "bisect",
    "calendar",
    "csv",
    "difflib",
    "fractions",
    "heapq",
    "json",
    "shlex",
    "statistics",
    "textwrap",
)

# Directories that are not library code: test suites (huge, and full of deliberately odd
# files), the IDLE app, third-party packages, generated documentation and build config.
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "turtledemo", "pydoc_data", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_name(path: Path) -> str:
    """`json/decoder.py` -> `json.decoder`; `json/__init__.py` -> `json` (path relative to the stdlib root)."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def stdlib_files(heldout: bool) -> list[Path]:
    """Library .py files relative to `stdlib_root()`, sorted: the held-out modules' or all the others'."""
    root, files = stdlib_root(), []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so the walk never enters test suites or site-packages (most of the tree).
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith("config-")]
        rel = Path(dirpath).relative_to(root)
        files += [rel / name for name in filenames if name.endswith(".py")]
    return sorted(f for f in files if (f.parts[0].removesuffix(".py") in HELDOUT_MODULES) == heldout)


def _within_budget(files: list[Path], max_bytes: int | None) -> list[Path]:
    """A deterministic spread of files totalling at most max_bytes, sorted by path.

    Files are visited in the order of a hash of their path, so a small budget samples the
    whole library (asyncio, email, xml, ...) instead of the alphabetical start of it.
    """
    if max_bytes is None:
        return files
    root, chosen, total = stdlib_root(), [], 0
    for f in sorted(files, key=lambda f: hashlib.sha256(f.as_posix().encode()).digest()):
        size = (root / f).stat().st_size
        if total + size <= max_bytes:
            chosen.append(f)
            total += size
    return sorted(chosen)


def stdlib_sources(split: str, max_bytes: int | None = None) -> tuple[list[tuple[str, str]], int]:
    """([(module name, source text)], number of files skipped as not UTF-8) for split "train" or "val".

    "train" is every non-held-out file, "val" the held-out modules; max_bytes caps either.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root, sources, skipped = stdlib_root(), [], 0
    for f in _within_budget(stdlib_files(heldout=split == "val"), max_bytes):
        try:
            text = (root / f).read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # a few files declare another source encoding
            skipped += 1
            continue
        if text.strip():  # empty __init__.py files are not documents
            sources.append((module_name(f), text))
    return sources, skipped
