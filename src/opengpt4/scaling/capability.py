"""`opengpt4 scaling capability`: pass rates of the sweep's models (and the target's) on the world's problems.

Written to <sweep>/capability.json as {"samples": n, "runs": {run id: {problem: counts}}};
a run already there is skipped, so the command resumes too. `fit` reads it to predict the
target's -mean log pass rate, which must therefore be measured before `fit`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opengpt4.files import write_text
from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.scaling.fit import isoflop_minima
from opengpt4.scaling.measure import neg_mean_log_pass_rate, pass_rates, problems
from opengpt4.scaling.predict import CAPABILITY, optimal_runs
from opengpt4.scaling.sweep import read_results


def measure_runs(sweep_dir: Path, checkpoints: dict[str, Path], samples: int) -> dict:
    """Pass rates of each checkpoint not yet in capability.json; returns the file's content."""
    file = sweep_dir / CAPABILITY
    state = json.loads(file.read_text()) if file.is_file() else {"samples": samples, "runs": {}}
    todo = {k: v for k, v in checkpoints.items() if k not in state["runs"]}
    tasks = problems()
    with Progress(TextColumn("capability"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[run]}"),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=len(todo), run="")
        for run_id, ckpt in todo.items():
            progress.update(task, run=run_id)
            model, tokenizer = load_checkpoint(ckpt)
            state["runs"][run_id] = pass_rates(model, tokenizer, tasks, state["samples"])
            write_text(file, json.dumps(state, indent=1) + "\n")  # after each model: a kill loses one at most
            progress.advance(task)
    return state


def sweep_checkpoints(sweep_dir: Path) -> dict[str, Path]:
    """Each budget's seed-0 run nearest its IsoFLOP minimum: the points the capability fit uses
    (sampling every run would cost ~1 CPU-minute per model for nothing)."""
    results = read_results(sweep_dir)
    return {r["id"]: sweep_dir / "runs" / r["id"] / "ckpt" for r in optimal_runs(results, isoflop_minima(results))}


def summary(state: dict) -> dict[str, float]:
    return {run_id: neg_mean_log_pass_rate(rates) for run_id, rates in state["runs"].items()}
