"""Joining vision and text: the projector, and scattering image features into the sequence.

The tokenizer expands each <|image|> in a prompt into exactly `tokens_per_image`
placeholder ids, so a sequence's length is known before the model runs. The decoder
embeds the ids as usual, then `scatter_image_features` overwrites the placeholder
positions with projected image features.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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


QUESTION_WINDOW = 64  # tokens after an image that can condition its query tokens (the question in its turn)


def image_questions(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, per_image: int,
                    turn_end_id: int | None, segments: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D): for each image of the batch (placeholders in row-major order, `per_image` each), the mean
    embedding of the text that follows it in its turn: up to QUESTION_WINDOW tokens, stopping at
    `turn_end_id` (<|im_end|>) and at the end of its sequence (`segments`, (B, T), when rows hold several),
    other images' placeholders left out. Zeros for an image with none.
    Only what follows: a packed training row holds the answer after the turn's end, and a server's
    prefill chunk that holds an image holds the rest of its turn too (scheduler._plan_chunks)."""
    rows, cols = (input_ids == image_token_id).nonzero(as_tuple=True)  # row-major, as the features are
    rows, cols = rows[::per_image], cols[::per_image] + per_image  # where the text after each image begins
    t = input_ids.shape[1]
    at = cols[:, None] + torch.arange(QUESTION_WINDOW, device=input_ids.device)  # (N, W)
    inside = at < t
    ids = input_ids[rows[:, None], at.clamp(max=t - 1)]
    ended = (ids == turn_end_id).cumsum(1) > 0 if turn_end_id is not None else torch.zeros_like(inside)
    keep = inside & (ids != image_token_id)
    if segments is not None:
        same = segments[rows[:, None], at.clamp(max=t - 1)] == segments[rows, cols - per_image][:, None]
        ended |= (~same).cumsum(1) > 0
    keep = (keep & ~ended).to(embeds.dtype)[..., None]
    text = embeds[rows[:, None], at.clamp(max=t - 1)].detach()  # a condition: the LM's embeddings stay as they are
    return (text * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class QueryResampler(nn.Module):
    """Patch features (N, P, width) and a question (N, n_embd) -> `query_tokens` image tokens (N, Q, n_embd).

    Learned queries, shifted by the projected question, attend over all the image's patches (one
    cross-attention, as InstructBLIP's instruction-aware Q-Former in one layer): each token can carry the
    part of the image the question names, at the resolution of a patch rather than a merged token."""

    def __init__(self, cfg: VisionConfig, n_embd: int) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.queries = nn.Parameter(torch.empty(cfg.query_tokens, cfg.width))
        self.question = nn.Linear(n_embd, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.kv = nn.Linear(cfg.width, 2 * cfg.width)
        self.fc1 = nn.Linear(cfg.width, n_embd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(n_embd, n_embd)

    def init_weights(self, std: float = 0.02) -> None:
        nn.init.normal_(self.queries, mean=0.0, std=std)
        for fc in (self.question, self.kv, self.fc1, self.fc2):
            nn.init.normal_(fc.weight, mean=0.0, std=std)
            nn.init.zeros_(fc.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, features: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        n, p, c = features.shape
        h = self.n_head
        q = self.norm(self.queries[None] + self.question(question.to(features.dtype))[:, None])  # (N, Q, C)
        k, v = self.kv(features).chunk(2, dim=-1)
        q, k, v = (x.reshape(n, -1, h, c // h).transpose(1, 2) for x in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, c)
        return self.fc2(self.act(self.fc1(y)))


class Projector(nn.Module):
    """Patch features (N, grid*grid, width) -> image tokens (N, tokens_per_image, n_embd): the
    pixel-shuffled patches, then `query_tokens` question-conditioned ones (QueryResampler)."""

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
        self.query = QueryResampler(cfg, n_embd) if cfg.query_tokens else None
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, mean=0.0, std=std)
            nn.init.zeros_(fc.bias)
        if self.query is not None:
            self.query.init_weights(std)

    def forward(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        """`question`: (N, n_embd), what conditions the query tokens (image_questions); zeros when not given."""
        x = pixel_shuffle(features, self.cfg.grid_size, self.cfg.pixel_shuffle)
        tokens = self.fc2(self.act(self.fc1(x)))
        if self.query is None:
            return tokens
        if question is None:
            question = features.new_zeros(len(features), self.fc2.out_features)
        return torch.cat([tokens, self.query(features, question)], dim=1)


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


__all__ = ["Projector", "QueryResampler", "image_questions", "pixel_shuffle", "scatter_image_features"]
