"""Pretraining: next-token prediction on a data dir, one process or many (torchrun).

    opengpt4 train --preset d6 --data DIR --out CKPT [--max-steps N | --max-flops F | --max-minutes M] [--resume]
    torchrun --nproc_per_node=2 -m opengpt4.cli train ...        # DDP (gloo on CPU), --fsdp for FSDP2

The objective of the shared loop (train/loop.py): a model from a preset (or the checkpoint
being resumed), the data dir's packed batches, the next-token loss, and the evals (val loss
per domain, the probes). The global batch of every step is fixed by the data seed and the
step number, so a checkpoint's loader position is one number and a resumed run sees exactly
the batches it would have seen.

A FLOP budget (`--max-flops`, what scaling sweeps use) is a step budget: the steps whose
tokens cost that many training FLOPs by the model config's count, rounded up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from opengpt4.config import ModelConfig, TrainConfig, apply_overrides, get_preset
from opengpt4.data.loader import Batch, DataLoader, read_index
from opengpt4.errors import ConfigError, OpenGPT4Error
from opengpt4.model.checkpoint import build_model, read_config
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.evaluate import Probes, val_losses
from opengpt4.train.loop import (
    Snapshot,
    Trainer,
    micro_batches,
    next_token_loss,
    plain_model,
    read_state,
    target_count,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mixture(index: dict, wanted: dict[str, float], has_vision: bool) -> dict[str, float]:
    """The configured domain weights restricted to what the data dir has (real data: uniform)."""
    present = set(index["domains"]) | ({"images"} if index.get("images") and has_vision else set())
    weights = {d: w for d, w in wanted.items() if d in present and w > 0}
    return weights or {d: 1.0 for d in sorted(present)}


class Pretraining:
    """A model from a preset trained on a data dir from `opengpt4 data build` (see loop.Objective)."""

    name = "train"

    def __init__(self, preset: str | ModelConfig, data: Path, out: Path, cfg: TrainConfig, model_overrides: list[str],
                 d: distributed.Dist, state: dict | None) -> None:
        """`preset`: a preset's name, or the model config itself (its vocab_size must hold the data's)."""
        self.data, self.cfg = data, cfg
        self.index = read_index(data)
        vocabulary = Tokenizer.from_dir(data, self.index["tokenizer"])  # its size and image id shape the model
        if state is not None:
            if sha256(out / "tokenizer.json") != self.index["tokenizer_sha256"]:
                raise OpenGPT4Error(f"{data} was built with another tokenizer than the checkpoint {out}: "
                                    "rebuild it with `opengpt4 data build --tokenizer CHECKPOINT`")
            model_config = ModelConfig.from_dict(read_config(out)["model"])
        else:
            given = isinstance(preset, ModelConfig)
            base = preset if given else get_preset(preset)
            vocab_size = base.vocab_size if given else 64 * math.ceil(vocabulary.vocab_size / 64)
            if vocab_size < vocabulary.vocab_size:
                raise ConfigError(f"the model's vocab_size {vocab_size} cannot hold {data}'s {vocabulary.vocab_size} tokens")
            model_config = dataclasses.replace(base, vocab_size=vocab_size, image_token_id=vocabulary.image_id,
                                               max_seq_len=max(cfg.seq_len, base.max_seq_len))
            apply_overrides(model_config, model_overrides)
        self.model_config = model_config
        vision = model_config.vision
        self.tokenizer = Tokenizer.from_dir(data, self.index["tokenizer"],
                                            tokens_per_image=vision.tokens_per_image if vision else None)
        torch.manual_seed(cfg.seed)
        if state is not None:
            weights = load_file(str(out / "model.safetensors"))
            self.model = build_model(model_config, weights, str(out / "model.safetensors"), torch.float32).train()
        else:
            self.model = Transformer(model_config)
            self.model.init_weights()

        n_micro = micro_batches(cfg, d)
        rows = cfg.batch_size // d.world_size // n_micro  # per micro-batch
        self.weights = mixture(self.index, cfg.mixture, vision is not None)
        self.loader = DataLoader(data, "train", seq_len=cfg.seq_len, batch_size=cfg.batch_size, weights=self.weights,
                                 vision=vision, image_token_id=self.tokenizer.image_id, seed=cfg.seed,
                                 rank=d.rank, world_size=d.world_size, micro_batches=n_micro)
        val = DataLoader(data, "val", seq_len=cfg.seq_len, batch_size=rows, weights=self.weights,
                         vision=vision, image_token_id=self.tokenizer.image_id, seed=cfg.seed)
        self.val_batches = {dom: val.eval_batches(dom, cfg.eval_batches, rows) for dom in self.weights}
        self.probes = Probes(data, cfg.probe_size, cfg.seed)
        if state is not None:
            self.loader.load_state_dict(state["loader"])
        self.flops_per_token = model_config.flops_per_token(cfg.seq_len)

    def describe(self) -> str:
        n, cfg = self.model_config.num_params(), self.cfg
        return (f"model {self.model_config.name}: {n / 1e6:.2f}M parameters, {cfg.batch_size * cfg.seq_len:,} "
                f"tokens/step, mixture {self.weights}")

    def steps_for_flops(self, flops: float) -> int:
        return max(math.ceil(flops / (self.flops_per_token * self.cfg.batch_size * self.cfg.seq_len)), 1)

    def default_steps(self) -> int:
        """Chinchilla's compute-optimal token count."""
        return math.ceil(self.model_config.compute_optimal_tokens() / (self.cfg.batch_size * self.cfg.seq_len))

    def next_batches(self) -> list[Batch]:
        return self.loader.next()

    def count(self, batch: Batch) -> int:
        return target_count(batch)

    def tokens(self, batch: Batch) -> int:
        return batch.input_ids.numel()

    def flops(self, batch: Batch) -> float:
        return self.model_config.step_flops(batch.input_ids.numel(), batch.input_ids.shape[1], target_count(batch))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return next_token_loss(model, batch)

    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """Val loss per domain and the probes (greedy answers, in float32: outside autocast; probe_size 0: none)."""
        val = val_losses(model, self.val_batches, autocast)
        probe = self.probes.run(distributed.unwrap(model), self.tokenizer) if self.cfg.probe_size else {}
        return {"val": val, "probe": probe}

    def format_eval(self, result: dict[str, Any]) -> str:
        val = " ".join(f"{k} {v:.3f}" for k, v in result["val"].items())
        probe = " ".join(f"{k} {v:.2f}" for k, v in result["probe"].items())
        return f"step {result['step']}: val loss {val} | probes {probe}"

    def snapshot(self, model: nn.Module) -> Snapshot:
        return Snapshot(plain_model(model, self.model_config))

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "data": str(self.data)}


def build_trainer(preset: str | ModelConfig, data: Path, out: Path, cfg: TrainConfig, model_overrides: list[str],
                  max_steps: int | None, max_minutes: float | None, resume: bool, fsdp: bool,
                  max_flops: float | None = None) -> Trainer:
    d = distributed.init()
    state = read_state(out) if resume else None
    if state is not None:
        cfg = TrainConfig(**state["train_config"])
    objective = Pretraining(preset, data, out, cfg, model_overrides, d, state)
    if max_flops is not None:
        max_steps = objective.steps_for_flops(max_flops)
    return Trainer(objective, cfg, out, d, state, max_steps=max_steps, max_minutes=max_minutes, fsdp=fsdp)


def train_from_cli(args) -> None:
    cfg = TrainConfig()
    train_sets = [s for s in args.set if not s.startswith("model.")]
    model_sets = [s[len("model."):] for s in args.set if s.startswith("model.")]
    apply_overrides(cfg, train_sets)
    build_trainer(args.preset, Path(args.data), Path(args.out), cfg, model_sets, args.max_steps, args.max_minutes,
                  args.resume, args.fsdp, max_flops=args.max_flops).run()
