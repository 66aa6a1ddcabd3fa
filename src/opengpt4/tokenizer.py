"""Byte-level BPE tokenizer (a thin wrapper over HF `tokenizers`) and ChatML rendering.

Two sources: `Tokenizer.train` on our own corpus, and `Tokenizer.from_gguf` rebuilding an
imported model's vocabulary. Both pre-tokenize the way SmolLM2 (and llama.cpp's "smollm"
pre-tokenizer) does: every digit is its own piece, then GPT-2's byte-level regex. Splitting
digits keeps numbers compositional, which matters for the arithmetic in our synthetic world.

Chats are rendered as ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`). Control tokens are
inserted as ids and text is encoded with special-token parsing off, so nothing a user types
can become a control token. The result equals what transformers' `apply_chat_template`
produces with the same ChatML template, token for token.

Tools follow SmolLM2-Instruct's function-calling format (its 1.7B model card; the 135M GGUF's
template has no tools section): the function signatures as a JSON list inside `<tools>` in the
system message, and the assistant's calls as one JSON list inside
`<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>`. Tool results go back as a user
turn of `<tool_response>` blocks, as Qwen2.5's ChatML template does (SmolLM2 defines none).
OpenAI's `developer` role is the system role.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from opengpt4.errors import TokenizerError

if TYPE_CHECKING:
    import gguf

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>", "<|pad|>"]  # ids 0..4 when trained
ROLES = ("system", "user", "assistant", "developer", "tool")
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# llama.cpp pre-tokenizer names whose regex isolates each \p{N} before GPT-2's split.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_GPT2_PRE = {"gpt-2", "gpt2"}
_METADATA_KEYS = (
    "bos_token",
    "eos_token",
    "pad_token",
    "image_token",
    "chat_template",
    "default_system",
    "tokens_per_image",
    "add_bos",
)


@dataclass
class ChatEncoding:
    ids: list[int]
    loss_mask: list[int]  # 1 on assistant content and the <|im_end|> closing each assistant turn
    images: list[Any] = field(default_factory=list)  # PIL images or url strings, in order; not decoded here


def read_backend(file: Path) -> tokenizers.Tokenizer:
    """A `tokenizers` tokenizer.json, with a TokenizerError naming the file if it is missing or unreadable."""
    if not file.is_file():
        raise TokenizerError(f"tokenizer file not found: {file}")
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception for any parse error
        raise TokenizerError(f"cannot read tokenizer file {file}: {e}") from None


def _pre_tokenizer(split_digits: bool) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if not split_digits:
        return byte_level
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


class Tokenizer:
    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str = "<|endoftext|>",
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|pad|>",
        image_token: str | None = "<|image|>",
        chat_template: str | None = None,
        default_system: str | None = None,
        tokens_per_image: int = 0,
        add_bos: bool = True,
    ) -> None:
        # Special-token strings in text are encoded as plain text; `encode(allow_special=True)`
        # opts back in by splitting them out itself. The flag is shared backend state, so
        # toggling it per call would race between threads. (It is not saved in tokenizer.json.)
        backend.encode_special_tokens = True
        self._backend = backend
        self.bos_token, self.eos_token, self.pad_token, self.image_token = bos_token, eos_token, pad_token, image_token
        self.chat_template, self.default_system = chat_template, default_system
        self.tokens_per_image = tokens_per_image
        self.add_bos = add_bos  # whether plain-text prompts start with BOS (our pretraining separates documents so)
        for name in ("bos_token", "eos_token", "pad_token", "image_token"):
            token = getattr(self, name)
            if token is not None and backend.token_to_id(token) is None:
                raise TokenizerError(f"{name} {token!r} is not in the tokenizer's vocabulary")
        specials = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        specials.sort(key=len, reverse=True)  # longest first, so no token matches a prefix of another
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    # --- construction ------------------------------------------------------------------
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False,
        tokens_per_image: int = 0,
    ) -> Tokenizer:
        """Byte-level BPE; every byte is in the initial alphabet, so any text round-trips.
        `tokens_per_image`: the vision config's, for a tokenizer made for a model that takes images."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
            raise TokenizerError(
                f"vocab_size {vocab_size} is too small: the byte alphabet and special tokens alone need "
                f"{len(alphabet) + len(SPECIAL_TOKENS)}"
            )
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = _pre_tokenizer(split_digits=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=alphabet,
            show_progress=show_progress,
        )
        backend.train_from_iterator(texts, trainer)
        return cls(backend, tokens_per_image=tokens_per_image)

    @classmethod
    def from_dir(cls, path: str | Path, metadata: dict | None = None, *,
                 tokens_per_image: int | None = None) -> Tokenizer:
        """Load `path/tokenizer.json`; `metadata` is what `.metadata()` returned when it was saved.
        `tokens_per_image`, when given, is the model's (its vision config decides, not the data)."""
        file = Path(path) / "tokenizer.json"
        backend = read_backend(file)
        metadata = dict(metadata or {})
        unknown = sorted(set(metadata) - set(_METADATA_KEYS))
        if unknown:
            raise TokenizerError(f"unknown tokenizer metadata keys for {file}: {', '.join(unknown)}")
        if tokens_per_image is not None:
            metadata["tokens_per_image"] = tokens_per_image
        return cls(backend, **metadata)

    def save(self, path: str | Path) -> None:
        self._backend.save(str(Path(path) / "tokenizer.json"))

    def metadata(self) -> dict:
        """Everything besides tokenizer.json needed to rebuild this tokenizer (JSON-serialisable)."""
        return {key: getattr(self, key) for key in _METADATA_KEYS}

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> Tokenizer:
        """Rebuild the byte-level BPE an imported GGUF model was trained with."""

        def read(key: str, default: Any = None) -> Any:
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        kind, pre = read("tokenizer.ggml.model"), read("tokenizer.ggml.pre", "gpt-2")
        if kind != "gpt2":
            raise TokenizerError(f"GGUF tokenizer.ggml.model {kind!r} is not supported; only byte-level BPE ('gpt2')")
        if pre not in _DIGIT_SPLIT_PRE | _GPT2_PRE:
            supported = ", ".join(sorted(_DIGIT_SPLIT_PRE | _GPT2_PRE))
            raise TokenizerError(f"GGUF tokenizer.ggml.pre {pre!r} is not supported; supported: {supported}")
        tokens, types = read("tokenizer.ggml.tokens"), read("tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ")) for m in read("tokenizer.ggml.merges", [])]
        bos_id, eos_id = read("tokenizer.ggml.bos_token_id"), read("tokenizer.ggml.eos_token_id")
        if (
            not tokens
            or len(types or []) != len(tokens)
            or any(len(m) != 2 for m in merges)
            or None in (bos_id, eos_id)
        ):
            raise TokenizerError(
                "GGUF tokenizer is incomplete: it needs tokenizer.ggml.tokens, token_type, well-formed merges, "
                "bos_token_id and eos_token_id"
            )
        backend = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        backend.pre_tokenizer = _pre_tokenizer(split_digits=pre in _DIGIT_SPLIT_PRE)
        backend.decoder = decoders.ByteLevel()
        # Type 3 (CONTROL) tokens such as <|im_end|> must stay whole; they already have their ids.
        control = [t for t, ty in zip(tokens, types, strict=True) if ty == 3]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        # The GGUF's own ids, as transformers' GGUF loader reads them (SmolLM2: bos <|im_start|>, eos <|im_end|>).
        bos, eos = tokens[bos_id], tokens[eos_id]
        pad_id = read("tokenizer.ggml.padding_token_id")
        template = read("tokenizer.chat_template")
        return cls(
            backend,
            bos_token=bos,
            eos_token=eos,
            pad_token=eos if pad_id is None else tokens[pad_id],
            image_token=None,
            chat_template=template,
            default_system=template_default_system(template),
            add_bos=bool(read("tokenizer.ggml.add_bos_token", False)),
        )

    # --- vocabulary ---------------------------------------------------------------------
    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._backend.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int:
        return self._backend.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        return self._backend.token_to_id(self.pad_token)

    @property
    def image_id(self) -> int | None:
        return None if self.image_token is None else self._backend.token_to_id(self.image_token)

    @property
    def im_start_id(self) -> int:
        return self._chat_id("<|im_start|>")

    @property
    def im_end_id(self) -> int:
        return self._chat_id("<|im_end|>")

    def _chat_id(self, token: str) -> int:
        i = self._backend.token_to_id(token)
        if i is None:
            raise TokenizerError(f"this tokenizer has no {token} token, so it cannot render ChatML chats")
        return i

    @property
    def stop_ids(self) -> list[int]:
        ids = [self.eos_id] + [self._backend.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def id_to_token(self, i: int) -> str:
        return self._backend.id_to_token(i)

    def token_to_id(self, s: str) -> int | None:
        return self._backend.token_to_id(s)

    # --- text ---------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        if not (allow_special and self._special_re):
            return ids + self._backend.encode(text, add_special_tokens=False).ids
        for i, piece in enumerate(self._special_re.split(text)):  # odd pieces are the special tokens
            if i % 2:
                ids.append(self._backend.token_to_id(piece))
            elif piece:
                ids += self._backend.encode(piece, add_special_tokens=False).ids
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and each token's (start, end) character span in `text`. Where a
        character's bytes are split over several tokens, each of them spans the whole character.
        Scoring splits a context from its continuation by these spans; echo reports the starts."""
        encoding = self._backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)  # int(): tensors too

    # --- chat ---------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None,
                    response_schema: dict | None = None, add_generation_prompt: bool = False,
                    read_image: Callable[[Any], str] | None = None) -> ChatEncoding:
        """`tools`: OpenAI tool definitions (`{"type": "function", "function": {...}}`) the
        assistant may call; `response_schema`: the JSON schema its reply must follow
        (response_format). Both are described at the end of the system message: the grammar
        holds the reply to them, and a model told what is wanted stays on course (SmolLM2-135M
        writes a valid instance for 40 of 40 extraction prompts told the schema, 37 not told).
        `read_image`: an image source's reading (model/reader.py), written right after its
        placeholders, and a newline between it and the text that follows."""
        checked = _merge_tool_turns([_check_message(i, m) for i, m in enumerate(messages)])
        extra = [tools_system_prompt(tools)] if tools else []
        if response_schema is not None:
            extra.append("Reply with JSON that follows this schema:\n" + json.dumps(response_schema, ensure_ascii=False))
        # Like SmolLM2's template: a conversation without a system message gets the default one.
        if checked and checked[0][0] != "system" and (self.default_system is not None or extra):
            checked.insert(0, ("system", [("text", self.default_system or "")]))
        if extra:
            role, parts = checked[0]
            before = "\n\n" if any(kind != "text" or value for kind, value in parts) else ""
            checked[0] = (role, [*parts, ("text", before + "\n\n".join(extra))])
        out = ChatEncoding([], [])
        newline = self.encode("\n")
        for role, parts in checked:
            train = role == "assistant"
            out.ids.append(self.im_start_id)
            out.loss_mask.append(0)
            # The header and the text up to the first image are one segment, exactly as the
            # template's single string is split at control tokens; `start` is where content begins.
            text, start = role + "\n", len(role) + 1
            read = False  # the text so far is an image's reading
            for kind, value in parts:
                if kind == "text":
                    text += ("\n" if read else "") + value
                    read = False
                    continue
                self._append_text(out, text, start if train else None)
                text, start = "", 0
                if self.image_id is None or self.tokens_per_image <= 0:
                    raise TokenizerError("this model does not accept images (it has no image token)")
                out.ids += [self.image_id] * self.tokens_per_image
                out.loss_mask += [0] * self.tokens_per_image
                out.images.append(value)
                if read_image is not None:
                    text, read = read_image(value), True
                    start = len(text)  # a reading is input, never a target
            self._append_text(out, text, start if train else None)
            out.ids += [self.im_end_id, *newline]
            out.loss_mask += [int(train)] + [0] * len(newline)
        if add_generation_prompt:
            header = [self.im_start_id, *self.encode("assistant\n")]
            out.ids += header
            out.loss_mask += [0] * len(header)
        return out

    def _append_text(self, out: ChatEncoding, text: str, train_from: int | None) -> None:
        """Encode `text`; mask 1 on tokens ending past char `train_from` (None: mask all 0)."""
        enc = self._backend.encode(text, add_special_tokens=False)
        out.ids += enc.ids
        out.loss_mask += [int(train_from is not None and end > train_from) for _, end in enc.offsets]


def _check_message(i: int, message: Any) -> tuple[str, list[tuple[str, Any]]]:
    """Validate one OpenAI-style message; returns (role, [("text", str) | ("image", source)]) in
    ChatML's roles: developer is system, a tool result is a user turn, an assistant's tool calls
    are text in its turn."""
    if not isinstance(message, dict):
        raise TokenizerError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    calls = message.get("tool_calls") if role == "assistant" else None
    if "role" not in message or ("content" not in message and not calls):
        missing = "role" if "role" not in message else "content"
        raise TokenizerError(f"message {i} has no '{missing}'")
    if role not in ROLES:
        raise TokenizerError(f"message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
    parts = _content_parts(i, message.get("content"))
    if role == "developer":
        return "system", parts
    if role == "tool":
        if any(kind != "text" for kind, _ in parts):
            raise TokenizerError(f"message {i}: a tool result must be text")
        return "tool", [("text", "<tool_response>\n" + "".join(v for _, v in parts) + "\n</tool_response>")]
    if calls:
        text = "".join(v for kind, v in parts if kind == "text")
        return role, [("text", text + ("\n" if text else "") + format_tool_calls(_read_tool_calls(i, calls)))]
    return role, parts


def _content_parts(i: int, content: Any) -> list[tuple[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise TokenizerError(f"message {i} content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(("text", part["text"]))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise TokenizerError(f"message {i} part {j}: image_url needs a 'url' string")
            parts.append(("image", url))
        elif kind == "image" and part.get("image") is not None:
            parts.append(("image", part["image"]))
        else:
            raise TokenizerError(
                f"message {i} part {j} is malformed or of unknown type {kind!r}; expected "
                "{'type': 'text', 'text': str}, {'type': 'image_url', 'image_url': {'url': str}} "
                "or {'type': 'image', 'image': <PIL image>}"
            )
    return parts


def _merge_tool_turns(checked: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """Tool results become user turns; consecutive ones (the answers to one turn's parallel
    calls) share a turn, one <tool_response> block each."""
    out: list[tuple[str, list]] = []
    for role, parts in checked:
        if role == "tool" and out and out[-1][0] == "tool":
            out[-1] = ("tool", [("text", out[-1][1][0][1] + "\n" + parts[0][1])])
        else:
            out.append((role, parts))
    return [("user" if role == "tool" else role, parts) for role, parts in out]


def _read_tool_calls(i: int, calls: Any) -> list[tuple[str, Any]]:
    """An assistant message's OpenAI tool_calls as (name, arguments object)."""
    out = []
    for j, call in enumerate(calls if isinstance(calls, list) else [None]):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TokenizerError(f"message {i} tool_calls[{j}] needs a function with a name")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, json.JSONDecodeError):
            raise TokenizerError(f"message {i} tool_calls[{j}].function.arguments is not a JSON string") from None
        out.append((function["name"], arguments))
    return out


