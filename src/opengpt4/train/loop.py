"""The one training loop: pretraining, SFT and the post-training objectives all run through `Trainer`.

    objective = Pretraining(...)      # or SFT(...): the model, its batches, its loss and its evals
    Trainer(objective, cfg, out, dist, state, max_steps=..., max_minutes=..., fsdp=...).run()

As in torchtitan, the trainer owns what every run shares: AdamW and its parameter groups
(optim.py), the learning-rate schedule, the step and wall-clock budgets, gradient accumulation,
DDP or FSDP2 under torchrun (distributed.py), checkpoints (weights, optimizer state, the
objective's data position, the metrics so far), metrics.jsonl + loss.png, and the progress
report. An `Objective` says what is trained and on what.

The loss of a step is summed over what it averages (tokens, pairs) and divided by the global
count, so one process with gradient accumulation and N processes with DDP compute the same
update. A checkpoint holds everything a run needs to continue with exactly the losses it
would have had, so a run killed after one resumes as if it never stopped. SIGTERM (a scheduler's
preemption, torchrun stopping its workers) and Ctrl-C stop a run after the step in progress and save
it; a second one acts at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from opengpt4.config import LoopConfig, ModelConfig
from opengpt4.errors import CheckpointError, ConfigError, OpenGPT4Error, TrainingStopped
from opengpt4.model.checkpoint import save_checkpoint
from opengpt4.model.precision import autocast_dtype
from opengpt4.model.transformer import IGNORE_INDEX, Transformer
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
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


@dataclass
class Snapshot:
    """What a checkpoint stores of the trained model: a plain Transformer (what Engine, the evals and
    the server load) and any further tensors a resume needs (LoRA adapters), by file name."""

    model: Transformer
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    write_extra: Callable[[Path], None] | None = None  # writes further files (a head and its labels) into
    # the checkpoint's temp dir, so they land atomically with the weights


class Objective(Protocol):
    """What a run trains and on what; the Trainer does the rest.

    `model` is the module to optimise: float32 master weights, not yet wrapped (the Trainer moves
    it to the device and wraps it for DDP, or FSDP2 which shards its `.model.layers`). Parameters
    with requires_grad False stay out of the optimizer (LoRA's frozen base, a frozen reference).
    The objective builds the model itself, from the checkpoint being resumed when there is one."""

    name: str  # the run's label in the progress bar: "train", "sft"
    model: nn.Module
    tokenizer: Tokenizer  # saved with every checkpoint

    def describe(self) -> str:
        """One line about the run, printed when it starts."""

    def default_steps(self) -> int:
        """The run's length when neither a step nor a time budget is given."""

    def next_batches(self) -> list[Any]:
        """This rank's micro-batches of the next optimizer step (the global batch split by rank, in order)."""

    def count(self, batch: Any) -> int:
        """How many things `loss(batch)` sums over (target tokens, pairs): the step divides by the global total."""

    def tokens(self, batch: Any) -> int:
        """Tokens the batch feeds the model (for tokens/s)."""

    def flops(self, batch: Any) -> float:
        """FLOPs the batch's forward and backward cost (the MFU numerator): ModelConfig.step_flops with
        the LM head counted where it runs and frozen weights at 4 per weight, not 6."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The batch's summed loss, a scalar; called under autocast with the wrapped model."""

    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """Eval metrics for the metrics log; a "val" dict of losses is drawn on the loss curve.
        `autocast`: the training precision's context, for losses comparable with training's."""

    def format_eval(self, result: dict[str, Any]) -> str:
        """One line for people about `evaluate`'s result (with "step" and "tokens" added)."""

    def snapshot(self, model: nn.Module) -> Snapshot:
        """The model to checkpoint, on CPU (collective under FSDP: every rank calls it)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs besides weights and optimizer (the data position), JSON-serialisable;
        stored at the top level of trainer_state.json, so keys must not clash with the loop's."""


class SeededEpochs:
    """The order in which a fine-tuning objective visits its n rows: endless epochs, epoch e a
    permutation seeded by [seed, e]. The global batch of step s is a function of s alone, so a
    checkpoint's data position is the step, and any (ranks x micro-batches) split of the same
    batch sees the same rows."""

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation): only the current one

    def steps_for(self, epochs: float) -> int:
        return max(math.ceil(epochs * self.n_rows / self.batch_size), 1)

    def rows(self, step: int, d: distributed.Dist) -> list[int]:
        """This rank's share of step `step`'s global batch, as row indices."""
        b = self.batch_size
        lo = step * b + d.rank * b // d.world_size
        return [self._row(g) for g in range(lo, lo + b // d.world_size)]

    def _row(self, g: int) -> int:
        epoch, at = divmod(g, self.n_rows)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_rows))
        return int(self._order[1][at])


