"""Joining vision and text: the projector, and scattering image features into the sequence.

The tokenizer expands each <|image|> in a prompt into exactly `tokens_per_image`
placeholder ids, so a sequence's length is known before the model runs. The decoder
embeds the ids as usual, then `scatter_image_features` overwrites the placeholder
positions with projected image features.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from opengpt4.config import VisionConfig
from opengpt4.errors import ImageError


def pixel_shuffle(features: torch.Tensor, grid: int, s: int) -> torch.Tensor:
    """(N, grid*grid, C) row-major patches -> (N, (grid/s)**2, s*s*C).

    Each s x s block of neighbouring patches becomes one vector: the block's patches in
    row-major order, each C wide. Output tokens are row-major over the (grid/s) x (grid/s) grid.
    """
    n, _, c = features.shape
    g = grid // s
    x = features.view(n, g, s, g, s, c)  # (image, block row, row in block, block col, col in block, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, g * g, s * s * c)


class Projector(nn.Module):
    """Patch features (N, grid*grid, width) -> image tokens (N, tokens_per_image, n_embd)."""

    def __init__(self, cfg: VisionConfig, n_embd: int) -> None:
        super().__init__()
        self.cfg = cfg
        # Pixel shuffle first, as in Idefics3/SmolVLM: s x s neighbouring patches merge into
        # one token, so an image costs s*s times fewer tokens and sequences stay short, while
        # no information is dropped (the merged vector is s*s times wider).
        s = cfg.pixel_shuffle
        self.fc1 = nn.Linear(cfg.width * s * s, n_embd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(n_embd, n_embd)
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, mean=0.0, std=std)
            nn.init.zeros_(fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(features, self.cfg.grid_size, self.cfg.pixel_shuffle)
        return self.fc2(self.act(self.fc1(x)))


def scatter_image_features(
    embeds: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """Replace the placeholder positions of `embeds` (B, T, D) with image features (N, K, D).

    Placeholders (input_ids == image_token_id) are filled in row-major order (batch row 0
    first, left to right) with image 0's K vectors, then image 1's, and so on. Returns a new
    tensor; gradients flow into both `features` and the non-image positions of `embeds`.
    """
    if input_ids.shape != embeds.shape[:2]:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} do not match embeds {tuple(embeds.shape)}")
    if features.ndim != 3:
        raise ImageError(f"image features must have shape (images, tokens, dim), got {tuple(features.shape)}")
    n_images, k, d = features.shape
    if d != embeds.shape[-1]:
        raise ImageError(f"image features are {d} wide but the token embeddings are {embeds.shape[-1]} wide")
    mask = input_ids == image_token_id
    n_slots = int(mask.sum())
    if n_slots != n_images * k:
        raise ImageError(
            f"found {n_slots} <|image|> placeholder tokens (id {image_token_id}) but {n_images} images x "
            f"{k} tokens per image = {n_images * k} image features; each image needs exactly {k} placeholders"
        )
    if n_slots == 0:
        return embeds
    out = embeds.clone()  # index_put on a copy: `embeds` itself may be needed by autograd
    out[mask] = features.reshape(n_slots, d).to(out.dtype)
    return out


__all__ = ["Projector", "pixel_shuffle", "scatter_image_features"]
