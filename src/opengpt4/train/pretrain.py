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
import os
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
RESERVE_MARGIN = 1.5  # x the measured eval + checkpoint time held back from a time budget
PLAIN_EVERY = 10.0  # seconds between progress lines when the output is not a terminal


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


def process_age() -> float:
    """Seconds since this process started (Linux; 0 elsewhere): a time budget counts the start-up,
    torch's import included, as `time opengpt4 train ...` does."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in ticks since boot
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)


class Trainer:
    def __init__(self, preset: str, data: Path, out: Path, cfg: TrainConfig, model_overrides: list[str],
                 max_steps: int | None, max_minutes: float | None, resume: bool, fsdp: bool) -> None:
        self.started = time.perf_counter() - process_age()
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

        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        # What the final eval and checkpoint cost, measured (None: not yet), and the last step's time:
        # a time budget stops training when they no longer fit, so that it holds them too.
        self.eval_seconds: float | None = None
        self.save_seconds: float | None = None
        self.step_seconds = 0.0
        self.schedule_progress, self.finished = 0.0, False  # rank 0's progress() and done(), see sync_clock
        self.evaluated_at: int | None = None  # the steps the last eval and checkpoint were made at
        self.saved_at: int | None = None
        self.metrics = MetricsLog(out / METRICS_FILE)
        if state is not None:
            load_optimizer(self.optimizer, self.param_names, out / OPTIMIZER_FILE)
            self.loader.load_state_dict(state["loader"])
            self.step, self.tokens, self.elapsed_before = state["step"], state["tokens"], state["elapsed"]
            self.eval_seconds, self.save_seconds = state.get("eval_seconds"), state.get("save_seconds")
            self.evaluated_at = self.saved_at = self.step  # the checkpoint: saved then, with an eval if it was final
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
    @property
    def elapsed(self) -> float:
        """Wall-clock seconds of the run: earlier processes' (resumed) and this one's since it started."""
        return self.elapsed_before + time.perf_counter() - self.started

    @property
    def reserve(self) -> float:
        """Seconds held back from a time budget for the final eval and checkpoint: their measured cost
        with a margin, as the machine's load (and the probes' answer lengths) vary."""
        return RESERVE_MARGIN * ((self.eval_seconds or 0.0) + (self.save_seconds or 0.0))

    def progress(self) -> float:
        """Fraction of the run done: by steps, or by the wall-clock time there is for training."""
        parts = [self.step / self.max_steps if self.max_steps else 0.0]
        if self.max_seconds:
            training = self.max_seconds - self.reserve
            parts.append(self.elapsed / training if training > 0 else 1.0)
        return min(max(parts), 1.0)

    def done(self) -> bool:
        """No step is left: the step budget is spent, or one more step would not leave time for the
        final eval and checkpoint."""
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return self.max_seconds is not None and self.elapsed + self.step_seconds + self.reserve >= self.max_seconds

    def sync_clock(self) -> None:
        """Take rank 0's progress() and done() on every rank: ranks reading their own clocks would
        apply different learning rates, or one would stop while another waits in a collective."""
        mine = [self.progress(), float(self.done())] if self.dist.is_main else [0.0, 0.0]
        progress, done = distributed.all_reduce_sum(torch.tensor(mine, dtype=torch.float64), self.dist).tolist()
        self.schedule_progress, self.finished = progress, done > 0

    def train_step(self) -> dict[str, float]:
        d, cfg = self.dist, self.cfg
        start = time.perf_counter()
        micro_batches = self.loader.next()
        counted = sum(int((b.targets != IGNORE_INDEX).sum()) for b in micro_batches)
        n_valid = float(distributed.all_reduce_sum(torch.tensor(float(counted)), d))
        lr = lr_at(cfg, self.step, self.schedule_progress)
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
        seconds = self.step_seconds = time.perf_counter() - start
        self.step += 1
        self.tokens += cfg.batch_size * cfg.seq_len
        tokens_per_s = cfg.batch_size * cfg.seq_len / seconds
        return {"step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr,
                "grad_norm": float(distributed.full_tensor(grad_norm)), "tokens_per_s": tokens_per_s,
                "mfu": self.flops_per_step / seconds / (self.peak_flops * d.world_size)}

    def evaluate(self) -> dict[str, Any]:
        """Val loss per domain and the probes, added to the metrics; timed, for the reserve."""
        start = time.perf_counter()
        val = val_losses(self.model, self.val_batches, self.autocast)
        model = distributed.unwrap(self.model) if not self.fsdp else self.model
        probe = self.probes.run(model, self.tokenizer)
        result = {"step": self.step, "tokens": self.tokens, "val": val, "probe": probe}
        self.metrics.append(result)
        self.evaluated_at, self.eval_seconds = self.step, time.perf_counter() - start
        return result

    def save(self) -> None:
        start = time.perf_counter()
        plain = plain_model(self.model, self.model_config)  # collective under FSDP
        optim = optimizer_tensors(self.optimizer, self.param_names)
        self.saved_at = self.step
        if self.dist.is_main:
            self._write_checkpoint(plain, optim)
        self.save_seconds = time.perf_counter() - start

    def _write_checkpoint(self, plain: Transformer, optim: dict[str, torch.Tensor]) -> None:
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed, "max_steps": self.max_steps,
                 "max_minutes": self.max_seconds / 60 if self.max_seconds else None,
                 "eval_seconds": self.eval_seconds, "save_seconds": self.save_seconds,
                 "loader": self.loader.state_dict(), "train_config": dataclasses.asdict(self.cfg),
                 "data": str(self.data), "world_size": self.dist.world_size}

        def write_extra(tmp: Path) -> None:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            save_optimizer(optim, tmp / OPTIMIZER_FILE)
            self.metrics.write(tmp / METRICS_FILE)
            plot_metrics(self.metrics.lines, tmp / PLOT_FILE)

        save_checkpoint(self.out, plain, self.tokenizer, write_extra=write_extra)

    def run(self) -> None:
        d, cfg = self.dist, self.cfg
        if d.is_main:
            n = self.model_config.num_params()
            print(f"model {self.model_config.name}: {n / 1e6:.2f}M parameters, {cfg.batch_size * cfg.seq_len:,} "
                  f"tokens/step, mixture {self.weights}, peak {self.peak_flops / 1e9:.0f} GFLOP/s per rank, "
                  f"{d.world_size} rank(s)", file=sys.stderr)
        with Report(self, enabled=d.is_main) as report:
            if self.max_seconds:
                # A time budget must hold the final eval and checkpoint: measure them first, on the
                # untrained model (whose probe answers run to their full 12 tokens, the slowest case).
                # The run gets a step-0 point on its curves and a checkpoint to resume from.
                if self.eval_seconds is None:
                    report.eval(self.evaluate())
                if self.save_seconds is None:  # also on resume: a checkpoint holds the save before its own
                    self.save()
            self.sync_clock()
            while not self.finished:
                line = self.train_step()
                self.sync_clock()
                if self.step % cfg.log_every == 0 or self.finished:
                    self.metrics.append(line)
                report.step(line)
                evaluate = bool(cfg.eval_every and self.step % cfg.eval_every == 0)
                save = bool(cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                if evaluate:
                    report.eval(self.evaluate())
                if save:
                    self.save()
                if evaluate or save:
                    distributed.barrier(d)
                    self.sync_clock()  # they took time: the next step may no longer fit
            if self.evaluated_at != self.step:
                report.eval(self.evaluate())
            if self.saved_at != self.step:
                self.save()
            distributed.barrier(d)
        distributed.shutdown(d)


class Report:
    """Training progress for people: a live bar on a terminal; elsewhere (a log file, CI, nohup)
    a plain line every PLAIN_EVERY seconds, and evals on one line each, never wrapped."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        from rich.console import Console

        self.trainer, self.enabled = trainer, enabled
        self.live = Console().is_terminal
        self.bar = None
        self.printed = time.perf_counter()

    def __enter__(self) -> Report:
        if self.enabled and self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.fields[steps]}"),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=1.0, completed=self.trainer.progress(),
                                          steps=self.steps(), info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def steps(self) -> str:
        t = self.trainer
        return f"{t.step}/{t.max_steps} steps" if t.max_steps else f"{t.step} steps"

    def step(self, line: dict[str, float]) -> None:
        if not self.enabled:
            return
        info = f"loss {line['loss']:.3f}  {line['tokens_per_s']:,.0f} tok/s  MFU {100 * line['mfu']:.1f}%"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.trainer.progress(), steps=self.steps(), info=info)
        elif time.perf_counter() - self.printed >= PLAIN_EVERY or self.trainer.finished:
            t = self.trainer
            left = f", {_clock(t.max_seconds - t.elapsed)} left" if t.max_seconds else ""
            print(f"{self.steps()}  {info}  {_clock(t.elapsed)} elapsed{left}", flush=True)
            self.printed = time.perf_counter()

    def eval(self, result: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(_format_eval(result), soft_wrap=True)
        else:
            print(_format_eval(result), flush=True)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(max(int(seconds), 0), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


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
