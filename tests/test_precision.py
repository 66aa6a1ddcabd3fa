"""Inference precision modes: what each keeps in float32, and how close each stays to float32.

The figures behind the thresholds are measured by benchmarks/precision.py (README,
"Inference precision"); these tests guard them on whatever CPU runs the suite.
"""

import pytest
import torch

from opengpt4.engine.generate import Engine
from opengpt4.errors import ConfigError
from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.model.precision import apply_precision, precision_of, resolve_precision
from opengpt4.model.transformer import Linear
from tests.helpers import tiny_decoder


def test_auto_is_float32_on_every_cpu_and_unknown_modes_are_refused():
    assert resolve_precision("auto") == "float32"
    with pytest.raises(ConfigError, match="float16"):
        resolve_precision("float16")


def test_bf16_weights_keeps_activations_cache_and_logits_in_float32(tiny_tokenizer):
    model = tiny_decoder(0)
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        reference = model(ids)
        apply_precision(model, "bf16-weights")
        assert precision_of(model) == "bf16-weights"
        linears = [m for m in model.model.layers.modules() if isinstance(m, Linear)]
        assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
        assert model.lm_head.weight.dtype == model.model.embed_tokens.weight.dtype == torch.float32
        plain = model(ids)
        assert plain.dtype == torch.float32
        # Only the matmul inputs are rounded (8 bits of mantissa): a small, bounded error.
        assert (plain - reference).abs().max() <= 0.02 * reference.abs().max()
        if model.pack_for_cpu_inference(only_if_faster=False):
            assert (model(ids) - plain).abs().max() <= 1e-3 * plain.abs().max()
    engine = Engine(model, tiny_tokenizer)
    assert engine.dtype == torch.float32  # so the KV cache and attention run in float32


def test_bfloat16_mode_is_read_back_from_the_weights():
    model = apply_precision(tiny_decoder(0), "bfloat16")
    assert precision_of(model) == "bfloat16" and model.lm_head.weight.dtype == torch.bfloat16


def held_out_ids(tokenizer, n: int) -> list[int]:
    """Real Python source held out of our training data (the stdlib's val modules)."""
    from opengpt4.data.code import stdlib_sources

    sources, _ = stdlib_sources("val")
    return tokenizer.encode("\n\n".join(text for _, text in sources)[: n * 6])[:n]


def top1(model, ids: list[int], chunk: int = 512) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(torch.tensor([ids[i : i + chunk]]))[0].float().argmax(-1)
                          for i in range(0, len(ids), chunk)])


def test_default_precision_agrees_with_transformers_float32_on_smollm2(smollm2, tmp_path):
    """The default engine (packed weights, auto precision) against transformers' Llama in
    float32 as the independent reference: next-token argmax over 2,048 held-out tokens.
    float32 kernels differ by ~1e-5 in the logits between libraries and CPUs, so only a near
    tie can flip; 99.8% leaves room for two or three of those and fails at once for any
    reduced-precision default (bfloat16 agrees on ~95%: benchmarks/precision.py)."""
    transformers = pytest.importorskip("transformers")
    from opengpt4.model.convert import export_hf

    engine = Engine.load(str(smollm2))
    assert engine.precision == "float32"
    ids = held_out_ids(engine.tokenizer, 2048)
    hf = transformers.LlamaForCausalLM.from_pretrained(export_hf(smollm2, tmp_path / "hf"), dtype=torch.float32).eval()
    ours, theirs = top1(engine.model, ids), top1(lambda x: hf(x).logits, ids)
    agreement = float((ours == theirs).float().mean())
    assert agreement >= 0.998, agreement


def test_bf16_weights_stays_close_to_float32_on_smollm2(smollm2):
    """The opt-in fast mode: next-token argmax over 1,024 held-out tokens against float32.
    Measured ~99% (README); the bar leaves room for other CPUs' bfloat16 kernels (and is 5
    standard errors below 99% at this size). 1,024 tokens, not 2,048: without native bfloat16
    (AVX2 only) the mode's matmuls run at ~1% of float32's speed."""
    model, tokenizer = load_checkpoint(smollm2)
    ids = held_out_ids(tokenizer, 1024)
    reference = top1(model, ids)
    fast = top1(apply_precision(model, "bf16-weights"), ids)
    assert float((fast == reference).float().mean()) >= 0.97
