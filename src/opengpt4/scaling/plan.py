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

from opengpt4.config import ModelConfig, TrainConfig
from opengpt4.errors import ConfigError
from opengpt4.scaling.family import HEAD_DIM, flops_per_token, learning_rate, model_config, shape


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
    # The seeds are first_seed, first_seed + 1, ...; the target trains with first_seed. A new attempt on
    # the same data must start elsewhere: seed 0 would repeat runs whose outcome is already known.
    first_seed: int = 0
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
    # The family's variant, for every model of the sweep and the target. The defaults are the family of the
    # first four attempts; DEFAULT_PLAN's is the fifth's (see there).
    smear_keys: bool = False  # ModelConfig.smear_keys
    head_dim: int = HEAD_DIM

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
                for seed in range(self.first_seed, self.first_seed + (self.seeds if i < self.seeded_budgets else 1))]

    def train_config(self, run: Run) -> TrainConfig:
        width = shape(run.model).width
        return TrainConfig(batch_size=self.tokens_per_step // self.seq_len, seq_len=self.seq_len,
                           lr=learning_rate(width) * run.lr_scale, schedule=self.schedule, warmup_fraction=self.warmup_fraction,
                           decay_fraction=self.decay_fraction, min_lr_ratio=self.min_lr_ratio, dtype=self.dtype,
                           eval_every=0, eval_batches=1, probe_size=0, log_every=10, seed=run.seed, mixture={})

    def model_config(self, name: str) -> ModelConfig:
        return model_config(name, self.seq_len, self.smear_keys, self.head_dim)

    def target_run(self, model: str) -> Run:
        return Run(self.target_budget, model, self.first_seed)

    def steps(self, run: Run) -> int:
        per_token = flops_per_token(self.model_config(run.model), self.seq_len)["total"]
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


# Batch: 1,024 tokens a step (4 rows of 256) at every budget. A first sweep at 4,096 gave the
# small budgets 100-600 steps: their losses measured the shortness of the run more than the
# compute (seed-to-seed spread up to 0.2 bits/byte, the smallest model best at 3 of 5 budgets),
# and the fit predicted the target 6.7% too high. A quarter of the batch gives 4x the steps
# for ~25% less speed per core on the small shapes.
# Sizes: at each budget 3-4 shapes from ~200 down to ~6 training tokens per parameter, bracketing
# Chinchilla's ~20 (the first sweep found 20-60 at the budgets its steps did not limit).
# Wall time, from `opengpt4 scaling throughput` at this batch (Xeon AMX, bfloat16, idle machine),
# one thread: w32l1 102k tokens/s (25 GFLOP/s), w48l2 50k (36), w64l3 24k (39), w96l3 18k (56),
# w128l3 12.5k (63); two threads: w160l4 12.4k (123), w192l5 8.0k (133). 25 runs, 1.5e14 FLOPs.
# Measured on the idle machine: the sweep 31.6 minutes on 2 x 1 thread, the target (the fit chose
# w192l5) 31.7 minutes on two threads, capability sampling ~30 s a model.
# Family: plain keys, 32-wide heads. The fifth attempt ran this plan with smeared keys and 16-wide heads
# (`smear_keys`, `head_dim`), which move the sweep models' copying from the context inside the budgets:
# it predicted 11.2% too low (the fourth, this family: 4.9% too high) and its chain took 93.9 minutes on
# the AMD machine (this family: 77), the 16-wide heads costing the target a fifth of its speed.
DEFAULT_PLAN = Plan(tokens_per_step=1024, budgets={
    "3e11": ["w32l1", "w32l2", "w48l2"],
    "1e12": ["w32l1", "w32l2", "w48l2", "w64l2"],
    "3e12": ["w32l2", "w48l2", "w64l2", "w64l3"],
    "1e13": ["w48l2", "w64l2", "w64l3", "w96l3"],
    "3e13": ["w64l3", "w96l3", "w128l3"],
})
