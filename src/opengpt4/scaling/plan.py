"""The sweep as data: budgets, the model sizes at each, seeds, and the one schedule rule for all.

DEFAULT_PLAN fits `opengpt4 scaling sweep` + `fit` + `target` into 90 minutes on this
project's 2-core machine (Xeon with AMX), from throughput measured per size (the numbers and
the arithmetic are in the plan's comments and `opengpt4 scaling throughput`). A plan is
saved in the sweep dir (plan.json) when a sweep starts, and a resumed sweep must be the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from opengpt4.config import TrainConfig
from opengpt4.errors import ConfigError
from opengpt4.scaling.family import flops_per_token, learning_rate, model_config, shape


@dataclass(frozen=True)
class Run:
    budget: float  # training FLOPs
    model: str  # a family shape name, e.g. w64l2
    seed: int
    lr_scale: float = 1.0  # x the family's learning rate (`scaling lr-check` only)

    @property
    def id(self) -> str:
        scaled = f"-lr{self.lr_scale:g}" if self.lr_scale != 1.0 else ""
        return f"{self.budget:.0e}-{self.model}-s{self.seed}{scaled}".replace("+", "")


@dataclass
class Plan:
    # budget (FLOPs) -> the family shapes trained at it, smallest first
    budgets: dict[str, list[str]] = field(default_factory=dict)
    target_budget: float = 3e14
    seeds: int = 2  # at the `seeded_budgets` smallest budgets; one seed elsewhere
    seeded_budgets: int = 2
    seq_len: int = 256
    tokens_per_step: int = 4096  # the global batch, batch_size = tokens_per_step / seq_len (same at all budgets)
    schedule: str = "wsd"
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2  # WSD: the last 20% of every run decays linearly to 0
    min_lr_ratio: float = 0.0
    dtype: str = "bfloat16"
    jobs: int = 2  # runs in parallel, each on `threads` threads
    threads: int = 1
    target_threads: int = 2  # the target runs alone, on both cores
    samples: int = 100  # capability samples per problem and model

    def __post_init__(self) -> None:
        for sizes in self.budgets.values():
            for name in sizes:
                shape(name)
        if self.tokens_per_step % self.seq_len:
            raise ConfigError(f"tokens_per_step {self.tokens_per_step} must be a multiple of seq_len {self.seq_len}")

    def runs(self) -> list[Run]:
        """Every sweep run, in a fixed order (budget, size, seed)."""
        ordered = sorted(self.budgets, key=float)
        return [Run(float(b), m, seed) for i, b in enumerate(ordered) for m in self.budgets[b]
                for seed in range(self.seeds if i < self.seeded_budgets else 1)]

    def train_config(self, run: Run) -> TrainConfig:
        width = shape(run.model).width
        return TrainConfig(batch_size=self.tokens_per_step // self.seq_len, seq_len=self.seq_len,
                           lr=learning_rate(width) * run.lr_scale, schedule=self.schedule, warmup_fraction=self.warmup_fraction,
                           decay_fraction=self.decay_fraction, min_lr_ratio=self.min_lr_ratio, dtype=self.dtype,
                           eval_every=0, eval_batches=1, probe_size=0, log_every=10, seed=run.seed, mixture={})

    def steps(self, run: Run) -> int:
        per_token = flops_per_token(model_config(run.model, self.seq_len), self.seq_len)["total"]
        return max(math.ceil(run.budget / (per_token * self.tokens_per_step)), 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json_text(cls, text: str, source: str = "plan") -> Plan:
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"{source}: not a sweep plan ({e})") from None

    @classmethod
    def from_file(cls, path: Path) -> Plan:
        return cls.from_json_text(Path(path).read_text(), str(path))


# Sizes: at each budget 3-4 shapes from ~60 down to ~3 training tokens per parameter, bracketing
# Chinchilla's ~20 (its optimum here is unknown: the sweep finds it). Wall time, from the training
# speed per CPU-second measured by `opengpt4 scaling throughput` on one thread (Xeon AMX, bfloat16,
# 4,096 tokens/step; wall-clock speed on the shared machine was 0.4x that): w32l1 119k tokens/s
# (29 GFLOP/s), w48l2 60k (43), w64l2 44k (51), w64l3 31k (51), w96l3 22k (66), w128l3 15k (76),
# w128l4 12k (80), w160l4 9.8k (97), w192l5 6.5k (107). 25 runs, 1.5e14 FLOPs, 46 core-minutes
# with 8 s of start-up, load and held-out eval each: 23 minutes on 2 x 1 thread. The target
# (3e14 FLOPs, w160l4 if the fit lands near Chinchilla's ratio) is 51 minutes on one thread,
# ~35 on two at a 1.5x thread speed-up.
DEFAULT_PLAN = Plan(budgets={
    "3e11": ["w32l1", "w32l2", "w48l2"],
    "1e12": ["w32l2", "w48l2", "w64l2", "w64l3"],
    "3e12": ["w48l2", "w64l2", "w64l3", "w96l3"],
    "1e13": ["w64l2", "w64l3", "w96l3", "w128l3"],
    "3e13": ["w64l3", "w96l3", "w128l3"],
})
