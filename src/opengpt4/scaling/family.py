"""The scaling family: byte-level, text-only decoders from ~20k to ~5M parameters.

One vocabulary for every size: the 256 bytes after our special tokens (BOS, ChatML, pad), so
the loss is in bits per byte with no tokenizer in between, and the embedding is 320 x width
(261 rounded up to 64), small beside the blocks from the second size on. Heads are 32 wide
(a plan may say 16: more heads at the same width and FLOPs), the MLP is SwiGLU at 8/3 x width rounded to 32, as in the d-family.

FLOPs are counted per token from the shapes (every matmul, the LM head included, and the
two attention matmuls over the whole sequence, as PaLM's appendix B and Chinchilla count
them), x3 for training (the backward pass is two matmuls per forward one).
`tests/test_scaling.py` checks the count against torch's FlopCounterMode.

Learning rate: lr = LR_AT_BASE x (BASE_WIDTH / width) ** LR_WIDTH_EXPONENT. Under Adam the
update of a hidden matrix grows with its fan-in, so the stable rate falls with width: muP's
1/width for hidden layers. `opengpt4 scaling lr-check` measures the best rate at two widths so
the rule is checked, not assumed. A first rule, 4e-3 x sqrt(128 / width), failed that check at
3e12 FLOPs: w48l2 was best at 2x its rate (2.646 bits/byte vs 2.649) and w128l3 at 0.5x (3.293
vs 3.778 at 1x), a 4x spread where the square root allows 1.6x. 1/width through 2e-3 at w128
errs low: w128l3's best, and w48l2 between two rates within 0.4% of its best. Checked again at
1,024 tokens a step (the plan's batch since): w48l2 2.597 bits/byte at 0.5x, 2.598 at 1x, 2.669
at 0.25x; w128l3 2.848 at 1x, 2.854 at 0.5x, 2.983 at 0.25x: the rule within 0.1% of the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from opengpt4.config import ModelConfig
from opengpt4.errors import ConfigError
from opengpt4.tokenizer import SPECIAL_TOKENS, Tokenizer

BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b is token BYTE_OFFSET + b
VOCAB_SIZE = 64 * math.ceil((BYTE_OFFSET + 256) / 64)  # the model's embedding rows (the data's 261, padded)
HEAD_DIM = 32
BASE_WIDTH, LR_AT_BASE, LR_WIDTH_EXPONENT = 128, 2e-3, 1.0


@dataclass(frozen=True)
class Shape:
    width: int
    layers: int

    @property
    def name(self) -> str:
        return f"w{self.width}l{self.layers}"


# Each about 1.5-2x the parameters of the one before, so that an IsoFLOP curve has points on
# both sides of its minimum at every budget. Widths 32-256, 1-6 layers.
SHAPES = {s.name: s for s in (Shape(32, 1), Shape(32, 2), Shape(48, 2), Shape(64, 2), Shape(64, 3), Shape(96, 3),
                              Shape(128, 3), Shape(128, 4), Shape(160, 4), Shape(192, 5), Shape(224, 5),
                              Shape(256, 6))}


def shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ConfigError(f"unknown scaling model {name!r}; choose one of: {', '.join(SHAPES)}")
    return SHAPES[name]


def model_config(name: str, seq_len: int, smear_keys: bool = False, head_dim: int = HEAD_DIM) -> ModelConfig:
    s = shape(name)
    heads = max(s.width // head_dim, 1)
    return ModelConfig(vocab_size=VOCAB_SIZE, n_layer=s.layers, n_embd=s.width, n_head=heads, n_kv_head=heads,
                       mlp_hidden=32 * math.ceil(8 * s.width / 3 / 32), max_seq_len=seq_len, rope_theta=10000.0,
                       tie_embeddings=True, smear_keys=smear_keys, vision=None, name=name)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token by part (forward x 3), and their "total"."""
    d, hd = cfg.n_embd, cfg.head_dim
    forward = {
        "qkv": 2 * d * (cfg.n_head + 2 * cfg.n_kv_head) * hd * cfg.n_layer,
        "attn_out": 2 * cfg.n_head * hd * d * cfg.n_layer,
        "mlp": 2 * 3 * d * cfg.mlp_hidden * cfg.n_layer,
        # q.k over the whole sequence and the weighted sum of values: SDPA computes the full
        # T x T product and masks it, so the causal half is computed too and counted
        "attention": 2 * 2 * seq_len * cfg.n_head * hd * cfg.n_layer,
        "lm_head": 2 * d * cfg.vocab_size,
    }  # elementwise work (norms, SwiGLU's product, smeared keys' mix) is left out, as Chinchilla does
    parts = {k: 3.0 * v for k, v in forward.items()}
    return {**parts, "total": sum(parts.values())}


def learning_rate(width: int) -> float:
    return LR_AT_BASE * (BASE_WIDTH / width) ** LR_WIDTH_EXPONENT


def byte_tokenizer() -> Tokenizer:
    """Our special tokens (ids 0-4), then one token per byte: byte b is id BYTE_OFFSET + b, so
    text encodes as its UTF-8 bytes plus an offset (data.py relies on this; tested)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the printable stand-ins for the 256 bytes
    by_byte = sorted(alphabet, key=lambda ch: _BYTE_OF[ch])
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)} | {ch: BYTE_OFFSET + i for i, ch in enumerate(by_byte)}
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return Tokenizer(backend)


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's map from bytes to printable characters, inverted (character -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _bytes_to_unicode()
