"""LoRA (Hu et al., 2021): low-rank adapters on the decoder's attention and MLP projections.

    W x  becomes  W x + (alpha / r) B A x,   W frozen, A (r x in) random, B (out x r) zero at the start

Ours rather than the `peft` package: peft imports transformers at run time and targets Hugging
Face model classes, finding modules by their HF names (q_proj, gate_proj...), while our decoder
fuses q/k/v and gate/up into one matmul each; and a checkpoint must stay a plain checkpoint that
Engine, the evals and the server load without knowing adapters exist. So the adapters are
merged into the weights when a checkpoint is written (`merge`), and kept apart
(`adapter_tensors`) only to resume training.

A fused projection gets one adapter per Hugging Face projection it stands for (q, k and v; gate
and up), exactly peft's adapters on q_proj, k_proj, v_proj...: A stacks the parts' A matrices
(one matmul), and each part's rows of the output take only its own rank-r slice (B applied as a
block-diagonal matrix).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opengpt4.errors import CheckpointError
from opengpt4.model.transformer import Linear, Transformer


class LoRALinear(Linear):
    """A frozen Linear (the very weight Parameter of the one it replaces) plus rank-r adapters."""

    def __init__(self, base: Linear, parts: list[int], rank: int, alpha: float) -> None:
        with torch.device("meta"):  # the weight is `base`'s: allocate nothing for it
            super().__init__(base.in_features, base.out_features)
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.parts, self.rank, self.scale = parts, rank, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(len(parts) * rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's (and nn.Linear's) init for A

    enabled = True  # adapters_off: the frozen base alone
    gate: Tensor | None = None  # route_to_images: True where a row (or token) takes the adapters

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return super().forward(x)
        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            return self.forward(x.to(self.weight.dtype)).to(x.dtype)
        # The scale goes on the narrow (parts x r) side, and B as one block-diagonal matrix gives each
        # part's rows their own slice in one matmul: on CPU the passes over the wide (tokens x out)
        # activations are the cost (per part matmuls + cat + scale were 1.4-1.7x slower on SmolLM2).
        h = F.linear(x, self.lora_A) * self.scale
        delta = F.linear(h, torch.block_diag(*self.lora_B.split(self.parts)))
        return super().forward(x) + (delta if self.gate is None else delta * self.gate)


def delta_weight(lora_A: Tensor, lora_B: Tensor, parts: list[int], rank: int, scale: float) -> Tensor:
    """The (out, in) update the adapters add to the weight: each part's B_p A_p, stacked."""
    blocks = zip(lora_B.split(parts), lora_A.split(rank), strict=True)
    return scale * torch.cat([b.float() @ a.float() for b, a in blocks])


def targets(model: Transformer) -> dict[str, tuple[nn.Module, str, list[int]]]:
    """The projections LoRA adapts, by module name: (parent, attribute, HF parts' output sizes)."""
    c = model.config
    q, kv = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    out = {}
    for i, block in enumerate(model.model.layers):
        prefix = f"model.layers.{i}"
        attn, mlp = block.self_attn, block.mlp
        out[f"{prefix}.self_attn.qkv_proj"] = (attn, "qkv_proj", [q, kv, kv])
        out[f"{prefix}.self_attn.o_proj"] = (attn, "o_proj", [c.n_embd])
        out[f"{prefix}.mlp.gate_up_proj"] = (mlp, "gate_up_proj", [c.mlp_hidden, c.mlp_hidden])
        out[f"{prefix}.mlp.down_proj"] = (mlp, "down_proj", [c.n_embd])
    return out


def apply_lora(model: Transformer, rank: int, alpha: float) -> Transformer:
    """Freeze every parameter of `model` and add trainable rank-`rank` adapters to its attention and
    MLP projections, in place (A from the torch generator's current state)."""
    model.requires_grad_(False)
    for parent, attribute, parts in targets(model).values():
        setattr(parent, attribute, LoRALinear(getattr(parent, attribute), parts, rank, alpha))
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Run `model` as its frozen base: every adapter of it skipped until the block ends."""
    modules = list(lora_modules(model).values())
    for m in modules:
        m.enabled = False
    try:
        yield
    finally:
        for m in modules:
            m.enabled = True


def route_to_images(model: Transformer) -> Transformer:
    """Make `model`'s adapters (apply_lora + load_adapters) apply only to sequences that hold an image:
    a text-only sequence runs the frozen base, bit for bit. Phi-4-multimodal's design: its vision LoRA
    is switched on by the input's modality, so the language model's text answers cannot drift (ours,
    always on, answered "Me is SmolLM." to "Hello, who are you?"). The model decides per row from the
    <|image|> placeholders it is given (a KV cache remembers a row's), per token on the server's flat
    batches from what the scheduler says (`Transformer.forward`, `forward_flat`)."""
    model.image_adapters = list(lora_modules(model).values())
    if not model.image_adapters:
        raise CheckpointError("route_to_images: the model has no LoRA adapters to route")
    return model


@torch.no_grad()
def fold(model: Transformer) -> Transformer:
    """Fold each adapter into its weight, in place: every LoRALinear a plain Linear again, all of the
    model trainable (what a fine-tuning run started from an adapted checkpoint expects)."""
    for parent, attribute, _ in targets(model).values():
        m = getattr(parent, attribute)
        if isinstance(m, LoRALinear):
            with torch.device("meta"):
                plain = Linear(m.in_features, m.out_features)
            w = m.weight
            plain.weight = nn.Parameter((w.float() + delta_weight(m.lora_A, m.lora_B, m.parts, m.rank, m.scale)).to(w.dtype))
            setattr(parent, attribute, plain)
    model.image_adapters = []
    return model.requires_grad_(True)


def merge(model: nn.Module, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """`params` (the model's parameters by name, whole: gathered if sharded) with each adapter folded
    into its weight and the adapter tensors left out: the weights of a plain Transformer."""
    merged = dict(params)
    for name, m in lora_modules(model).items():
        a, b = merged.pop(f"{name}.lora_A"), merged.pop(f"{name}.lora_B")
        w = merged[f"{name}.weight"]
        merged[f"{name}.weight"] = (w.float() + delta_weight(a, b, m.parts, m.rank, m.scale)).to(w.dtype)
    return merged


def adapter_tensors(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapters among `params` (by name), for a resume."""
    return {k: v for k, v in params.items() if k.endswith((".lora_A", ".lora_B"))}


@torch.no_grad()
def load_adapters(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Copy saved adapters into `model`'s (made by apply_lora with the same rank); names and shapes checked."""
    own = {k: p for k, p in model.named_parameters() if k.endswith((".lora_A", ".lora_B"))}
    if set(own) != set(tensors):
        missing = sorted(set(own) - set(tensors)) or sorted(set(tensors) - set(own))
        raise CheckpointError(f"{source}: adapters do not match the model's (first differing: {missing[0]})")
    for name, p in own.items():
        if tensors[name].shape != p.shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, the model's "
                                  f"{tuple(p.shape)} (another --lora rank?)")
        p.copy_(tensors[name])
