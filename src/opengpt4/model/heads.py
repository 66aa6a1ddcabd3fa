"""A decoder with a small head on the hidden state of each sequence's last real token.

    model = HeadModel(decoder, HeadConfig("classifier", ("A", "B", "C", "D")))   # the RBRM grader
    model = HeadModel(decoder, HeadConfig("scalar", ("reward",)))               # a reward model
    out = model(input_ids, lengths)       # (B, labels) logits, or (B,) scalars

As transformers' LlamaForSequenceClassification (and TRL's reward models on it): the head is
one bias-free linear map named `score` from the final (normed) hidden state to the outputs,
read at each row's last real token. Rows are right-padded, so causal attention keeps the
padding out of every real token's state, and a padded batch scores as its rows one by one.

The hidden state comes from the decoder's own forward (`last_only`: only the last real
token's logits): a hook takes the input of its lm_head, so the head model runs exactly the
decoder that generation and scoring run, with no second copy of the forward pass.

Checkpoint: a normal checkpoint dir of the decoder (Engine, the evals and `opengpt4 info` load
it as a language model) plus the head in its own files, written in the same atomic rename:
`head.safetensors` (`score.weight`, shape (outputs, n_embd)) and `head.json` (format_version,
kind, labels in output order). `load_head_checkpoint` names the file when either is missing
or does not match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from opengpt4.errors import CheckpointError, ConfigError
from opengpt4.files import read_versioned_json
from opengpt4.model.checkpoint import load_checkpoint, read_safetensors, resolve_model, save_checkpoint
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer

HEAD_WEIGHTS, HEAD_CONFIG = "head.safetensors", "head.json"
HEAD_FORMAT_VERSION = 1
KINDS = ("classifier", "scalar")


@dataclass(frozen=True)
class HeadConfig:
    kind: str  # "classifier": logits over `labels`; "scalar": one number per sequence
    labels: tuple[str, ...]  # the outputs' names, in order (a scalar head has one, e.g. "reward")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"head kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"a head needs distinct output names, got {list(self.labels)}")
        if self.kind == "scalar" and len(self.labels) != 1:
            raise ConfigError(f"a scalar head has one output, got {len(self.labels)}: {list(self.labels)}")
        if self.kind == "classifier" and len(self.labels) < 2:
            raise ConfigError(f"a classifier needs at least two labels, got {list(self.labels)}")

    def to_dict(self) -> dict:
        return {"format_version": HEAD_FORMAT_VERSION, "kind": self.kind, "labels": list(self.labels)}


class HeadModel(nn.Module):
    def __init__(self, decoder: Transformer, head: HeadConfig) -> None:
        super().__init__()
        self.decoder, self.head = decoder, head
        self.score = nn.Linear(decoder.config.n_embd, len(head.labels), bias=False)
        nn.init.normal_(self.score.weight, 0.0, decoder.config.init_std)
        if not decoder.config.tie_embeddings:
            # An untied lm_head is computed (one token per row) but feeds nothing: frozen, it stays out
            # of the optimizer, and DDP does not wait for its gradient.
            decoder.lm_head.requires_grad_(False)

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """input_ids (B, T) right-padded, `lengths` (B,) real tokens per row -> logits (B, labels),
        or (B,) for a scalar head."""
        out = self.score(last_hidden(self.decoder, input_ids, lengths))
        return out[:, 0] if self.head.kind == "scalar" else out


def last_hidden(decoder: Transformer, input_ids: Tensor, lengths: Tensor) -> Tensor:
    """(B, n_embd): each row's final hidden state (after the last norm) at its last real token."""
    taken: list[Tensor] = []
    hook = decoder.lm_head.register_forward_pre_hook(lambda _module, args: taken.append(args[0]))
    try:
        decoder(input_ids, num_valid=lengths.to(input_ids.device), last_only=True)
    finally:
        hook.remove()
    return taken[0][:, 0]


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists -> (input_ids (B, longest), lengths (B,)), padded on the right."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    input_ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return input_ids, lengths


# --- checkpoints -----------------------------------------------------------------------------------
def head_writer(head: HeadConfig, score_weight: Tensor) -> Callable[[Path], None]:
    """What writes the head's two files into a checkpoint's temp dir (for save_checkpoint's write_extra)."""
    weight = score_weight.detach().float().cpu().contiguous()

    def write(tmp: Path) -> None:
        save_file({"score.weight": weight}, str(tmp / HEAD_WEIGHTS), metadata={"format": "pt"})
        (tmp / HEAD_CONFIG).write_text(json.dumps(head.to_dict(), indent=2) + "\n")

    return write


def save_head_checkpoint(path: str | Path, model: HeadModel, tokenizer: Tokenizer) -> Path:
    """The decoder's checkpoint dir with the head's files, written atomically together."""
    return save_checkpoint(path, model.decoder, tokenizer, write_extra=head_writer(model.head, model.score.weight))


def read_head_config(path: Path) -> HeadConfig:
    file = path / HEAD_CONFIG
    hint = f"{path} is a plain decoder checkpoint, not one with a classifier or reward head"
    obj = read_versioned_json(file, HEAD_FORMAT_VERSION, hint, CheckpointError)
    labels = obj.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"{file}: 'labels' must be a list of strings, got {labels!r}")
    try:
        return HeadConfig(obj.get("kind"), tuple(labels))
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from None


def load_head_checkpoint(path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[HeadModel, Tokenizer]:
    """A HeadModel and its tokenizer from a checkpoint dir written by save_head_checkpoint (or a
    training run with a head), in eval mode."""
    path = resolve_model(path)
    head = read_head_config(path)
    file = path / HEAD_WEIGHTS
    state = read_safetensors(file, missing=f"missing (the head's weights; {path / HEAD_CONFIG} is there)")
    decoder, tokenizer = load_checkpoint(path, dtype=dtype)
    expected = (len(head.labels), decoder.config.n_embd)
    if set(state) != {"score.weight"}:
        raise CheckpointError(f"{file}: expected the one tensor score.weight, found {sorted(state)}")
    if tuple(state["score.weight"].shape) != expected:
        raise CheckpointError(f"{file}: score.weight has shape {tuple(state['score.weight'].shape)}, but "
                              f"{len(head.labels)} labels ({HEAD_CONFIG}) and n_embd {expected[1]} imply {expected}")
    model = HeadModel(decoder, head)
    with torch.no_grad():
        model.score.weight.copy_(state["score.weight"].to(dtype))
    return model.to(dtype).eval(), tokenizer
