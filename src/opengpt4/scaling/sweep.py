"""`opengpt4 scaling sweep` and `target`: training runs at fixed FLOP budgets, each a process of its own.

    sweep/plan.json             the plan (a resumed sweep must have the same)
    sweep/runs/<id>/ckpt/       the run's checkpoint (metrics.jsonl written as it goes)
    sweep/runs/<id>/log.txt     its output
    sweep/runs/<id>/result.json written last, atomically: the run is finished when this exists
    sweep/results.jsonl         every finished run's result, in plan order

Runs go through the one trainer (`train.pretrain.build_trainer`, a FLOP budget, warmup as a
fraction of it, WSD, no probes), `plan.jobs` at a time with `plan.threads` threads each,
largest first so the last to finish are small. A killed sweep continues where it stopped:
finished runs are skipped, unfinished ones start again from scratch (a worker dies with
the sweep that started it, so none is left writing).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opengpt4.data.loader import read_index
from opengpt4.errors import SweepError
from opengpt4.files import read_jsonl, write_jsonl, write_text
from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.scaling import data as scaling_data
from opengpt4.scaling.family import flops_per_token
from opengpt4.scaling.measure import heldout_bpb
from opengpt4.scaling.plan import Plan, Run

RESULTS, PLAN, RESULT = "results.jsonl", "plan.json", "result.json"


def train_run(run: Run, plan: Plan, data: Path, run_dir: Path, *, ckpt_every: int = 0, resume: bool = False) -> dict:
    """Train one run and measure it (in this process); returns its result, also written to run_dir.
    ckpt_every / resume: the target's hour-long run checkpoints as it goes and continues after a kill
    (the trainer's resume is exact); a sweep's runs are minutes long and restart instead."""
    from opengpt4.train.pretrain import build_trainer  # the trainer's imports are heavy; the sweep parent needs none

    cfg = plan.train_config(run)
    cfg.ckpt_every = ckpt_every
    cfg.mixture = scaling_data.mixture(read_index(data))
    config = plan.model_config(run.model)
    start = time.perf_counter()
    torch.manual_seed(run.seed)
    trainer = build_trainer(config, data, run_dir / "ckpt", cfg, [], plan.steps(run), None, resume=resume, fsdp=False)
    tokens_before = trainer.tokens  # a resumed run's earlier legs
    trainer.run()
    train_seconds = time.perf_counter() - start
    model, _ = load_checkpoint(run_dir / "ckpt")
    measured = heldout_bpb(model, data, plan.seq_len)
    per_token = flops_per_token(config, plan.seq_len)["total"]
    last = [m for m in trainer.metrics.lines if "loss" in m][-1]
    result = {"id": run.id, "budget": run.budget, "model": run.model, "seed": run.seed,
              "params": config.num_params(), "non_embedding_params": config.num_params(include_embeddings=False),
              "steps": trainer.step, "tokens": trainer.tokens, "flops": per_token * trainer.tokens,
              "lr": cfg.lr, "train_loss": last["loss"], "bpb": measured["bpb"], "heldout_bytes": measured["bytes"],
              "train_seconds": train_seconds, "seconds": time.perf_counter() - start,
              "tokens_per_s": (trainer.tokens - tokens_before) / train_seconds, "threads": torch.get_num_threads(),
              "resumed": resume}  # then train_seconds covers the last leg only
    write_text(run_dir / RESULT, json.dumps(result, indent=2) + "\n")
    return result


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the sweep that started it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def _start(run: Run, plan: Plan, data: Path, run_dir: Path, threads: int) -> subprocess.Popen:
    shutil.rmtree(run_dir, ignore_errors=True)  # what a killed attempt left (its metrics.jsonl would grow on)
    run_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    spec = json.dumps({"run": run.__dict__, "plan": json.loads(plan.to_json()), "data": str(data),
                       "run_dir": str(run_dir), "parent": os.getpid()})
    with open(run_dir / "log.txt", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "opengpt4.scaling.sweep", spec], stdout=log,
                                stderr=subprocess.STDOUT, env=env)


def _check_plan(out: Path, plan: Plan) -> None:
    file = out / PLAN
    if file.is_file():
        if dataclasses.replace(Plan.from_file(file), jobs=plan.jobs) != plan:  # --jobs may change on resume
            raise SweepError(f"{out} holds a sweep with another plan ({file}); give another --out or the same plan")
    else:
        write_text(file, plan.to_json())


def collect(out: Path, runs: list[Run]) -> list[dict]:
    """The finished runs' results, in plan order; also written to results.jsonl."""
    results = []
    for run in runs:
        file = out / "runs" / run.id / RESULT
        if file.is_file():
            results.append(json.loads(file.read_text()))
    write_jsonl(out / RESULTS, results)
    return results


def sweep(out: Path, data: Path, plan: Plan, runs: list[Run] | None = None) -> list[dict]:
    """Run every unfinished run of the plan (or `runs`, trained by the plan's rules); returns all results."""
    out = Path(out)
    read_index(data)
    _check_plan(out, plan)
    runs = plan.runs() if runs is None else runs
    todo = [r for r in runs if not (out / "runs" / r.id / RESULT).is_file()]
    todo.sort(key=lambda r: -r.budget)  # largest first: the stragglers at the end are the short runs
    total = sum(r.budget for r in runs)
    running: dict[subprocess.Popen, Run] = {}
    failed: list[str] = []
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn())
    with Progress(*columns) as progress:
        done_flops = total - sum(r.budget for r in todo)
        task = progress.add_task("sweep", total=len(runs), completed=len(runs) - len(todo), info="")
        while todo or running:
            while todo and len(running) < plan.jobs:
                run = todo.pop(0)
                running[_start(run, plan, data, out / "runs" / run.id, plan.threads)] = run
            progress.update(task, info=f"{done_flops / total:.0%} of the FLOPs; running "
                                       + ", ".join(r.id for r in running.values()))
            pid, status = os.wait()
            proc = next(p for p in running if p.pid == pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            run = running.pop(proc)
            result_file = out / "runs" / run.id / RESULT
            if proc.returncode != 0 or not result_file.is_file():
                failed.append(run.id)
                progress.console.print(f"{run.id}: failed (exit status {proc.returncode}), see its log.txt")
            else:
                done_flops += run.budget
                progress.advance(task)
                r = json.loads(result_file.read_text())
                progress.console.print(f"{run.id}: {r['bpb']:.4f} bpb, {r['params']:,} params, {r['steps']} steps, "
                                       f"{r['seconds'] / 60:.1f} min")
            collect(out, runs)
    results = collect(out, runs)
    if failed:
        raise SweepError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see {out}/runs/<id>/log.txt); "
                         "run the sweep again to retry them")
    return results


def read_results(out: Path) -> list[dict]:
    file = Path(out) / RESULTS
    if not file.is_file():
        raise SweepError(f"{out}: no {RESULTS}; run `opengpt4 scaling sweep --out {out}` first")
    return read_jsonl(file)


def _worker(spec: dict) -> None:
    _die_with_parent(spec["parent"])
    train_run(Run(**spec["run"]), Plan(**spec["plan"]), Path(spec["data"]), Path(spec["run_dir"]))


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
