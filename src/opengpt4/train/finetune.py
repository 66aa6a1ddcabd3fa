"""The weights a fine-tuning objective (SFT, DPO, RLHF) trains: the whole checkpoint, or LoRA
adapters on it frozen (`lora_rank` > 0, model/lora.py).

Full fine-tuning resumes from the run's own checkpoint. LoRA always loads the base checkpoint,
whose sha256 the run records so that a resume starts from the very same weights, adds the
adapters (A drawn after seeding with the run's seed), and on resume loads them from the run's
ADAPTER_FILE. A snapshot is a plain checkpoint either way (the adapters merged into the weights:
Engine, the evals and the server never see them), plus the adapters apart for a resume.

With LoRA the frozen base is also the reference DPO and RLHF hold the policy to: `reference`
runs the policy with its adapters off instead of keeping a second copy of the weights."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from opengpt4.config import FineTuneConfig, ModelConfig
from opengpt4.errors import CheckpointError
from opengpt4.model import lora
from opengpt4.model.checkpoint import WEIGHTS_FILE, load_checkpoint, resolve_model
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.loop import Snapshot, gather_parameters, plain_model

ADAPTER_FILE = "adapter.safetensors"  # LoRA's A and B, unmerged: what a resume continues from


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def freeze_image_path(decoder: nn.Module) -> None:
    """Text-only training: the vision tower and projector stay as they are."""
    for tower in ("vision", "projector"):
        if hasattr(decoder, tower):
            getattr(decoder, tower).requires_grad_(False)


@dataclass
class Trainable:
    decoder: Transformer  # LoRA: with its adapters, everything else frozen
    tokenizer: Tokenizer
    base: Path  # the checkpoint it started from
    base_sha256: str


def load_trainable(model: str | Path, out: Path, resumed: dict | None, cfg: FineTuneConfig, flag: str) -> Trainable:
    """The decoder a run trains. `resumed`: the objective's part of the run's trainer_state.json
    (its base_sha256 is checked), or None; `flag`: the option that named the model, for the error."""
    base = resolve_model(model)
    digest = sha256(base / WEIGHTS_FILE)
    if resumed is not None and resumed.get("base_sha256") not in (None, digest):
        raise CheckpointError(f"{base} is not the model {out} started from ({resumed['base']}): resume with the "
                              f"same {flag}")
    decoder, tokenizer = load_checkpoint(out if resumed is not None and not cfg.lora_rank else base)
    decoder.train()
    freeze_image_path(decoder)
    if cfg.lora_rank:
        torch.manual_seed(cfg.seed)  # the adapters' A
        lora.apply_lora(decoder, cfg.lora_rank, cfg.lora_alpha)
        if resumed is not None:
            lora.load_adapters(decoder, load_file(str(out / ADAPTER_FILE)), str(out / ADAPTER_FILE))
    return Trainable(decoder, tokenizer, base, digest)


def describe_mode(decoder: nn.Module) -> str:
    """"full fine-tuning: 4.97M trained" or "LoRA rank 16 (alpha 16) on 120 projections: 2.44M trained"."""
    trained = sum(p.numel() for p in decoder.parameters() if p.requires_grad)
    adapters = list(lora.lora_modules(decoder).values())
    if not adapters:
        return f"full fine-tuning: {trained / 1e6:.2f}M trained"
    rank = adapters[0].rank
    return f"LoRA rank {rank} (alpha {adapters[0].scale * rank:g}) on {len(adapters)} projections: {trained / 1e6:.2f}M trained"


def snapshot(model: nn.Module, config: ModelConfig, params: dict[str, torch.Tensor] | None = None,
             files: dict[str, dict[str, torch.Tensor]] | None = None,
             write_extra: Callable[[Path], None] | None = None) -> Snapshot:
    """A plain checkpoint of the decoder `model` (its parameters `params` by name, whole; default:
    gathered from it, collective under FSDP) with any adapters merged in, and then the adapters
    apart beside the objective's own `files`."""
    params = gather_parameters(model) if params is None else params
    files = dict(files or {})
    if lora.lora_modules(model):
        files[ADAPTER_FILE] = lora.adapter_tensors(params)
        params = lora.merge(distributed.unwrap(model), params)
    return Snapshot(plain_model(model, config, params), files, write_extra)


@contextmanager
def reference(policy: nn.Module, frozen: nn.Module | None) -> Iterator[nn.Module]:
    """The model the policy is held to: `frozen` (a copy of the base, full fine-tuning), or the policy
    itself with its adapters off (LoRA: the adapters are all that moved)."""
    if frozen is not None:
        yield frozen.to(next(policy.parameters()).device)  # a no-op once there: the Trainer moves only the policy
        return
    with lora.adapters_off(policy):
        yield policy
