"""Inference precision: which parts of the model compute in which floating-point format.

Three modes, measured by `benchmarks/precision.py` (README, "Inference precision"):

- `float32`: everything in float32. The reference: greedy text, scores and eval results are
  the same on every CPU family up to float32 rounding (~1e-6), far below any logit gap
  that decides a token.
- `bf16-weights`: the decoder's matmul weights in bfloat16 (half the bytes to stream per
  token, AMX/AVX512-BF16 kernels), while the residual stream, norms, rotary embeddings,
  attention (softmax and KV cache), the embedding and the logits stay float32. Only the
  matmul inputs are rounded, so the errors do not pile up along the residual stream.
- `bfloat16`: every weight and activation in bfloat16. Fastest and smallest, but logits near
  25 are rounded to steps of 0.125: SmolLM2's two best first tokens for "What is the capital
  of France?" (25.33 and 25.24 in float32) tie, and which one wins depends on the CPU's
  bfloat16 kernels (Intel AMX and AMD Zen 5 round differently).

`auto` is float32: the default must behave the same on every machine (a README example,
an eval score, a test), and the faster modes are one flag away for those who measured
that their use tolerates them.
"""

from __future__ import annotations

import torch

from opengpt4.config import PRECISIONS
from opengpt4.errors import ConfigError
from opengpt4.model.transformer import Linear, Transformer

DEFAULT_PRECISION = "float32"


def resolve_precision(name: str = "auto") -> str:
    """A precision name as given on the command line (`auto` or one of PRECISIONS) -> a mode."""
    if name == "auto":
        return DEFAULT_PRECISION
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}: choose auto, {', '.join(PRECISIONS)}")
    return name


def autocast_dtype(name: str, device: torch.device) -> torch.dtype:
    """The training autocast dtype for a config's `dtype` (auto, bfloat16, float32) on `device`.
    auto is bfloat16 only where the hardware multiplies it natively: oneDNN's bf16 path needs AVX-512
    or AMX, and without it a CPU's bfloat16 matmul runs at about 1% of its float32 speed."""
    if name == "auto":
        native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                  else device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def load_dtype(precision: str) -> torch.dtype:
    """The dtype a checkpoint is loaded in before `apply_precision` (the activations' dtype)."""
    return torch.bfloat16 if resolve_precision(precision) == "bfloat16" else torch.float32


def apply_precision(model: Transformer, precision: str) -> Transformer:
    """Cast a float32-loaded decoder for `precision` in place (see the module docstring).

    For `bf16-weights`, only the decoder blocks' projections change dtype: their `Linear`
    casts its float32 input to the weight's dtype and the product back (model/transformer.py).
    The LM head stays float32 because, tied or not, its output is the logits."""
    precision = resolve_precision(precision)
    if precision == "bf16-weights":
        for module in model.model.layers.modules():
            if isinstance(module, Linear):
                module.weight.data = module.weight.data.to(torch.bfloat16)
    elif precision == "bfloat16":
        model.to(torch.bfloat16)
    return model


def precision_of(model: Transformer) -> str:
    """Which mode a model's weights are in, read from the weights themselves."""
    embedding = model.model.embed_tokens.weight.dtype
    if embedding == torch.bfloat16:
        return "bfloat16"
    if embedding != torch.float32:
        return str(embedding).removeprefix("torch.")
    blocks = {p.dtype for p in model.model.layers.parameters()}
    return "bf16-weights" if torch.bfloat16 in blocks else "float32"
