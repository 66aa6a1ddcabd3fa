"""AdamW with decoupled weight decay, the learning-rate schedule, and optimizer state on disk.

Weight decay applies to matrices only: norms' gains and embeddings are left alone (decaying
an embedding row that is rarely used pulls it to zero between its uses). The schedule is a
function of progress in [0, 1] so that a step budget and a time budget share it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from opengpt4.config import TrainConfig
from opengpt4.errors import CheckpointError
from opengpt4.train.distributed import full_tensor, shard_like

OPTIMIZER_FILE = "optimizer.safetensors"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over `model`'s parameters; returns it and the parameter names in optimizer order.

    Groups: (decayed matrices | the rest) x (decoder | vision tower), each with an `lr_scale`
    that the training loop multiplies the scheduled learning rate by."""
    groups: dict[tuple[bool, bool], list[tuple[str, torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.")
        is_matrix = p.dim() >= 2 and "embed_tokens" not in name and not name.startswith("vision.pos_")
        is_vision = name.startswith(("vision.", "projector."))
        groups.setdefault((is_matrix, is_vision), []).append((name, p))
    param_groups, names = [], []
    for (is_matrix, is_vision), members in sorted(groups.items()):
        param_groups.append({"params": [p for _, p in members], "weight_decay": cfg.weight_decay if is_matrix else 0.0,
                             "lr_scale": cfg.vision_lr_scale if is_vision else 1.0})
        names += [n for n, _ in members]
    # foreach: one fused kernel per group instead of one per tensor (fused=True is CUDA/MPS-only for AdamW here)
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, foreach=True)
    return optimizer, names


def lr_at(cfg: TrainConfig, step: int, progress: float, warmup_steps: int | None = None) -> float:
    """Learning rate at `step` (0-based) when a fraction `progress` of the run is done; `warmup_steps`
    replaces cfg.warmup_steps (the trainer's, from cfg.warmup_fraction of its budget)."""
    warmup = cfg.warmup_steps if warmup_steps is None else warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    floor = cfg.lr * cfg.min_lr_ratio
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "cosine":
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    start = 1.0 - cfg.decay_fraction  # wsd: flat, then a linear decay over the last part
    if progress <= start:
        return cfg.lr
    return cfg.lr - (cfg.lr - floor) * (progress - start) / cfg.decay_fraction


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    """Optimizer state by parameter name, whole (gathered if sharded: collective under FSDP)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors = {}
    for name, p in zip(names, params, strict=True):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"{name}.{key}"] = full_tensor(value).reshape(-1) if key == "step" else full_tensor(value)
    return tensors


def save_optimizer(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def load_optimizer(optimizer: torch.optim.Optimizer, names: list[str], path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read optimizer state ({e})") from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, p in zip(names, params, strict=True):
        keys = {k[len(name) + 1 :] for k in tensors if k.startswith(name + ".") and "." not in k[len(name) + 1 :]}
        if not keys:
            raise CheckpointError(f"{path}: no optimizer state for parameter {name}")
        state = {}
        for key in keys:
            value = tensors[f"{name}.{key}"]
            if key == "step":
                state[key] = value.reshape(())
            elif tuple(value.shape) != tuple(p.shape):
                raise CheckpointError(f"{path}: {name}.{key} has shape {tuple(value.shape)}, parameter {tuple(p.shape)}")
            else:
                state[key] = shard_like(value, p)
        optimizer.state[p] = state
