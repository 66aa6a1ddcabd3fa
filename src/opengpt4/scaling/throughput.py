"""`opengpt4 scaling throughput`: training tokens/s per family size, and what a plan would take.

A few seconds of real training steps per size (the trainer's model, AdamW and autocast; random
bytes, which cost what text costs) at each thread count, then the plan's runs scheduled the
way the sweep schedules them (largest first on `jobs` slots) to predict each stage's wall time.
"""

from __future__ import annotations

import contextlib
import heapq
import time

import torch

from opengpt4.config import TrainConfig
from opengpt4.model.transformer import Transformer
from opengpt4.scaling.family import BYTE_OFFSET, flops_per_token
from opengpt4.scaling.plan import Plan, Run
from opengpt4.train.optim import build_optimizer


def measure(name: str, threads: int, seconds: float, plan: Plan) -> dict:
    """Training tokens/s of family shape `name` on `threads` threads at the plan's batch."""
    torch.set_num_threads(threads)
    config = plan.model_config(name)
    torch.manual_seed(0)
    model = Transformer(config)
    model.init_weights()
    optimizer, _ = build_optimizer(model, TrainConfig())
    rows = plan.tokens_per_step // plan.seq_len
    x = torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (rows, plan.seq_len + 1))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if plan.dtype == "bfloat16" else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            loss = model(x[:, :-1], None, targets=x[:, 1:], reduction="sum")
        (loss / x[:, 1:].numel()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = steps * plan.tokens_per_step
    per_token = flops_per_token(config, plan.seq_len)["total"]
    # On a shared machine wall-clock speed says how busy it is; CPU time says what a core of our own
    # would do (one thread: tokens per CPU-second; with more, CPU time also counts threads waiting
    # on each other, so it understates them).
    return {"model": name, "threads": threads, "params": config.num_params(), "tokens_per_s": tokens / wall,
            "tokens_per_cpu_s": tokens / cpu * threads, "gflops": tokens / wall * per_token / 1e9,
            "gflops_cpu": tokens / cpu * threads * per_token / 1e9, "cpu_share": cpu / wall / threads}


def run_seconds(run: Run, plan: Plan, speed: dict[str, float]) -> float:
    """Predicted training seconds of `run` from tokens/s by model."""
    return plan.steps(run) * plan.tokens_per_step / speed[run.model]


def makespan(seconds: list[float], slots: int) -> float:
    """Wall time of jobs run largest first on `slots` parallel slots."""
    ends = [0.0] * slots
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(ends, ends[0] + s)  # the slot that frees first takes the next job
    return max(ends)


STARTUP_SECONDS = 8.0  # a worker's imports, data loading, final eval and checkpoint (measured: 5-10 s)


def predict_stages(plan: Plan, sweep_speed: dict[str, float], target_speed: dict[str, float],
                   target_model: str) -> dict[str, float]:
    runs = plan.runs()
    sweep = makespan([run_seconds(r, plan, sweep_speed) + STARTUP_SECONDS for r in runs], plan.jobs)
    target = run_seconds(plan.target_run(target_model), plan, target_speed) + STARTUP_SECONDS
    return {"sweep_seconds": sweep, "target_seconds": target, "runs": len(runs),
            "sweep_flops": sum(r.budget for r in runs)}
