"""Pretraining: next-token prediction on a data dir, one process or many (torchrun).

    opengpt4 train --preset d6 --data DIR --out CKPT [--max-steps N | --max-minutes M] [--resume]
    torchrun --nproc_per_node=2 -m opengpt4.cli train ...        # DDP (gloo on CPU), --fsdp for FSDP2

The global batch of every step is fixed by the data seed and the step number, and the loss
is summed over tokens and divided by the global token count, so one process with gradient
accumulation and N processes with DDP compute the same update. A checkpoint holds the
weights, the optimizer state, the loader position and the metrics so far: a run killed
after one continues with exactly the losses it would have had.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from opengpt4.config import ModelConfig, TrainConfig, apply_overrides, get_preset
from opengpt4.data.loader import DataLoader, read_index
from opengpt4.errors import CheckpointError, OpenGPT4Error
from opengpt4.model.checkpoint import build_model, read_config, save_checkpoint
from opengpt4.model.transformer import IGNORE_INDEX, Transformer
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.evaluate import Probes, val_losses
from opengpt4.train.metrics import MetricsLog, matmul_peak_flops, plot_metrics
from opengpt4.train.optim import (
    OPTIMIZER_FILE,
    build_optimizer,
    load_optimizer,
    lr_at,
    optimizer_tensors,
    save_optimizer,
)

STATE_FILE, METRICS_FILE, PLOT_FILE = "trainer_state.json", "metrics.jsonl", "loss.png"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mixture(index: dict, wanted: dict[str, float], has_vision: bool) -> dict[str, float]:
    """The configured domain weights restricted to what the data dir has (real data: uniform)."""
    present = set(index["domains"]) | ({"images"} if index.get("images") and has_vision else set())
    weights = {d: w for d, w in wanted.items() if d in present and w > 0}
    return weights or {d: 1.0 for d in sorted(present)}


def plain_model(model: nn.Module, config: ModelConfig) -> Transformer:
    """An unwrapped, unsharded Transformer with the trained weights on CPU (collective under FSDP)."""
    state = {name: distributed.full_tensor(p) for name, p in distributed.unwrap(model).named_parameters()}
    with torch.device("meta"):
        plain = Transformer(config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_and_materialize()
    return plain


class Trainer:
    def __init__(self, preset: str, data: Path, out: Path, cfg: TrainConfig, model_overrides: list[str],
                 max_steps: int | None, max_minutes: float | None, resume: bool, fsdp: bool) -> None:
        self.started = time.perf_counter()  # a time budget counts start-up too
        self.dist = d = distributed.init()
        self.data, self.out, self.fsdp = data, out, fsdp
        self.index = read_index(data)
        vocabulary = Tokenizer.from_dir(data, self.index["tokenizer"])  # its size and image id shape the model
        state = self._resume_state() if resume else None
        if state is not None:
            cfg = TrainConfig(**state["train_config"])
            model_config = ModelConfig.from_dict(read_config(out)["model"])
        else:
            model_config = dataclasses.replace(
                get_preset(preset), vocab_size=64 * math.ceil(vocabulary.vocab_size / 64),
                image_token_id=vocabulary.image_id, max_seq_len=max(cfg.seq_len, get_preset(preset).max_seq_len))
            apply_overrides(model_config, model_overrides)
        self.cfg, self.model_config = cfg, model_config
        vision = model_config.vision
        self.tokenizer = Tokenizer.from_dir(data, self.index["tokenizer"],
                                            tokens_per_image=vision.tokens_per_image if vision else None)
        torch.manual_seed(cfg.seed)

        if state is not None:
            weights = load_file(str(out / "model.safetensors"))
            model = build_model(model_config, weights, str(out / "model.safetensors"), torch.float32).train()
        else:
            model = Transformer(model_config)
            model.init_weights()
        self.model = distributed.wrap(model.to(d.device), d, fsdp)
        self.optimizer, self.param_names = build_optimizer(self.model, cfg)

        per_rank = cfg.batch_size // d.world_size
        micro = cfg.micro_batch_size or per_rank
        if cfg.batch_size % d.world_size or per_rank % micro:
            raise OpenGPT4Error(f"batch_size {cfg.batch_size} must split evenly over {d.world_size} ranks "
                                f"and micro-batches of {micro}")
        self.weights = mixture(self.index, cfg.mixture, model_config.vision is not None)
        self.loader = DataLoader(data, "train", seq_len=cfg.seq_len, batch_size=cfg.batch_size, weights=self.weights,
                                 vision=model_config.vision, image_token_id=self.tokenizer.image_id, seed=cfg.seed,
                                 rank=d.rank, world_size=d.world_size, micro_batches=per_rank // micro)
        val = DataLoader(data, "val", seq_len=cfg.seq_len, batch_size=micro, weights=self.weights,
                         vision=model_config.vision, image_token_id=self.tokenizer.image_id, seed=cfg.seed)
        self.val_batches = {dom: val.eval_batches(dom, cfg.eval_batches, micro) for dom in self.weights}
        self.probes = Probes(data, cfg.probe_size, cfg.seed)

        self.step, self.tokens, self.elapsed, self.reserve = 0, 0, 0.0, 0.0
        self.metrics = MetricsLog(out / METRICS_FILE)
        if state is not None:
            load_optimizer(self.optimizer, self.param_names, out / OPTIMIZER_FILE)
            self.loader.load_state_dict(state["loader"])
            self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
            self.metrics = MetricsLog.resume(out / METRICS_FILE, self.step)

        tokens_per_step = cfg.batch_size * cfg.seq_len
        if state is not None and max_steps is None and max_minutes is None:  # the resumed run's own budget
            max_steps, max_minutes = state.get("max_steps"), state.get("max_minutes")
        if max_steps is None and max_minutes is None:  # Chinchilla's compute-optimal token count
            max_steps = math.ceil(model_config.compute_optimal_tokens() / tokens_per_step)
        self.max_steps, self.max_seconds = max_steps, (max_minutes * 60 if max_minutes else None)
        dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.autocast = (torch.autocast(d.device.type, dtype=dtype) if dtype != torch.float32
                         else contextlib.nullcontext())
        self.peak_flops = matmul_peak_flops(dtype, d.device)
        self.flops_per_step = model_config.flops_per_token(cfg.seq_len) * tokens_per_step

    def _resume_state(self) -> dict | None:
        file = self.out / STATE_FILE
        if not file.is_file():
            raise CheckpointError(f"{self.out}: nothing to resume (no {STATE_FILE})")
        if sha256(self.out / "tokenizer.json") != self.index["tokenizer_sha256"]:
            raise OpenGPT4Error(f"{self.data} was built with another tokenizer than the checkpoint {self.out}: "
                                "rebuild it with `opengpt4 data build --tokenizer CHECKPOINT`")
        return json.loads(file.read_text())

    # --- the loop ----------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done: by steps, or by wall-clock time with the last eval + save's
        duration held in reserve, so that a time budget includes the final eval and checkpoint."""
        parts = [self.step / self.max_steps if self.max_steps else 0.0,
                 (self.elapsed + self.reserve) / self.max_seconds if self.max_seconds else 0.0]
        return max(parts)

    def done(self) -> bool:
        return self.progress() >= 1.0

    def train_step(self) -> dict[str, float]:
        d, cfg = self.dist, self.cfg
        start = time.perf_counter()
        micro_batches = self.loader.next()
        counted = sum(int((b.targets != IGNORE_INDEX).sum()) for b in micro_batches)
        n_valid = float(distributed.all_reduce_sum(torch.tensor(float(counted)), d))
        lr = lr_at(cfg, self.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss_sum = torch.zeros(())
        for i, b in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            if self.fsdp and d.enabled:
                self.model.set_requires_gradient_sync(last)
            sync = self.model.no_sync() if d.enabled and not self.fsdp and not last else contextlib.nullcontext()
            images = b.images.to(d.device) if b.images is not None else None
            with sync:
                with self.autocast:
                    loss = self.model(b.input_ids.to(d.device), images, targets=b.targets.to(d.device),
                                      reduction="sum")
                # DDP and FSDP average gradients over ranks; dividing by the global count (x ranks)
                # makes the update the mean over every token of the global batch.
                (loss * d.world_size / n_valid).backward()
            loss_sum += loss.detach().float().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(distributed.all_reduce_sum(loss_sum, d)) / n_valid
        seconds = time.perf_counter() - start
        self.step += 1
        self.tokens += cfg.batch_size * cfg.seq_len
        tokens_per_s = cfg.batch_size * cfg.seq_len / seconds
        return {"step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr,
                "grad_norm": float(distributed.full_tensor(grad_norm)), "tokens_per_s": tokens_per_s,
                "mfu": self.flops_per_step / seconds / (self.peak_flops * d.world_size)}

    def evaluate(self) -> dict[str, Any]:
        val = val_losses(self.model, self.val_batches, self.autocast)
        model = distributed.unwrap(self.model) if not self.fsdp else self.model
        probe = self.probes.run(model, self.tokenizer)
        return {"step": self.step, "tokens": self.tokens, "val": val, "probe": probe}

    def save(self) -> None:
        plain = plain_model(self.model, self.model_config)  # collective under FSDP
        optim = optimizer_tensors(self.optimizer, self.param_names)
        if not self.dist.is_main:
            return
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed, "max_steps": self.max_steps,
                 "max_minutes": self.max_seconds / 60 if self.max_seconds else None,
                 "loader": self.loader.state_dict(), "train_config": dataclasses.asdict(self.cfg),
                 "data": str(self.data), "world_size": self.dist.world_size}

        def write_extra(tmp: Path) -> None:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            save_optimizer(optim, tmp / OPTIMIZER_FILE)
            self.metrics.write(tmp / METRICS_FILE)
            plot_metrics(self.metrics.lines, tmp / PLOT_FILE)

        save_checkpoint(self.out, plain, self.tokenizer, write_extra=write_extra)

    def run(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        d, cfg = self.dist, self.cfg
        if d.is_main:
            n = self.model_config.num_params()
            print(f"model {self.model_config.name}: {n / 1e6:.2f}M parameters, {cfg.batch_size * cfg.seq_len:,} "
                  f"tokens/step, mixture {self.weights}, peak {self.peak_flops / 1e9:.0f} GFLOP/s per rank, "
                  f"{d.world_size} rank(s)", file=sys.stderr)
        total = self.max_steps or None
        with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      disable=not d.is_main, transient=False, console=None) as bar:
            task = bar.add_task("train", total=total, completed=self.step, info="")
            clock = self.started
            while not self.done():
                line = self.train_step()
                self.elapsed += time.perf_counter() - clock
                clock = time.perf_counter()
                if self.step % cfg.log_every == 0 or self.done():
                    self.metrics.append(line)
                bar.update(task, completed=self.step, info=f"loss {line['loss']:.3f}  "
                           f"{line['tokens_per_s']:,.0f} tok/s  MFU {100 * line['mfu']:.1f}%")
                last = self.done()
                evaluate = (cfg.eval_every and self.step % cfg.eval_every == 0) or last
                if evaluate:
                    result = self.evaluate()
                    self.metrics.append(result)
                    if d.is_main:
                        bar.console.print(_format_eval(result))
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last:
                    self.save()
                distributed.barrier(d)
                if evaluate:  # the final eval and save must fit in a time budget too (+15 s for the save)
                    self.reserve = time.perf_counter() - clock + 15.0
                self.elapsed += time.perf_counter() - clock
                clock = time.perf_counter()
        distributed.shutdown(d)


def _format_eval(result: dict) -> str:
    val = " ".join(f"{k} {v:.3f}" for k, v in result["val"].items())
    probe = " ".join(f"{k} {v:.2f}" for k, v in result["probe"].items())
    return f"step {result['step']}: val loss {val} | probes {probe}"


def train_from_cli(args) -> None:
    cfg = TrainConfig()
    train_sets = [s for s in args.set if not s.startswith("model.")]
    model_sets = [s[len("model."):] for s in args.set if s.startswith("model.")]
    apply_overrides(cfg, train_sets)
    Trainer(args.preset, Path(args.data), Path(args.out), cfg, model_sets, args.max_steps, args.max_minutes,
            args.resume, args.fsdp).run()
