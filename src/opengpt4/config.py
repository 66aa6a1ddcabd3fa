"""Model configuration: dataclasses, named presets, JSON round-trip.

One knob sizes a model, as in nanochat: `depth`. Width is 64 per layer, heads are 64 wide,
grouped-query attention halves the KV heads when the head count is even, and the SwiGLU
hidden size is 8/3 of the width rounded up to a multiple of 64 (Llama's rule, which keeps
the MLP's parameter count equal to a 4x GELU MLP). Imported models carry their own config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opengpt4.errors import ConfigError

# Inference precision modes (model/precision.py applies them; benchmarks/precision.py measures them).
PRECISIONS = ("float32", "bf16-weights", "bfloat16")
PRECISION_HELP = ("inference precision: float32 (the reference), bf16-weights (bfloat16 matmul weights, float32 "
                  "activations and logits) or bfloat16 (everything); auto = float32 (default auto)")

FORMAT_VERSION = 1


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class ReaderConfig:
    """The image reader (model/reader.py): a CNN filling `slots` words from the closed vocabulary
    `words` ("" an empty slot, "##x" glued to the word before)."""

    words: tuple[str, ...] = ("",)
    slots: int = 16
    channels: tuple[int, ...] = (16, 32, 64, 128)  # the first at full resolution, each next one halves it
    hidden: int = 1024
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.words, self.channels = tuple(self.words), tuple(int(c) for c in self.channels)
        _require(self.slots > 0 and self.hidden > 0, "reader.slots and reader.hidden must be positive")
        _require(bool(self.channels) and all(c > 0 for c in self.channels), "reader.channels must be positive")
        _require(len(set(self.words)) == len(self.words) and "" in self.words,
                 "reader.words must be distinct and include the empty slot \"\"")


@dataclass
class VisionConfig:
    """A small ViT whose patch grid is pixel-shuffled into `tokens_per_image` tokens."""

    image_size: int = 64  # square input side in pixels, after resizing
    patch_size: int = 8  # conv patch side; the grid is image_size // patch_size per side
    n_layer: int = 4
    width: int = 192
    n_head: int = 3
    mlp_ratio: float = 4.0
    pixel_shuffle: int = 2  # s x s neighbouring patches become one token (s*s*width wide)
    conv_stem: bool = False  # patches from a stack of stride-2 3x3 convolutions instead of one patch_size conv
    norm_eps: float = 1e-6
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    reader: ReaderConfig | None = None  # writes what the image holds as text after its tokens (model/reader.py)

    def __post_init__(self) -> None:
        if isinstance(self.reader, dict):
            self.reader = ReaderConfig(**self.reader)
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        for name in ("image_size", "patch_size", "n_layer", "width", "n_head", "pixel_shuffle"):
            _require(getattr(self, name) > 0, f"vision.{name} must be positive, got {getattr(self, name)}")
        _require(
            self.image_size % self.patch_size == 0,
            f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})",
        )
        _require(
            self.grid_size % self.pixel_shuffle == 0,
            f"vision patch grid ({self.grid_size}) must be a multiple of vision.pixel_shuffle ({self.pixel_shuffle})",
        )
        _require(
            self.width % self.n_head == 0,
            f"vision.n_head ({self.n_head}) must divide vision.width ({self.width})",
        )
        _require(not self.conv_stem or self.patch_size & (self.patch_size - 1) == 0,
                 f"vision.conv_stem halves the image per convolution: vision.patch_size ({self.patch_size}) "
                 "must be a power of 2")
        _require(len(self.image_mean) == 3 and len(self.image_std) == 3, "vision.image_mean/std need 3 values (RGB)")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return (self.grid_size // self.pixel_shuffle) ** 2


@dataclass
class ModelConfig:
    """A Llama-style decoder, optionally with a vision encoder in front."""

    vocab_size: int = 8192
    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    n_kv_head: int = 3
    mlp_hidden: int = 1024
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Smeared keys (Olsson et al. 2022, "In-context learning and induction heads"): each key is mixed
    # with the previous position's, sigmoid(g) k_t + (1 - sigmoid(g)) k_(t-1), g learned per KV head.
    # A previous-token head then comes for free, so even one layer can copy from the context.
    smear_keys: bool = False
    vision: VisionConfig | None = None
    image_token_id: int | None = None  # the id the tokenizer expands <|image|> into
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "mlp_hidden", "max_seq_len"):
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(self.n_embd % self.n_head == 0, f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        _require(
            self.n_head % self.n_kv_head == 0,
            f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}) for grouped-query attention",
        )
        _require(self.head_dim % 2 == 0, f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        _require(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
        if self.image_token_id is not None:
            _require(
                0 <= self.image_token_id < self.vocab_size,
                f"image_token_id ({self.image_token_id}) is outside the vocabulary (size {self.vocab_size})",
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count of the decoder (the vision tower excluded)."""
        kv = self.n_kv_head * self.head_dim
        attn = self.n_embd * (self.n_embd + 2 * kv) + self.n_embd * self.n_embd
        mlp = 3 * self.n_embd * self.mlp_hidden
        per_layer = attn + mlp + 2 * self.n_embd + (self.n_kv_head if self.smear_keys else 0)
        n = self.n_layer * per_layer + self.n_embd
        if include_embeddings:
            n += self.vocab_size * self.n_embd * (1 if self.tie_embeddings else 2)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM appendix B). N counts
        the weight matrices, the LM head's included; the norms' gains and the smeared keys' gates are no matmul (scaling/family.py breaks
        the count down by part and tests/test_scaling.py checks it against torch's FlopCounterMode)."""
        t = seq_len or self.max_seq_len
        gains = (2 * self.n_layer + 1) * self.n_embd + (self.n_layer * self.n_kv_head if self.smear_keys else 0)
        n = self.num_params(include_embeddings=False) - gains + self.vocab_size * self.n_embd
        return 6 * n + 12 * self.n_layer * self.n_embd * t

    def step_flops(self, tokens: int, row_len: int, head_positions: int, per_weight: float = 6.0) -> float:
        """FLOPs of `tokens` tokens in rows of `row_len` through the trunk, with the LM head run at only
        `head_positions` of them: fine-tuning runs it where a loss is (Transformer.forward), and it is the
        widest matmul. `per_weight` FLOPs per weight and token: 6 to train (forward 2, backward 4), 4 for
        frozen weights (no weight gradients: LoRA, a frozen LM), 2 forward only (a reference model). The
        attention scores' backward (2x their forward) runs whenever anything below them trains. With the head
        everywhere at 6, this is flops_per_token(row_len) x tokens."""
        scores = 4 * self.n_layer * self.n_embd * row_len  # forward FLOPs per token: q.k and the weighted values
        head = self.vocab_size * self.n_embd
        trunk = (self.flops_per_token(row_len) - 3 * scores) / 6 - head  # the trunk's weights
        return (per_weight * (trunk * tokens + head * head_positions)
                + scores * tokens * (3 if per_weight > 2 else 1))

    def compute_optimal_tokens(self) -> int:
        """Chinchilla's ~20 tokens per parameter."""
        return 20 * self.num_params()

    # --- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.vision is not None:
            d["vision"]["image_mean"] = list(self.vision.image_mean)
            d["vision"]["image_std"] = list(self.vision.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        _require(not unknown, f"unknown model config keys: {', '.join(unknown)}")
        d = dict(d)
        if d.get("vision") is not None:
            vknown = {f.name for f in dataclasses.fields(VisionConfig)}
            vunknown = sorted(set(d["vision"]) - vknown)
            _require(not vunknown, f"unknown vision config keys: {', '.join(vunknown)}")
            d["vision"] = VisionConfig(**d["vision"])
        return cls(**d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- presets -----------------------------------------------------------------------------


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def depth_config(depth: int, vocab_size: int = 8192, max_seq_len: int = 512, vision: bool = True) -> ModelConfig:
    """The one-knob family: everything follows from the number of layers."""
    _require(depth > 0, f"depth must be positive, got {depth}")
    n_embd = 64 * depth
    n_head = depth  # 64-wide heads
    n_kv_head = n_head // 2 if n_head % 2 == 0 else n_head
    return ModelConfig(
        vocab_size=vocab_size,
        n_layer=depth,
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=n_kv_head,
        mlp_hidden=_round_up(8 * n_embd / 3, 64),
        max_seq_len=max_seq_len,
        vision=VisionConfig() if vision else None,
        name=f"d{depth}",
    )


def _test_config() -> ModelConfig:
    return ModelConfig(
        vocab_size=512,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_kv_head=2,
        mlp_hidden=128,
        max_seq_len=128,
        vision=VisionConfig(image_size=32, patch_size=8, n_layer=1, width=32, n_head=2, pixel_shuffle=2),
        name="test",
    )


def _smollm2_135m() -> ModelConfig:
    return ModelConfig(
        vocab_size=49152,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_kv_head=3,
        mlp_hidden=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        init_std=0.041666666666666664,
        vision=None,
        name="smollm2-135m",
    )


PRESETS: dict[str, Any] = {
    "test": _test_config,
    **{f"d{d}": (lambda d=d: depth_config(d)) for d in range(4, 13)},
    "smollm2-135m": _smollm2_135m,
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg




# --- training ----------------------------------------------------------------------------

# Domain weights of the default corpus. Facts are learned by repetition, so world + qa take
# most of a short run; stdlib is a small share (its held-out loss is measured, not optimised).
DEFAULT_MIXTURE = {"world": 0.36, "qa": 0.08, "chat": 0.08, "images": 0.28, "stdlib": 0.12, "math": 0.03, "pycode": 0.03,
                   "misconceptions": 0.02}


@dataclass
class LoopConfig:
    """What every training run shares (train/loop.py): batch, optimizer, schedule, precision, evals and
    checkpoints. Each kind of run subclasses it with its own fields and defaults (torchtitan keeps one
    config per component the same way); every field can be set with `--set name=value`."""

    batch_size: int = 16  # global sequences per optimizer step (all ranks, all micro-batches)
    micro_batch_size: int = 0  # sequences per forward on one rank; 0: batch_size / world_size (no accumulation)
    lr: float = 3e-3
    vision_lr_scale: float = 0.33  # the vision tower and projector train at lr x this (a ViT from scratch is
    # unstable at the decoder's rate; at 3e-3 it learns little beyond answer priors in a 10-minute run)
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    warmup_steps: int = 30
    warmup_fraction: float = 0.0  # > 0: warm up over this fraction of the step (or FLOP) budget instead
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup-stable-decay)
    decay_fraction: float = 0.25  # wsd: the final fraction of training that decays
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "auto"  # autocast dtype for the matmuls (master weights stay float32): bfloat16, float32, or
    # auto: bfloat16 where the device multiplies it natively (CUDA, CPUs with AVX-512 or AMX), else float32 (an
    # AVX2-only CPU emulates bfloat16 matmuls ~100x slower than float32: 0.8 vs 122 GFLOP/s on an AMD EPYC)
    eval_every: int = 100  # steps between evals; 0: only at the end
    eval_at_start: bool = False  # also evaluate the untrained model, at step 0 (the baseline on the curves)
    ckpt_every: int = 0  # steps between checkpoints; 0: only at the end
    log_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.schedule in ("cosine", "wsd"), f"schedule must be cosine or wsd, got {self.schedule!r}")
        _require(self.dtype in ("auto", "bfloat16", "float32"), f"dtype must be auto, bfloat16 or float32, got {self.dtype!r}")
        for name in ("batch_size", "lr"):
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


@dataclass
class TrainConfig(LoopConfig):
    """Pretraining settings; every field can be set with `--set name=value` (and the model with `model.x=y`)."""

    seq_len: int = 256
    eval_batches: int = 2  # val batches per domain
    probe_size: int = 64  # questions per kind of world-fact probe; the image probe asks 3x as many
    mixture: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MIXTURE))

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.seq_len > 0, f"seq_len must be positive, got {self.seq_len}")


