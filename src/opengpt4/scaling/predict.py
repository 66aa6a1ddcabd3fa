"""The pre-registered prediction (prediction.json) and the target run checked against it.

    opengpt4 scaling fit --sweep S --data D --out prediction.json   # then commit prediction.json
    opengpt4 scaling target --sweep S --data D --prediction prediction.json

`target` refuses to start without prediction.json, when it was made on other data (its
sha256), or when git does not hold it committed as it is (so its commit precedes the
result's); it trains the shape the fit chose at the target budget, and writes target.json:
the observed bpb beside the prediction, its error and whether it fell inside the interval.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np

from opengpt4.data.loader import read_index
from opengpt4.errors import PredictionMissing
from opengpt4.files import write_text
from opengpt4.scaling import fit as F
from opengpt4.scaling.family import SHAPES
from opengpt4.scaling.plan import Plan
from opengpt4.scaling.sweep import read_results

CAPABILITY = "capability.json"  # in the sweep dir: pass rates per run (`opengpt4 scaling capability`)
TARGET = "target.json"


def nearest_shape(n: float, plan: Plan) -> str:
    return min(SHAPES, key=lambda s: abs(math.log(plan.model_config(s).num_params() / n)))


def optimal_runs(results: list[dict], minima: list[dict]) -> list[dict]:
    """Per budget, the first seed's run whose size is nearest the IsoFLOP minimum's."""
    best = []
    first_seed = min(r["seed"] for r in results)
    for m in minima:
        runs = [r for r in results if r["budget"] == m["budget"] and r["seed"] == first_seed]
        best.append(min(runs, key=lambda r: abs(math.log(r["params"] / m["n_opt"]))))
    return best


def capability_fit(sweep_dir: Path, minima: list[dict], target: float, rng: np.random.Generator) -> dict | None:
    """-mean log pass rate = alpha C^-k on each budget's best run, its prediction at `target` and a
    bootstrap interval over problems; None without capability.json. A budget whose model passed no
    sample of any problem is left out: its value is the estimator's floor (the prior), not a
    measurement, and a run of floor values flattens the fit (the first sweep: 3 budgets of 5)."""
    from opengpt4.scaling.measure import neg_mean_log_pass_rate

    file = sweep_dir / CAPABILITY
    if not file.is_file():
        return None
    rates = json.loads(file.read_text())["runs"]
    best = {r["budget"]: r for r in optimal_runs(read_results(sweep_dir), minima)
            if r["id"] in rates and any(c["passed"] for c in rates[r["id"]].values())}
    if len(best) < 2:
        return None
    budgets = sorted(best)
    names = sorted(rates[best[budgets[0]]["id"]])

    def fit_at(problems: list[str]) -> tuple[float, float, float]:
        y = [neg_mean_log_pass_rate({p: rates[best[b]["id"]][p] for p in problems}) for b in budgets]
        k, log_alpha = np.polyfit(np.log(budgets), np.log(y), 1)
        return float(math.exp(log_alpha)), float(-k), float(math.exp(log_alpha) * target**k)

    alpha, k, predicted = fit_at(names)
    draws = [fit_at(list(rng.choice(names, len(names)))) [2] for _ in range(F.BOOTSTRAPS)]
    return {"alpha": alpha, "k": k, "predicted": predicted, "interval": [float(np.quantile(draws, 0.025)),
                                                                           float(np.quantile(draws, 0.975))],
            "runs": {str(b): best[b]["id"] for b in budgets}, "problems": names}


def make_prediction(sweep_dir: Path, data_dir: Path, plan: Plan, seed: int = 0) -> dict:
    results = read_results(sweep_dir)
    if len({r["budget"] for r in results}) < 3:
        raise PredictionMissing(f"{sweep_dir}: a fit needs finished runs at 3 budgets or more")
    rng = np.random.default_rng(seed)
    target = plan.target_budget
    minima = F.isoflop_minima(results)
    fitted = F.fitted_minima(minima)
    noise = F.seed_sd(results)
    law = F.fit_minima(fitted, target, noise["sd"])
    predicted = float(F.power_law(law, target))
    draws = F.bootstrap(results, target, law, rng) + rng.normal(0.0, noise["sd"], F.BOOTSTRAPS)
    n_opt = F.frontier_size(fitted, target)
    shape = nearest_shape(n_opt, plan)
    config = plan.model_config(shape)
    tokens = plan.steps(plan.target_run(shape)) * plan.tokens_per_step
    chin = F.fit_chinchilla(np.array([r["params"] for r in results], float),
                            np.array([r["tokens"] for r in results], float), np.array([r["bpb"] for r in results]))
    index = read_index(data_dir)
    return {
        "target_budget": target, "predicted_bpb": predicted,
        "interval_95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
        "fit": law, "isoflop_minima": minima, "fitted_budgets": [m["budget"] for m in fitted], "seed_sd": noise,
        "target_model": shape, "target_params": config.num_params(), "target_tokens": tokens,
        "frontier_n_opt": n_opt,
        "chinchilla": {**chin, "predicted_bpb": F.chinchilla(chin, config.num_params(), tokens)},
        "capability": capability_fit(sweep_dir, minima, target, rng),
        "runs": len(results), "data_sha256": index["scaling"]["data_sha256"],
        "floors_bits_per_byte": index["scaling"]["floors_bits_per_byte"],
        "git_commit": F.git_commit(), "time": F.now(), "plan": json.loads(plan.to_json()),
    }


def write_prediction(path: Path, prediction: dict) -> None:
    write_text(path, json.dumps(prediction, indent=2) + "\n")


def _committed(path: Path) -> bool:
    """git tracks `path` and it has no uncommitted changes."""
    cwd = path.resolve().parent
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=cwd, capture_output=True)
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path.name], cwd=cwd, capture_output=True)
    return tracked.returncode == 0 and changed.returncode == 0


def load_prediction(path: Path, data_dir: Path, require_commit: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PredictionMissing(f"{path}: no prediction; run `opengpt4 scaling fit` and commit its prediction.json "
                                "before the target run")
    prediction = json.loads(path.read_text())
    data_sha = read_index(data_dir)["scaling"]["data_sha256"]
    if prediction["data_sha256"] != data_sha:
        raise PredictionMissing(f"{path} was made on other data ({prediction['data_sha256'][:12]}, "
                                f"{data_dir} is {data_sha[:12]})")
    if require_commit and not _committed(path):
        raise PredictionMissing(f"{path} is not committed as it is: commit it first (`git add {path.name} && "
                                "git commit`), so the prediction provably precedes the target run")
    return prediction


def compare(prediction: dict, observed: dict, capability: float | None) -> dict:
    predicted, (lo, hi) = prediction["predicted_bpb"], prediction["interval_95"]
    report = {"predicted_bpb": predicted, "interval_95": [lo, hi], "observed_bpb": observed["bpb"],
              "relative_error": (observed["bpb"] - predicted) / predicted, "inside_interval": lo <= observed["bpb"] <= hi,
              "chinchilla_predicted_bpb": prediction["chinchilla"]["predicted_bpb"], "run": observed}
    report["within_3_percent"] = abs(report["relative_error"]) <= 0.03
    cap = prediction.get("capability")
    if cap and capability is not None:
        report["capability"] = {"predicted": cap["predicted"], "interval_95": cap["interval"], "observed": capability,
                                "inside_interval": cap["interval"][0] <= capability <= cap["interval"][1]}
    return report



def _last_commit(path: Path) -> str | None:
    out = subprocess.run(["git", "log", "-1", "--format=%H", "--", path.name], cwd=path.resolve().parent,
                         capture_output=True, text=True)
    return out.stdout.strip() or None


TARGET_CKPT_EVERY = 2000  # steps: about 3 minutes of the target on 2 cores at 1,024 tokens a step


def run_target(sweep_dir: Path, data_dir: Path, prediction_path: Path, require_commit: bool = True) -> dict:
    """Train the prediction's target (in this process, on plan.target_threads threads; a finished one is
    reused), measure it as the sweep measured its runs, and write <sweep>/target.json."""
    import torch

    from opengpt4.model.checkpoint import load_checkpoint
    from opengpt4.scaling.measure import neg_mean_log_pass_rate, pass_rates, problems
    from opengpt4.scaling.sweep import RESULT, train_run
    from opengpt4.train.loop import STATE_FILE

    prediction = load_prediction(prediction_path, data_dir, require_commit)
    plan = Plan(**prediction["plan"])
    run_dir = sweep_dir / "target"
    torch.set_num_threads(plan.target_threads)
    if (run_dir / RESULT).is_file():
        result = json.loads((run_dir / RESULT).read_text())
    else:
        resume = (run_dir / "ckpt" / STATE_FILE).is_file()  # a killed target continues where it stopped
        result = train_run(plan.target_run(prediction["target_model"]), plan, data_dir, run_dir,
                           ckpt_every=TARGET_CKPT_EVERY, resume=resume)
    capability = None
    if prediction.get("capability"):
        model, tokenizer = load_checkpoint(run_dir / "ckpt")
        rates = pass_rates(model, tokenizer, problems(), plan.samples)
        write_text(run_dir / CAPABILITY, json.dumps({"samples": plan.samples, "runs": {"target": rates}}, indent=1))
        capability = neg_mean_log_pass_rate(rates)
    report = compare(prediction, result, capability)
    report["prediction_commit"] = _last_commit(Path(prediction_path))
    write_text(sweep_dir / TARGET, json.dumps(report, indent=2) + "\n")
    return report