def next_token_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Summed next-token cross-entropy over a batch's targets (IGNORE_INDEX where no loss): the
    objective of pretraining and SFT."""
    device = next(model.parameters()).device
    images = batch.images.to(device) if batch.images is not None else None
    return model(batch.input_ids.to(device), images, targets=batch.targets.to(device), reduction="sum")


def target_count(batch: Any) -> int:
    return int((batch.targets != IGNORE_INDEX).sum())


def micro_batches(cfg: LoopConfig, d: distributed.Dist) -> int:
    """Micro-batches per rank and step: the global batch split over ranks, then into micro_batch_size rows."""
    per_rank = cfg.batch_size // d.world_size
    micro = cfg.micro_batch_size or per_rank
    if cfg.batch_size % d.world_size or per_rank % micro:
        raise OpenGPT4Error(f"batch_size {cfg.batch_size} must split evenly over {d.world_size} ranks "
                            f"and micro-batches of {micro}")
    return per_rank // micro


def plain_model(model: nn.Module, config: ModelConfig,
                state: dict[str, torch.Tensor] | None = None) -> Transformer:
    """An unwrapped, unsharded Transformer with the trained weights on CPU (collective under FSDP).
    `state`: the weights to use instead of `model`'s (gathered and changed by the caller)."""
    if state is None:
        state = gather_parameters(model)
    with torch.device("meta"):
        plain = Transformer(config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_and_materialize()
    return plain


def gather_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, whole and on CPU, by its name in the unwrapped model (collective under FSDP)."""
    return {name: distributed.full_tensor(p) for name, p in distributed.unwrap(model).named_parameters()}


def process_age() -> float:
    """Seconds since this process started (Linux; 0 elsewhere): a time budget counts the start-up,
    torch's import included, as `time opengpt4 train ...` does."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in ticks since boot
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)


def read_state(out: Path) -> dict[str, Any]:
    """trainer_state.json of the checkpoint a run resumes from."""
    file = out / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{out}: nothing to resume (no {STATE_FILE})")
    return json.loads(file.read_text())