def format_tool_calls(calls: list[tuple[str, Any]]) -> str:
    """The assistant's tool calls as the model writes them (the layout engine/grammar.py enforces)."""
    return TOOL_CALL_OPEN + json.dumps([{"name": n, "arguments": a} for n, a in calls], ensure_ascii=False) \
        + TOOL_CALL_CLOSE


def tools_system_prompt(tools: list[dict]) -> str:
    """What the system message says about the tools: their signatures and the format of a call."""
    signatures = json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
    example = format_tool_calls([("function_name", {"argument": "value"})])
    return (f"You can call these functions:\n<tools>{signatures}</tools>\n\n"
            "To call one or more of them, reply with only the list of calls, in this format:\n"
            f"{example}\nIf no function fits, answer in plain text.")


def template_default_system(template: str | None) -> str | None:
    """The system prompt a chat template inserts when a conversation has none (SmolLM2's does).

    Found by rendering the template on a one-message conversation rather than by parsing its
    source, so it works however the template is written.
    """
    if not template:
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # templates come from model files: sandbox them

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        out = env.from_string(template).render(messages=[{"role": "user", "content": "x"}], add_generation_prompt=False)
    except Exception:  # a template we cannot render has no default we can find
        return None
    m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", out, re.S)
    return m.group(1) if m else None
