"""The MFU numerator (ModelConfig.step_flops) against torch's own FLOP count of the same step."""

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from opengpt4.config import get_preset
from opengpt4.model.transformer import IGNORE_INDEX, Transformer


def counted_flops(step) -> float:
    # The math backend runs attention as matmuls the counter sees (the fused CPU kernel it does not count).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


@pytest.mark.parametrize("mode", ["train", "frozen", "forward"])
def test_step_flops_counts_the_head_where_it_runs_and_frozen_weights_at_4(mode):
    config = dataclasses.replace(get_preset("test"), vision=None, vocab_size=4096)  # the head, as in real models, the widest matmul
    torch.manual_seed(0)
    model = Transformer(config)
    model.init_weights()
    x = torch.randint(5, config.vocab_size, (3, 97))
    targets = x[:, 1:].clone()
    targets[:, :70] = IGNORE_INDEX  # a chat row: the loss on the last 26 tokens only, as SFT's assistant mask
    head_positions = int((targets != IGNORE_INDEX).sum())
    if mode == "frozen":  # LoRA's base: gradients flow through every layer, no matrix gets one
        for name, p in model.named_parameters():  # (the embedding is the tied head: frozen too)
            p.requires_grad_(name == "model.layers.0.input_layernorm.weight")

    def step():
        if mode == "forward":
            with torch.no_grad():
                model(x[:, :-1], targets=targets, reduction="sum")
        else:
            model(x[:, :-1], targets=targets, reduction="sum").backward()

    per_weight = {"train": 6.0, "frozen": 4.0, "forward": 2.0}[mode]
    ours = config.step_flops(targets.numel(), targets.shape[1], head_positions, per_weight)
    counted = counted_flops(step)
    assert abs(ours - counted) / counted < 0.05, (ours, counted)
    # Counting the head at every position (the old numerator) would be far off on such a row.
    everywhere = config.step_flops(targets.numel(), targets.shape[1], targets.numel(), per_weight)
    assert (everywhere - counted) / counted > 0.2


def test_step_flops_with_the_head_everywhere_is_flops_per_token():
    config = get_preset("d4")
    assert config.step_flops(4096, 256, 4096) == pytest.approx(config.flops_per_token(256) * 4096)