LORA_LR_SCALE = 10  # `--lora`: the default lr times this. Adapters start at zero and want ~10x full
# fine-tuning's rate (Schulman et al., "LoRA Without Regret", 2025); not tuned here


@dataclass
class FineTuneConfig(LoopConfig):
    """LoopConfig plus how a fine-tuning run (SFT, DPO, RLHF) trains the checkpoint it starts from:
    in full, or as LoRA adapters on it frozen (train/finetune.py)."""

    lora_rank: int = 0  # 0: full fine-tuning; r > 0: LoRA adapters of rank r (model/lora.py)
    lora_alpha: float = 16.0  # LoRA's update is scaled by lora_alpha / lora_rank

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}")

    def use_lora(self, rank: int | None) -> None:
        """`--lora RANK`: adapters of that rank at LORA_LR_SCALE x the default rate (a --set lr still wins)."""
        if rank:
            self.lora_rank, self.lr = rank, self.lr * LORA_LR_SCALE


@dataclass
class SFTConfig(FineTuneConfig):
    """Supervised fine-tuning settings (`opengpt4 sft --set name=value`): LoopConfig's fields with defaults
    for a model of up to ~135M parameters on 2 CPU cores, and the SFT-only ones."""

    batch_size: int = 16  # packed rows per step: 8,192 tokens at seq_len 512
    micro_batch_size: int = 4  # SmolLM2's logits for 4 x 512 tokens are 400 MB in float32
    lr: float = 1e-4  # full fine-tuning; `--lora` defaults to LORA_LR
    min_lr_ratio: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.0  # a few epochs on a small set: nothing to regularise toward (HF/TRL's default)
    eval_every: int = 50
    eval_at_start: bool = True  # the held-out loss before fine-tuning
    ckpt_every: int = 50
    seq_len: int = 512  # tokens per packed row; longer conversations are skipped and counted
    epochs: float = 2.0  # the length of the run unless --max-steps says otherwise
    eval_rows: int = 32  # held-out rows (of seq_len) per eval
    # Replay (`--replay DATA_DIR`): rows of the pretraining data mixed into the packed chat rows, a
    # share replay_fraction of all rows, trained on every token as in pretraining. A small model
    # forgets what it read in pretraining when fine-tuned on a narrow set (InstructGPT mixes
    # pretraining gradients into PPO for the same reason; nanochat's midtraining mixes its data).
    replay_data: str | None = None  # a `data build` dir with the model's tokenizer
    replay_fraction: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("seq_len", "epochs", "eval_rows"):
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(0 <= self.replay_fraction < 1, f"replay_fraction must be in [0, 1), got {self.replay_fraction}")


LORA_LR = SFTConfig.lr * LORA_LR_SCALE  # SFT's (and vision stage 2's) rate with LoRA: 1e-3


def apply_overrides(obj: Any, assignments: list[str]) -> Any:
    """Apply `key=value` / `a.b=value` settings to a (nested) dataclass, in place; values parse as JSON, else str."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        _require(bool(sep) and bool(key), f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target, *path = obj, *key.split(".")
        for part in path[:-1]:
            _require(hasattr(target, part), f"unknown setting {key!r}")
            target = getattr(target, part)
        name = path[-1]
        if isinstance(target, dict):
            target[name] = value
            continue
        _require(dataclasses.is_dataclass(target) and name in {f.name for f in dataclasses.fields(target)},
                 f"unknown setting {key!r}")
        current = getattr(target, name)
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        optional = value is None and "None" in str(next(f.type for f in dataclasses.fields(target) if f.name == name))
        _require(current is None or optional or isinstance(value, type(current)),
                 f"setting {key!r} expects {type(current).__name__}, got {raw!r}")
        setattr(target, name, value)
        target.__post_init__()
    return obj
