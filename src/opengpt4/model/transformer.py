"""The decoder: a Llama-compatible transformer with an optional vision tower in front.

Parameter names are exactly Hugging Face `LlamaForCausalLM`'s (`model.layers.0.self_attn.q_proj.weight`,
...), so real checkpoints load by name and ours export by name. The vision tower adds
`vision.*` and `projector.*`, which a text-only export leaves out.

The KV cache keeps a length per batch row, so rows of different lengths (a right-padded
batch, or requests that join a running batch later) each write and attend at their own
positions: no left padding and no position-id bookkeeping in the callers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opengpt4.config import ModelConfig
from opengpt4.errors import ImageError
from opengpt4.model.multimodal import Projector, scatter_image_features
from opengpt4.model.vision import VisionEncoder

IGNORE_INDEX = -100  # targets with this value contribute no loss (PyTorch and HF convention)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 as Llama does: bf16 squares lose too much precision.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight.type_as(x)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables (max_len, head_dim) in HF's rotate-half layout (the two halves repeat)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.int64).float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, D); cos/sin: (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Preallocated keys/values (layer, B, kv_heads, max_len, head_dim) and a length per row.

    `lengths[b]` counts the tokens of row b already in the cache; a forward pass writes its
    new tokens at positions lengths[b], lengths[b]+1, ... and then advances each row by the
    number of its tokens that were real (not padding).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, *, device=None, dtype=torch.float32) -> None:
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def select(self, rows: Tensor | list[int]) -> KVCache:
        """A new cache holding copies of the given rows (repeats allowed: `n` samples share one prefill)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        new = object.__new__(KVCache)
        new.k, new.v = self.k[:, rows].clone(), self.v[:, rows].clone()
        new.lengths, new.max_len = self.lengths[rows].clone(), self.max_len
        return new


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, cache: KVCache | None,
                positions: Tensor | None, mask: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k_cache, v_cache = cache.k[layer], cache.v[layer]
            # Padding tokens past the end of the cache are clamped onto its last slot: a slot
            # beyond a row's length is always rewritten before that row attends to it.
            write_at = positions.clamp(max=cache.max_len - 1)
            rows = torch.arange(B, device=x.device)[:, None]
            k_cache[rows, :, write_at] = k.transpose(1, 2).to(k_cache.dtype)
            v_cache[rows, :, write_at] = v.transpose(1, 2).to(v_cache.dtype)
            span = mask.shape[-1] if mask is not None else int(positions.max()) + 1
            k_all, v_all = k_cache[:, :, :span].to(q.dtype), v_cache[:, :, :span].to(q.dtype)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, cache: KVCache | None,
                positions: Tensor | None, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, positions, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
            layers=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            norm=RMSNorm(config.n_embd, config.norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.vision is not None:
            self.vision = VisionEncoder(config.vision)
            self.projector = Projector(config.vision, config.n_embd)
        self.tie_and_materialize()

    def tie_and_materialize(self) -> None:
        """Tie lm_head to the embedding and (re)compute the RoPE tables on the weights' device.

        Called again after loading weights into a model built on the meta device."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        device = self.model.embed_tokens.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    # --- initialization ------------------------------------------------------------------
    def init_weights(self) -> None:
        """GPT-2 style: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.startswith(("vision.", "projector.")):
                continue
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)
        if self.config.vision is not None:
            self.vision.init_weights()
            self.projector.init_weights()

    # --- forward -------------------------------------------------------------------------
    def embed(self, input_ids: Tensor, images: Tensor | None) -> Tensor:
        x = self.model.embed_tokens(input_ids)
        image_id = self.config.image_token_id
        has_placeholders = image_id is not None and bool((input_ids == image_id).any())
        if images is None or len(images) == 0:
            if has_placeholders:
                n = int((input_ids == image_id).sum())
                raise ImageError(f"found {n} <|image|> placeholder tokens but no images were given")
            return x
        if self.config.vision is None or image_id is None:
            raise ImageError("this model has no vision encoder: it does not accept images")
        features = self.projector(self.vision(images.to(x.device)))
        return scatter_image_features(x, input_ids, features, image_id)

    def forward(
        self,
        input_ids: Tensor,
        images: Tensor | None = None,
        *,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
        num_valid: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits (B, T, V) — or the mean cross-entropy when `targets` is given.

        input_ids: (B, T) token ids. images: (N, 3, S, S) preprocessed pixels for the
        <|image|> placeholders of the whole batch, in row-major order.
        targets: (B, T) next-token ids, IGNORE_INDEX where no loss is wanted.
        cache: a KVCache; the new tokens of row b go at positions cache.lengths[b] onwards.
        num_valid: (B,) how many of each row's T tokens are real (right padding); default T.
        last_only: return only the logits of each row's last real token, (B, 1, V).
        """
        B, T = input_ids.shape
        x = self.embed(input_ids, images)
        steps = torch.arange(T, device=input_ids.device)
        if num_valid is None:
            num_valid = torch.full((B,), T, dtype=torch.long, device=input_ids.device)
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
            positions, mask = None, None
            cos, sin = self.rope_cos[:T][None, None], self.rope_sin[:T][None, None]
        else:
            positions = cache.lengths[:, None] + steps  # (B, T)
            if int((cache.lengths + num_valid).max()) > min(cache.max_len, self.config.max_seq_len):
                raise ValueError(
                    f"KV cache overflow: a row would reach {int((cache.lengths + num_valid).max())} tokens, "
                    f"cache holds {cache.max_len}, model context {self.config.max_seq_len}"
                )
            mask = self._cache_mask(cache, positions, T)
            rope_at = positions.clamp(max=self.config.max_seq_len - 1)
            cos, sin = self.rope_cos[rope_at][:, None], self.rope_sin[rope_at][:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, i, cache, positions, mask)
        if cache is not None:
            cache.lengths += num_valid
        x = self.model.norm(x)
        if last_only:
            x = x[torch.arange(B, device=x.device), num_valid - 1][:, None]
        logits = self.lm_head(x)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    @staticmethod
    def _cache_mask(cache: KVCache, positions: Tensor, T: int) -> Tensor | None:
        """Boolean (B, 1, T, S) mask: a query at position p sees cache slots 0..p of its row."""
        span = int(positions.max()) + 1
        if T == 1 and bool((cache.lengths == cache.lengths[0]).all()):
            return None  # one step of equal-length rows: every slot below `span` is visible
        slots = torch.arange(min(span, cache.max_len), device=positions.device)
        return (slots[None, None, :] <= positions[:, :, None])[:, None]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
