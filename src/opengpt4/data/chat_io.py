"""Reading chat data to train on: OpenAI fine-tuning JSONL and its common variants, checked line by line.

One conversation per line, in any of
    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}   OpenAI fine-tuning
    {"chat": [...]} or {"conversations": [...]}                                     the same, another key
    {"conversations": [{"from": "system" | "human" | "gpt", "value": str}, ...]}    ShareGPT
        (with an optional top-level "system": str, as some ShareGPT exports carry it)
Content is a string or OpenAI text parts ({"type": "text", "text": ...}, joined). An assistant
message may carry OpenAI's "weight": 0 to be context only (no loss on it). Other keys ("meta",
"name", ...) are kept or ignored. A chat data dir (`opengpt4 data chat`) holds train.jsonl and,
optionally, heldout.jsonl.

Every problem is a ChatDataError naming file:line (and the message index), raised when the
file is read, so a bad line costs no training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opengpt4.errors import ChatDataError
from opengpt4.files import iter_jsonl

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
KEYS = ("messages", "chat", "conversations")
TRAIN_FILE, HELDOUT_FILE = "train.jsonl", "heldout.jsonl"


@dataclass
class Conversation:
    messages: list[dict[str, Any]]  # {"role", "content": str}, plus "weight": 0 on assistant turns not learned
    source: str  # "file:line", for problems found later (a conversation longer than the context)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatData:
    train: list[Conversation]
    heldout: list[Conversation] | None  # None: no heldout.jsonl
    train_file: Path


def read_chat_data(path: str | Path) -> ChatData:
    """A chat data dir (train.jsonl, heldout.jsonl if present) or a single JSONL file (train only)."""
    path = Path(path)
    if path.is_dir():
        if not (path / TRAIN_FILE).is_file():
            raise ChatDataError(f"{path}: no {TRAIN_FILE} (a chat data dir from `opengpt4 data chat`, "
                                "or a JSONL file of conversations)")
        heldout = path / HELDOUT_FILE
        return ChatData(read_conversations(path / TRAIN_FILE),
                        read_conversations(heldout) if heldout.is_file() else None, path / TRAIN_FILE)
    return ChatData(read_conversations(path), None, path)


def read_conversations(file: str | Path) -> list[Conversation]:
    file = Path(file)
    _check_utf8(file)
    conversations = [parse_conversation(row, f"{file}:{number}") for number, row in iter_jsonl(file)]
    if not conversations:
        raise ChatDataError(f"{file}: no conversations")
    return conversations


def _check_utf8(file: Path) -> None:
    """files.read_text names the file of a non-UTF-8 byte; a data set of thousands of lines wants the line."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ChatDataError(f"{file}: file not found") from None
    except OSError as e:
        raise ChatDataError(f"{file}: cannot read ({e.strerror or e})") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ChatDataError(f"{file}:{line}: not UTF-8 text (invalid byte at offset {e.start}); "
                            "convert it to UTF-8") from None


def parse_conversation(row: dict[str, Any], where: str) -> Conversation:
    """One JSONL object as a checked conversation; `where` ("file:line") prefixes every error."""
    key = next((k for k in KEYS if k in row), None)
    turns = row.get(key) if key else None
    if not isinstance(turns, list) or not turns:
        raise ChatDataError(f"{where}: expected a non-empty list of messages under "
                            f"{' / '.join(repr(k) for k in KEYS)}")
    messages = [_message(turn, i, where) for i, turn in enumerate(turns)]
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":  # ShareGPT's top-level system
        messages.insert(0, {"role": "system", "content": system})
    learned = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1)]
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatDataError(f"{where}: no assistant message: nothing to learn")
    if not learned:
        raise ChatDataError(f"{where}: every assistant message has weight 0: nothing to learn")
    meta = row.get("meta")
    return Conversation(messages, where, meta if isinstance(meta, dict) else {})


def _message(turn: Any, i: int, where: str) -> dict[str, Any]:
    here = f"{where}: message {i}"
    if not isinstance(turn, dict):
        raise ChatDataError(f"{here}: expected an object with 'role' and 'content', got {type(turn).__name__}")
    if "from" in turn or "value" in turn:  # ShareGPT
        if "from" not in turn or "value" not in turn:
            raise ChatDataError(f"{here}: a ShareGPT turn needs 'from' and 'value'")
        if turn["from"] not in SHAREGPT_ROLES:
            raise ChatDataError(f"{here}: unknown 'from' {turn['from']!r}; expected one of "
                                f"{', '.join(SHAREGPT_ROLES)}")
        role, content = SHAREGPT_ROLES[turn["from"]], turn["value"]
    else:
        for needed in ("role", "content"):
            if needed not in turn:
                raise ChatDataError(f"{here}: no {needed!r}")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ChatDataError(f"{here}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    text = _text(content, here)
    message: dict[str, Any] = {"role": role, "content": text}
    if role == "assistant" and not text.strip():
        raise ChatDataError(f"{here}: empty assistant message")
    if "weight" in turn:
        if role != "assistant" or turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
            raise ChatDataError(f"{here}: 'weight' is 0 or 1, on assistant messages only")
        if turn["weight"] == 0:
            message["weight"] = 0
    return message


def _text(content: Any, here: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ChatDataError(f"{here}: content must be a string or a list of text parts "
                        "({'type': 'text', 'text': ...}); images are not supported in training chats")
