"""The ground floor of file handling: where opengpt4 keeps its files, atomic writes, JSONL, versioned JSON.

Every write goes to a temp file or dir next to its destination and is renamed into place, so
a crash leaves the old version or the new one, never half of one; what lands has normal
modes (files 0644, dirs 0755), because checkpoints, logs and figures are meant to be shared
(a server, a container, another user). Every read error names the file, and the line where
there is one. This module imports nothing of opengpt4 but `errors`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from opengpt4.errors import DataFileError, OpenGPT4Error


def opengpt4_home() -> Path:
    """$OPENGPT4_HOME (default ~/.cache/opengpt4): imported models, the serve database, the eval cache."""
    return Path(os.environ.get("OPENGPT4_HOME", Path.home() / ".cache" / "opengpt4"))


# --- atomic writes -----------------------------------------------------------------------------
def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp_dir), then rename tmp_dir to `path` (replacing an older one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        # mkdtemp makes a private (0700) dir and some writers make 0600 files: give them normal modes.
        tmp.chmod(0o755)
        for file in tmp.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp_file) on a temp file in `path`'s directory, then rename it to `path` (mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per call (not just the pid): two threads may write the same file.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """`text` as UTF-8 at `path`, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_jsonl(path: str | Path, rows: Iterable[Any], *, default: Callable[[Any], Any] | None = None) -> Path:
    """One JSON value per line, UTF-8 as is (no \\u escapes), atomically; `default` as in json.dumps."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=default) + "\n" for row in rows))


# --- reads ---------------------------------------------------------------------------------------
def read_text(path: str | Path) -> str:
    """A UTF-8 text file; DataFileError names the file when it is missing, unreadable or not UTF-8."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8") from None
    except OSError as e:
        raise DataFileError(f"{path}: cannot read ({e.strerror or e})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; errors name the file and line."""
    # split("\n"), not splitlines(): JSON written with ensure_ascii=False keeps U+2028 and
    # friends raw inside strings, and splitlines() would cut a line there.
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file, blank lines skipped; errors name the file and line."""
    return [row for _, row in iter_jsonl(path)]


def read_versioned_json(file: str | Path, version: int, hint: str,
                        error: type[OpenGPT4Error] = DataFileError) -> dict[str, Any]:
    """A JSON object whose "format_version" is `version`; every error (of type `error`) names the
    file, and `hint` says what it should have been when it is missing."""
    file = Path(file)
    if not file.is_file():
        raise error(f"{file}: missing ({hint})")
    try:
        obj = json.loads(read_text(file))
    except DataFileError as e:
        raise error(str(e)) from None
    except json.JSONDecodeError as e:
        raise error(f"{file}: not valid JSON ({e})") from None
    found = obj.get("format_version") if isinstance(obj, dict) else None
    if found != version:
        raise error(f"{file}: format_version {found!r}, this opengpt4 reads {version}")
    return obj
