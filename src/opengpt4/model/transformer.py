"""The decoder: a Llama-compatible transformer with an optional vision tower in front.

Parameter names are exactly Hugging Face `LlamaForCausalLM`'s (`model.layers.0.self_attn.q_proj.weight`,
...), so real checkpoints load by name and ours export by name. The vision tower adds
`vision.*`, `projector.*` and (with a reader) `reader.*`, which a text-only export leaves out.

The KV cache keeps a length per batch row, so rows of different lengths (a right-padded
batch, or requests that join a running batch later) each write and attend at their own
positions: no left padding and no position-id bookkeeping in the callers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opengpt4.config import ModelConfig
from opengpt4.errors import ImageError
from opengpt4.model.multimodal import Projector, scatter_image_features
from opengpt4.model.reader import ImageReader
from opengpt4.model.vision import VisionEncoder

IGNORE_INDEX = -100  # targets with this value contribute no loss (PyTorch and HF convention)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # The fused kernel accumulates in fp32 for bf16/fp16 inputs, as Llama's reference does by
        # upcasting (their squares would lose precision or overflow), in one pass instead of four.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and signed-sin tables (max_len, head_dim) for HF's rotate-half layout.

    HF rotates x by x*cos + cat(-x2, x1)*sin with both halves of cos/sin equal. We keep the
    minus sign in the table instead, cat(-sin, sin), so applying it needs no negation."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.int64).float(), inv_freq)
    return torch.cat([freqs, freqs], dim=-1).cos(), torch.cat([-freqs.sin(), freqs.sin()], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x: (B, T, H, D); cos/signed_sin: (B, T, 1, D) from rope_tables."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * signed_sin


def smear(k: Tensor, gate: Tensor, time_dim: int, same_segment: Tensor | None = None) -> Tensor:
    """Smeared keys: sigmoid(gate) k_t + (1 - sigmoid(gate)) k_(t-1), gate per KV head; k_(-1) = 0.

    k: (B, T, heads, D) when time_dim is 1 (a training forward), (B, heads, S, D) when it is 2 (a
    KV cache's slots, which hold the raw keys: smearing on read keeps the cache's rows, views and
    copies what they are). same_segment: (B, T - 1), whether position t + 1 is in t's document
    (packed rows); a document's first key is not mixed with the one before it."""
    shape = [1, 1, 1, 1]
    shape[3 - time_dim] = gate.numel()
    s = torch.sigmoid(gate).to(k.dtype).view(shape)
    earlier = k.narrow(time_dim, 0, k.shape[time_dim] - 1)
    if same_segment is not None:
        earlier = earlier * same_segment[:, :, None, None].to(k.dtype)
    previous = F.pad(earlier, [0, 0] * (3 - time_dim) + [1, 0])  # one zero slot in front, along time
    return torch.lerp(previous, k, s)  # previous + s (k - previous): one kernel, 6x faster than the sum