class Trainer:
    def __init__(self, objective: Objective, cfg: LoopConfig, out: Path, dist: distributed.Dist,
                 state: dict | None, *, max_steps: int | None, max_minutes: float | None, fsdp: bool) -> None:
        """`state`: the trainer_state.json being resumed (the objective has loaded its weights), or None."""
        self.started = time.perf_counter() - process_age()
        self.objective, self.cfg, self.out, self.dist, self.fsdp = objective, cfg, out, dist, fsdp
        d = dist
        self.model = distributed.wrap(objective.model.to(d.device), d, fsdp)
        self.optimizer, self.param_names = build_optimizer(self.model, cfg)

        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        # What the final eval and checkpoint cost, measured (None: not yet), and the last step's time:
        # a time budget stops training when they no longer fit, so that it holds them too.
        self.eval_seconds: float | None = None
        self.save_seconds: float | None = None
        self.step_seconds = 0.0
        self.schedule_progress, self.finished = 0.0, False  # rank 0's progress() and done(), see sync_clock
        self.evaluated_at: int | None = None  # the steps the last eval and checkpoint were made at
        self.saved_at: int | None = None
        self.stop_signal: int | None = None  # SIGTERM or SIGINT this rank received: stop after this step and save
        self.stopped = False  # any rank received one (sync_clock): every rank stops at the same step
        self.metrics = MetricsLog(out / METRICS_FILE)
        if state is not None:
            load_optimizer(self.optimizer, self.param_names, out / OPTIMIZER_FILE)
            self.step, self.tokens, self.elapsed_before = state["step"], state["tokens"], state["elapsed"]
            self.eval_seconds, self.save_seconds = state.get("eval_seconds"), state.get("save_seconds")
            self.evaluated_at = self.saved_at = self.step  # the checkpoint: saved then, with an eval if it was final
            self.metrics = MetricsLog.resume(out / METRICS_FILE, self.step)
            if max_steps is None and max_minutes is None:  # the resumed run's own budget
                max_steps, max_minutes = state.get("max_steps"), state.get("max_minutes")
        if max_steps is None and max_minutes is None:
            max_steps = objective.default_steps()
        self.max_steps, self.max_seconds = max_steps, (max_minutes * 60 if max_minutes else None)
        self.warmup_steps = cfg.warmup_steps
        if cfg.warmup_fraction:
            if not self.max_steps or self.max_seconds:
                raise ConfigError("warmup_fraction needs a step or FLOP budget (a time budget has no step count)")
            self.warmup_steps = max(round(cfg.warmup_fraction * self.max_steps), 1)
        if d.is_main:  # metrics.jsonl is appended as the run goes, before the first checkpoint makes `out`
            out.mkdir(parents=True, exist_ok=True)
        dtype = autocast_dtype(cfg.dtype, d.device)
        self.autocast = (torch.autocast(d.device.type, dtype=dtype) if dtype != torch.float32
                         else contextlib.nullcontext())
        self.peak_flops = matmul_peak_flops(dtype, d.device)

    # --- the clock ---------------------------------------------------------------------
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
        mine.append(float(self.stop_signal is not None))  # a signal to any rank stops them all at the same step
        progress, done, stop = distributed.all_reduce_sum(torch.tensor(mine, dtype=torch.float64), self.dist).tolist()
        self.schedule_progress, self.stopped = progress, stop > 0
        self.finished = done > 0 or self.stopped

    # --- a step, an eval, a checkpoint --------------------------------------------------
    def train_step(self) -> dict[str, float]:
        d, cfg, objective = self.dist, self.cfg, self.objective
        start = time.perf_counter()
        micro_batches = objective.next_batches()
        local = [sum(objective.count(b) for b in micro_batches), sum(objective.tokens(b) for b in micro_batches),
                 sum(objective.flops(b) for b in micro_batches)]
        counted, tokens, flops = distributed.all_reduce_sum(torch.tensor(local, dtype=torch.float64), d).tolist()
        lr = lr_at(cfg, self.step, self.schedule_progress, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss_sum = torch.zeros(())
        for i, b in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            if self.fsdp and d.enabled:
                self.model.set_requires_gradient_sync(last)
            sync = self.model.no_sync() if d.enabled and not self.fsdp and not last else contextlib.nullcontext()
            with sync:
                with self.autocast:
                    loss = objective.loss(self.model, b)
                # DDP and FSDP average gradients over ranks; dividing by the global count (x ranks)
                # makes the update the mean over everything the global batch counts.
                (loss * d.world_size / counted).backward()
            loss_sum += loss.detach().float().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(distributed.all_reduce_sum(loss_sum, d)) / counted
        seconds = self.step_seconds = time.perf_counter() - start
        self.step += 1
        self.tokens += int(tokens)
        line = {"step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr,
                "grad_norm": float(distributed.full_tensor(grad_norm)), "tokens_per_s": tokens / seconds,
                "mfu": flops / seconds / (self.peak_flops * d.world_size)}
        # An objective with more to log per step (RL: the rollout's rewards, KL, refusal rates) says so.
        step_metrics = getattr(objective, "step_metrics", None)
        return line | step_metrics() if step_metrics is not None else line

    def evaluate(self) -> dict[str, Any]:
        """The objective's evals, added to the metrics; timed, for the reserve."""
        start = time.perf_counter()
        evals = self.objective.evaluate(self.model, self.autocast)
        result = {"step": self.step, "tokens": self.tokens, **evals}
        if evals:  # an objective with nothing to evaluate (RL prompts with no held-out file) logs no empty line
            self.metrics.append(result)
        self.evaluated_at, self.eval_seconds = self.step, time.perf_counter() - start
        return result

    def save(self) -> None:
        start = time.perf_counter()
        snapshot = self.objective.snapshot(self.model)  # collective under FSDP
        optim = optimizer_tensors(self.optimizer, self.param_names)
        self.saved_at = self.step
        if self.dist.is_main:
            self._write_checkpoint(snapshot, optim)
        self.save_seconds = time.perf_counter() - start

    def _write_checkpoint(self, snapshot: Snapshot, optim: dict[str, torch.Tensor]) -> None:
        state = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed, "max_steps": self.max_steps,
                 "max_minutes": self.max_seconds / 60 if self.max_seconds else None,
                 "eval_seconds": self.eval_seconds, "save_seconds": self.save_seconds,
                 "train_config": dataclasses.asdict(self.cfg), "world_size": self.dist.world_size,
                 **self.objective.state_dict()}

        def write_extra(tmp: Path) -> None:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            save_optimizer(optim, tmp / OPTIMIZER_FILE)
            for name, tensors in snapshot.files.items():
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name))
            if snapshot.write_extra is not None:
                snapshot.write_extra(tmp)
            self.metrics.write(tmp / METRICS_FILE)
            plot_metrics(self.metrics.lines, tmp / PLOT_FILE)

        save_checkpoint(self.out, snapshot.model, self.objective.tokenizer, write_extra=write_extra)

    # --- the loop ----------------------------------------------------------------------
    @contextlib.contextmanager
    def stop_on_signals(self):
        """While training, SIGTERM and SIGINT ask for a stop after the step in progress (see run); the
        handler then puts the previous one back, so a second signal acts as it would have (Ctrl-C twice:
        KeyboardInterrupt at once). Python lets only the main thread set handlers: elsewhere, none."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            signal.signal(signum, previous[signum])

        for signum in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(signum)
            if handler == signal.SIG_IGN:  # e.g. SIGINT in a `nohup ... &` job: ignored it stays
                continue
            previous[signum] = signal.SIG_DFL if handler is None else handler  # None: set outside Python
            signal.signal(signum, request_stop)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def run(self) -> None:
        d, cfg = self.dist, self.cfg
        if d.is_main:
            print(f"{self.objective.describe()}, peak {self.peak_flops / 1e9:.0f} GFLOP/s per rank, "
                  f"{d.world_size} rank(s)", file=sys.stderr)
        with self.stop_on_signals(), Report(self, enabled=d.is_main) as report:
            # A time budget must hold the final eval and checkpoint: measure them first, on the
            # untrained model (whose probe answers run to their full length, the slowest case).
            # The run gets a step-0 point on its curves and a checkpoint to resume from.
            if (self.max_seconds and self.eval_seconds is None) or (cfg.eval_at_start and self.step == 0):
                report.eval(self.evaluate())
            if self.max_seconds and self.save_seconds is None:  # also on resume: a checkpoint holds the save before its own
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
            if not self.stopped and self.evaluated_at != self.step:
                report.eval(self.evaluate())  # a stopped run skips it: a scheduler's grace period is short
            if self.saved_at != self.step and not (self.stopped and self.step == 0):
                self.save()
            distributed.barrier(d)
        if self.stopped:
            signum = self.stop_signal or signal.SIGTERM  # a rank the signal reached only through another
            raise TrainingStopped(signal.Signals(signum).name, signum, self.step, self.out,
                                  saved=self.saved_at is not None)


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

            self.bar = Progress(TextColumn(f"[bold]{self.trainer.objective.name}"), BarColumn(),
                                TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TimeRemainingColumn())
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
        line = self.trainer.objective.format_eval(result)
        if self.bar is not None:
            self.bar.console.print(line, soft_wrap=True)
        else:
            print(line, flush=True)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(max(int(seconds), 0), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
