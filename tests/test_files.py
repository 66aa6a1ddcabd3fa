"""files.py: atomic writes with normal modes, JSONL with the file and line in every error, versioned JSON."""

import json
import os
import stat
import threading

import pytest

from opengpt4.errors import CheckpointError, DataFileError
from opengpt4.files import (
    atomic_write,
    atomic_write_dir,
    iter_jsonl,
    opengpt4_home,
    read_jsonl,
    read_versioned_json,
    write_jsonl,
    write_text,
)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGPT4_HOME", str(tmp_path / "h"))
    assert opengpt4_home() == tmp_path / "h"
    monkeypatch.delenv("OPENGPT4_HOME")
    assert opengpt4_home().parts[-2:] == (".cache", "opengpt4")


def test_write_text_replaces_atomically_with_normal_mode(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_text(target, "one\n")
    write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert mode(target) == 0o644  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")

    def write(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure.png"]


def test_threads_writing_one_file_never_collide(tmp_path):
    target = tmp_path / "log.jsonl"
    errors = []

    def writer(k: int) -> None:
        try:
            for i in range(20):
                write_jsonl(target, [{"writer": k, "i": i}] * 50)
        except Exception as e:  # a shared temp name would make one writer rename the other's file away
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = read_jsonl(target)
    assert len(rows) == 50 and len({json.dumps(r) for r in rows}) == 1  # one writer's whole file
    assert os.listdir(tmp_path) == ["log.jsonl"]


def test_atomic_write_dir_gives_shareable_modes_and_replaces(tmp_path):
    target = tmp_path / "ckpt"

    def write(tmp):
        (tmp / "a.txt").write_text("1")
        (tmp / "a.txt").chmod(0o600)
        (tmp / "inner").mkdir()

    atomic_write_dir(target, write)
    assert mode(target) == 0o755 and mode(target / "a.txt") == 0o644 and mode(target / "inner") == 0o755
    atomic_write_dir(target, lambda tmp: (tmp / "b.txt").write_text("2"))
    assert sorted(os.listdir(target)) == ["b.txt"] and os.listdir(tmp_path) == ["ckpt"]


def test_jsonl_round_trip_keeps_unicode_line_separators(tmp_path):
    rows = [{"text": "caf\u00e9 \u2028 next\u2029para", "n": 1}, {"text": "", "n": 2}]
    file = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert "\u00e9" in file.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert read_jsonl(file) == rows


def test_jsonl_errors_name_file_and_line(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(DataFileError, match=r"d\.jsonl:3: not valid JSON"):
        read_jsonl(file)
    file.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFileError, match=r"d\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(file)
    file.write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=r"d\.jsonl: not UTF-8 text \(invalid byte at offset 10\)"):
        read_jsonl(file)
    with pytest.raises(DataFileError, match=r"nope\.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    file.write_text('\n{"a": 1}\n\n{"b": 2}\n')
    assert list(iter_jsonl(file)) == [(2, {"a": 1}), (4, {"b": 2})]  # numbers count blank lines
    assert issubclass(DataFileError, ValueError)


def test_versioned_json_names_missing_invalid_and_newer_format_files(tmp_path):
    file = tmp_path / "index.json"
    with pytest.raises(DataFileError, match=r"index\.json: missing \(run the build\)"):
        read_versioned_json(file, 1, "run the build")
    file.write_text("{")
    with pytest.raises(CheckpointError, match=r"index\.json: not valid JSON"):
        read_versioned_json(file, 1, "", CheckpointError)
    file.write_text(json.dumps({"format_version": 2}))
    with pytest.raises(DataFileError, match=r"format_version 2, this opengpt4 reads 1"):
        read_versioned_json(file, 1, "")
    file.write_text(json.dumps({"format_version": 1, "x": [1]}))
    assert read_versioned_json(file, 1, "") == {"format_version": 1, "x": [1]}