class KVCache:
    """Preallocated keys/values (layer, B, kv_heads, max_len, head_dim) and a length per row.

    `lengths[b]` counts the tokens of row b already in the cache; a forward pass writes its
    new tokens at positions lengths[b], lengths[b]+1, ... and then advances each row by the
    number of its tokens that were real (not padding).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, *, device=None, dtype=torch.float32) -> None:
        # One slot more than max_len: a scratch slot where padding tokens past the end write, so
        # they never land on (and race with) a real token in the last slot. Reads stop at max_len.
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len + 1, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len
        # Rows that have held an image: a model whose adapters are for images only (lora.route_to_images)
        # keeps running them with the adapters when they decode, their images long past.
        self.has_image = torch.zeros(batch_size, dtype=torch.bool, device=device)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def view(self, lo: int, hi: int) -> KVCache:
        """Rows lo..hi-1, sharing this cache's storage: a forward through the view writes in place."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, lo:hi], self.v[:, lo:hi]
        view.lengths, view.max_len, view.has_image = self.lengths[lo:hi], self.max_len, self.has_image[lo:hi]
        return view

    def select(self, rows: Tensor | list[int]) -> KVCache:
        """A new cache holding copies of the given rows (repeats allowed: `n` samples share one prefill)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        new = object.__new__(KVCache)
        new.k, new.v = self.k[:, rows].clone(), self.v[:, rows].clone()
        new.lengths, new.max_len, new.has_image = self.lengths[rows].clone(), self.max_len, self.has_image[rows].clone()
        return new


@dataclass
class CacheStep:
    """Where one forward pass writes into the cache and what it may read, computed once for all layers."""

    cache: KVCache
    write_at: Tensor  # (B, T) slot of each new token
    rows: Tensor  # (B, 1) batch index, for advanced indexing
    mask: Tensor | None  # (B, 1, T, span) visibility, or None when every slot below span is visible
    span: int  # slots 0..span-1 are read
    causal: bool  # the cache was empty: a query sees the new tokens up to itself, nothing more
    uniform_at: int | None  # all rows start writing at this slot (equal lengths), else None

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, smear_gate: Tensor | None = None) -> Tensor:
        """Write the new keys and values, attend over the row's cache. q, k, v: (B, T, heads, D);
        returns (B, T, H, D). smear_gate: the layer's smeared-keys gate, applied to the keys read."""
        T = q.shape[1]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        if self.uniform_at is not None:  # every row writes the same slots: a plain slice copy
            k_cache[:, :, self.uniform_at : self.uniform_at + T] = k
            v_cache[:, :, self.uniform_at : self.uniform_at + T] = v
        else:
            k_cache[self.rows, :, self.write_at] = k.transpose(1, 2).to(k_cache.dtype)
            v_cache[self.rows, :, self.write_at] = v.transpose(1, 2).to(v_cache.dtype)
        k_all, v_all = k_cache[:, :, : self.span].to(q.dtype), v_cache[:, :, : self.span].to(q.dtype)
        if smear_gate is not None:  # a row's slot 0 is its first token, so no row smears into another
            k_all = smear(k_all, smear_gate, time_dim=2)
        if T == 1:
            y = decode_attention(q, k_all, v_all, self.mask)
        else:  # an empty cache needs only the plain causal mask, which SDPA computes fastest
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=self.mask, is_causal=self.causal,
                                               enable_gqa=True)
        return y.transpose(1, 2)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention for one new token per row, grouped-query.

    q: (B, H, 1, D); k, v: (B, H_kv, S, D); mask: (B, 1, 1, S) or None. The query heads that
    share a KV head are passed to SDPA as if they were that head's query *positions*: one
    non-causal call per KV head instead of expanding K and V to all heads. On CPU this is
    3-25x faster than SDPA's own GQA path at T=1 (benchmarks/decode.py runs it 30x a token)."""
    B, H, _, D = q.shape
    groups = q.reshape(B, k.shape[1], H // k.shape[1], D)
    return F.scaled_dot_product_attention(groups, k, v, attn_mask=mask).reshape(B, H, 1, D)


class Linear(nn.Linear):
    """nn.Linear without bias that can also run from a oneDNN-prepacked copy of its weight.

    On CPU, oneDNN's blocked weight layout can make the matrix-vector products of decoding
    1.5-2x faster than the plain layout (the weights stream from memory once per token, so
    their layout is the speed) — on some CPUs and dtypes: see `pack_for_cpu_inference`. `pack()` makes the copy; it is used only outside autograd,
    and only while the weight is the very tensor, unmodified, that was packed. Training and
    state dicts never see it.

    An inference-only model can `release_plain()` after packing, so the weights are held once,
    not twice: the plain weight becomes a one-element stand-in of the same shape and dtype, and
    state dicts get it back from the packed copy (`to_dense`)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.packed: Tensor | None = None
        self._packed_from: tuple[int, int] = (0, -1)  # (data_ptr, version) of the packed weight
        self.released = False
        self._register_state_dict_hook(_plain_weight_from_packed)

    def pack(self) -> bool:
        w = self.weight.detach()
        if w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return False
        if w.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        if w.dtype not in (torch.float32, torch.bfloat16):
            return False
        try:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        except RuntimeError:  # an older oneDNN or an unusual CPU: the plain path is always there
            self.packed = None
            return False
        self._packed_from = (w.data_ptr(), w._version)
        return True

    def release_plain(self) -> None:
        """Keep only the packed copy (call after a successful `pack()`); inference only from here on."""
        assert self.packed is not None, "pack() first"
        self.weight.data = self.weight.new_zeros(()).expand(self.weight.shape)
        self._packed_from = (self.weight.data_ptr(), self.weight._version)
        self.released = True

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.released:
            if torch.is_grad_enabled():
                raise RuntimeError("this Linear keeps only its oneDNN-packed weight (inference only): no autograd")
            return torch.ops.mkldnn._linear_pointwise(x.to(w.dtype), self.packed, None, "none", [None], "").to(x.dtype)
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            # Mixed inference precision: low-precision weights, float32 activations around them.
            return self.forward(x.to(w.dtype)).to(x.dtype)
        if (self.packed is not None and not torch.is_grad_enabled() and x.dtype == w.dtype
                and (w.data_ptr(), w._version) == self._packed_from):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [None], "")
        return F.linear(x, w)


def _plain_weight_from_packed(module: Linear, state: dict, prefix: str, _meta) -> None:
    if module.released:
        state[f"{prefix}weight"] = module.packed.to_dense()


def packing_pays(linear: Linear, reps: int = 10) -> bool:
    """Whether `linear`'s packed matrix-vector product beats the plain one here (best of `reps`).
    Leaves the layer unpacked either way."""

    def best_time(f) -> float:
        f()  # warm-up: the kernel's first call picks and caches its implementation
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)

    x = torch.randn(1, 1, linear.in_features, dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.inference_mode():
        plain = best_time(lambda: F.linear(x, linear.weight))
        if not linear.pack():
            return False
        packed = best_time(lambda: linear(x))
    linear.packed = None
    return packed < plain


def fuse_projections(module: nn.Module, fused: str, parts: dict[str, int]) -> None:
    """Let `module.<fused>` (one Linear) stand for several HF projections of the same input.

    Hugging Face checkpoints keep q/k/v and gate/up apart; one matmul instead of three is ~10%
    of a decode step on CPU. These two state-dict hooks translate at the boundary, so
    `state_dict()` and `load_state_dict()` speak exactly LlamaForCausalLM's names.
    `parts` maps each HF name to its number of output rows, in order."""

    def split(_module: nn.Module, state: dict, prefix: str, _meta) -> None:
        pieces = state.pop(f"{prefix}{fused}.weight").split(list(parts.values()))
        for name, piece in zip(parts, pieces, strict=True):
            state[f"{prefix}{name}.weight"] = piece

    def join(_module: nn.Module, state: dict, prefix: str, *_args) -> None:
        names = [f"{prefix}{name}.weight" for name in parts]
        if all(n in state for n in names):
            state[f"{prefix}{fused}.weight"] = torch.cat([state.pop(n) for n in names])

    module.register_state_dict_post_hook(split)
    module.register_load_state_dict_pre_hook(join)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        self.qkv_proj = Linear(config.n_embd, q + 2 * kv)
        self.o_proj = Linear(q, config.n_embd)
        fuse_projections(self, "qkv_proj", {"q_proj": q, "k_proj": kv, "v_proj": kv})
        self.smear_gate = nn.Parameter(torch.zeros(config.n_kv_head)) if config.smear_keys else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, step: CacheStep | None,
                mask: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, H + 2 * Hkv, self.head_dim)
        qk = apply_rope(qkv[:, :, : H + Hkv], cos, sin)  # q and k rotated together
        q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + Hkv :]  # (B, T, heads, D)
        if step is None:
            if self.smear_gate is not None:
                same_segment = None if mask is None else mask[:, 0].diagonal(offset=-1, dim1=-2, dim2=-1)
                k = smear(k, self.smear_gate, time_dim=1, same_segment=same_segment)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, is_causal=mask is None, enable_gqa=True).transpose(1, 2)
        elif self.smear_gate is not None:  # the cache keeps raw keys and smears what it reads
            y = step.attend(layer, q, k, v, self.smear_gate)
        else:  # the cache writes the new keys and values and attends over its own (a CacheStep or a PagedStep)
            y = step.attend(layer, q, k, v)
        return self.o_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.n_embd, 2 * config.mlp_hidden)
        self.down_proj = Linear(config.mlp_hidden, config.n_embd)
        fuse_projections(self, "gate_up_proj", {"gate_proj": config.mlp_hidden, "up_proj": config.mlp_hidden})

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, step: CacheStep | None,
                mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, step, mask)
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
        self.lm_head = Linear(config.n_embd, config.vocab_size)
        if config.vision is not None:
            self.vision = VisionEncoder(config.vision)
            self.projector = Projector(config.vision, config.n_embd)
            if config.vision.reader is not None:
                self.reader = ImageReader(config.vision.reader, config.vision.image_size)
        self.image_adapters: list[nn.Module] = []  # LoRA modules used only by sequences with an image
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
            if name.startswith(("vision.", "projector.", "reader.")):  # their own inits (PyTorch's for the reader)
                continue
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            elif name.endswith("smear_gate"):  # an even mix of each key and the previous one
                nn.init.zeros_(p)
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
            if self.training and torch.is_grad_enabled() and self.config.vision is not None:
                # A text-only batch still runs one blank image through the vision tower, at zero
                # weight: DDP and FSDP need every parameter in every rank's backward, or the
                # ranks' gradient reductions stop matching (LLaVA's trainers do the same).
                side = self.config.vision.image_size
                blank = torch.zeros(1, 3, side, side, device=x.device, dtype=x.dtype)
                x = x + 0.0 * self.projector(self.vision(blank)).sum()
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
        reduction: str = "mean",
        segments: Tensor | None = None,
        where: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, T, V) — or the mean cross-entropy when `targets` is given.

        input_ids: (B, T) token ids. images: (N, 3, S, S) preprocessed pixels for the
        <|image|> placeholders of the whole batch, in row-major order.
        targets: (B, T) next-token ids, IGNORE_INDEX where no loss is wanted.
        cache: a KVCache; the new tokens of row b go at positions cache.lengths[b] onwards.
        num_valid: (B,) how many of each row's T tokens are real (right padding); default T.
        last_only: return only the logits of each row's last real token, (B, 1, V).
        reduction: "mean" over the targets that count, or "sum" (distributed training divides
        by the global count itself, so that ranks and micro-batches add up exactly), or "none":
        one loss per target, in row-major order (DPO adds them up per sequence).
        segments: (B, T) ids of the sequences packed into each row (SFT's conversations): a token
        attends only to earlier tokens of its own segment, so each is computed exactly as if alone
        (rotary embeddings are relative: where it sits in the row changes nothing). No cache.
        where: (B, T) bool: the logits of these positions only, (n, V) in row-major order (RL scores
        a response's tokens, not its prompt's).
        """
        B, T = input_ids.shape
        x = self.embed(input_ids, images)
        if num_valid is None:
            num_valid = torch.full((B,), T, dtype=torch.long, device=input_ids.device)
        mask = None
        if segments is not None:
            if cache is not None:
                raise ValueError("segments are for training rows, not decoding with a KV cache")
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            mask = (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]  # (B, 1, T, T)
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
            step = None
            cos, sin = self.rope_cos[:T][None, :, None], self.rope_sin[:T][None, :, None]
        else:
            step = self._cache_step(cache, num_valid, T)
            rope_at = step.write_at.clamp(max=self.config.max_seq_len - 1)
            cos, sin = self.rope_cos[rope_at][:, :, None], self.rope_sin[rope_at][:, :, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.image_adapters:
            with_image = (input_ids == self.config.image_token_id).any(dim=1)
            if cache is not None:
                cache.has_image |= with_image
                with_image = cache.has_image
            self._route_adapters(with_image[:, None, None])
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, i, step, mask)
        if cache is not None:
            cache.lengths += num_valid
        if where is not None:
            return self.lm_head(self.model.norm(x[where]))
        if targets is not None:
            # Only the positions with a target reach the norm and the head: in chat and visual rows most
            # tokens are prompt, and the head is the widest matmul (SmolLM2: 49k x 576, a fifth of its FLOPs).
            keep = targets != IGNORE_INDEX
            logits = self.lm_head(self.model.norm(x[keep]))
            return F.cross_entropy(logits.float(), targets[keep], reduction=reduction)
        x = self.model.norm(x)
        if last_only:
            x = x[torch.arange(B, device=x.device), num_valid - 1][:, None]
        return self.lm_head(x)

    def forward_flat(self, step, logits_at: list[int], images: Tensor | None = None,
                     with_image: Tensor | None = None) -> Tensor:
        """Logits (len(logits_at), V) for one flat batch of tokens from several sequences, through a
        cache that knows where each token belongs (engine/kv_cache.py's PagedStep: `ids`,
        `positions` and `attend`). Only the positions in `logits_at` reach the norm and the head,
        which costs more per token than a layer on a large vocabulary. with_image: (tokens,) bool,
        whether each token's sequence holds an image (its placeholders may be in earlier steps):
        where the adapters apply on a model with `image_adapters`."""
        input_ids = torch.tensor([step.ids], device=self.rope_cos.device)
        x = self.embed(input_ids, images)
        cos, sin = self.rope_cos[step.positions][None, :, None], self.rope_sin[step.positions][None, :, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.image_adapters:
            if with_image is None:
                raise ValueError("this model's adapters are for sequences with images: say which tokens (with_image)")
            self._route_adapters(with_image[None, :, None])
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, i, step)
        return self.lm_head(self.model.norm(x[0, logits_at]))

    def _route_adapters(self, with_image: Tensor) -> None:
        """Set the image adapters for this forward: on for all, off for all (the base alone, bit for
        bit, and no adapter matmuls), or a boolean gate shaped to multiply the activations' rows."""
        everywhere, anywhere = bool(with_image.all()), bool(with_image.any())
        gate = None if everywhere or not anywhere else with_image
        for m in self.image_adapters:
            m.enabled, m.gate = anywhere, gate

    def _cache_step(self, cache: KVCache, num_valid: Tensor, T: int) -> CacheStep:
        lengths = cache.lengths.tolist()  # one host sync per forward instead of one per layer
        ends = [n + int(v) for n, v in zip(lengths, num_valid.tolist(), strict=True)]
        if max(ends) > min(cache.max_len, self.config.max_seq_len):
            raise ValueError(f"KV cache overflow: a row would reach {max(ends)} tokens, cache holds "
                             f"{cache.max_len}, model context {self.config.max_seq_len}")
        positions = cache.lengths[:, None] + torch.arange(T, device=cache.lengths.device)  # (B, T)
        # Padding tokens past the end of the cache go to the scratch slot (index max_len, never
        # read); padding inside it writes beyond its row's length, rewritten before it is read.
        write_at = positions.clamp(max=cache.max_len)
        span = min(max(lengths) + T, cache.max_len)
        uniform = min(lengths) == max(lengths) and max(lengths) + T <= cache.max_len
        causal = T > 1 and max(lengths) == 0
        mask = None
        if (T > 1 and not causal) or not uniform:  # a query at position p sees slots 0..p of its row
            slots = torch.arange(span, device=positions.device)
            mask = (slots[None, None, :] <= positions[:, :, None])[:, None]
        rows = torch.arange(cache.batch_size, device=positions.device)[:, None]
        return CacheStep(cache, write_at, rows, mask, span, causal, lengths[0] if uniform else None)

    def pack_for_cpu_inference(self, only_if_faster: bool = True, release_plain: bool = False) -> int:
        """Prepack the decoder's weights for oneDNN (see `Linear`); returns how many were packed.
        release_plain: hold each packed weight once (`Linear.release_plain`) — for a model loaded
        only to serve; the head's weight stays when it is the embedding's (the lookup reads it).

        Whether the blocked layout pays depends on the CPU and the dtype: SmolLM2's float32
        decoding ran 1.4x *slower* packed on an Intel Xeon (AMX) while bfloat16 ran 1.2x faster,
        and on AMD Zen 5 both were faster. So by default each weight dtype is timed once, on
        its largest matrix, and packed only where the packed product wins."""
        linears = [m for m in self.model.layers.modules() if isinstance(m, Linear)] + [self.lm_head]
        by_dtype: dict[torch.dtype, list[Linear]] = {}
        for m in linears:
            by_dtype.setdefault(m.weight.dtype, []).append(m)
        packed = 0
        for group in by_dtype.values():
            if only_if_faster and not packing_pays(max(group, key=lambda m: m.weight.numel())):
                continue
            for m in group:
                if m.pack():
                    packed += 1
                    if release_plain and m.weight is not self.model.embed_tokens.weight:
                        m.release_plain()
        return packed

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
