"""`opengpt4 scaling fit`: IsoFLOP minima -> L(C) = a C^b + c -> the pre-registered prediction.

1. Per budget, bpb against log N (seeds averaged) is fitted by a parabola; its vertex is the
   budget's compute-optimal size N*(C) and loss L*(C) (the best run when the vertex falls
   outside the sizes tried, flagged). The fit uses the interior minima only, when 3 or more
   are: an edge "minimum" is an upper bound on the budget's optimum, not the optimum (the
   first sweep had 3 of its 5 at the edge), and it bends the curve.
2. L*(C) = exp(alpha) (C / C_target)^b + exp(gamma) is fitted as Chinchilla (Hoffmann et al.
   2022, appendix D.2) fits L(N, D): Huber loss (delta 1e-3) on log L, L-BFGS from a grid of
   starts, the best kept. C is normalised by the target budget, so a = exp(alpha) is the
   reducible loss at the target.
3. The interval: the whole fit repeated on bootstrap resamples of the runs (within each
   budget, with replacement), plus the seed-to-seed noise of a single run (the target is
   one run): the 2.5-97.5% quantiles.
4. Cross-check: L(N, D) = E + A / N^alpha + B / D^beta fitted on every run the same way,
   evaluated at the target's N and D.
5. N*(C) = k C^e by least squares in log-log gives the target's size: the family shape
   nearest to N*(C_target) in log N.
"""

from __future__ import annotations

import itertools
import math
import subprocess
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
BOOTSTRAPS = 200


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _lse(*terms: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(np.stack(terms), axis=0)


def _best(objective, starts) -> tuple[np.ndarray, float]:
    best_x, best_f = None, math.inf
    for x0 in starts:
        r = minimize(objective, np.array(x0, float), method="L-BFGS-B")
        if r.fun < best_f:
            best_x, best_f = r.x, float(r.fun)
    return best_x, best_f


# --- L(C) --------------------------------------------------------------------------------
def fit_power_law(c: np.ndarray, loss: np.ndarray, c_ref: float, starts=None) -> dict:
    """L(C) = a (C / c_ref)^b + e by Huber on log L; returns a, b, e and the log-space params."""
    x, y = np.log(np.asarray(c) / c_ref), np.log(np.asarray(loss))

    def objective(p):
        alpha, b, gamma = p
        return float(huber(_lse(alpha + b * x, np.full_like(x, gamma)) - y).sum())

    if starts is None:
        starts = itertools.product(np.log([0.1, 0.5, 2.0]), [-0.05, -0.15, -0.3, -0.6], np.log([0.3, 1.0, 2.0]))
    (alpha, b, gamma), _ = _best(objective, starts)
    return {"a": math.exp(alpha), "b": float(b), "c": math.exp(gamma), "c_ref": c_ref,
            "log_params": [float(alpha), float(b), float(gamma)]}


def power_law(fit: dict, c: float | np.ndarray) -> np.ndarray:
    return fit["a"] * (np.asarray(c) / fit["c_ref"]) ** fit["b"] + fit["c"]


# --- Chinchilla's L(N, D) ------------------------------------------------------------------
def fit_chinchilla(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> dict:
    """L = E + A / N^alpha + B / D^beta, Huber on log L, from Chinchilla's grid of starts."""
    ln, ld, y = np.log(n), np.log(d), np.log(loss)

    def objective(p):
        a, b, e, alpha, beta = p
        return float(huber(_lse(a - alpha * ln, b - beta * ld, np.full_like(ln, e)) - y).sum())

    starts = itertools.product([0, 5, 10], [0, 5, 10], [-1, -0.5, 0], [0.2, 0.5], [0.2, 0.5])
    (a, b, e, alpha, beta), _ = _best(objective, starts)
    return {"A": math.exp(a), "B": math.exp(b), "E": math.exp(e), "alpha": float(alpha), "beta": float(beta)}


def chinchilla(fit: dict, n: float, d: float) -> float:
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


# --- IsoFLOP minima ------------------------------------------------------------------------
def isoflop_minima(results: list[dict]) -> list[dict]:
    """[{"budget", "n_opt", "bpb_opt", "flops", "interior"}] per budget, by a parabola in log N."""
    by_budget: dict[float, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_budget[r["budget"]][r["params"]].append(r)
    minima = []
    for budget in sorted(by_budget):
        sizes = sorted(by_budget[budget])
        logn = np.log(sizes)
        bpb = np.array([np.mean([r["bpb"] for r in by_budget[budget][n]]) for n in sizes])
        flops = float(np.mean([r["flops"] for n in sizes for r in by_budget[budget][n]]))
        best = int(np.argmin(bpb))
        point = {"budget": budget, "flops": flops, "n_opt": float(sizes[best]), "bpb_opt": float(bpb[best]),
                 "interior": False}
        if len(sizes) >= 3:
            k2, k1, k0 = np.polyfit(logn, bpb, 2)
            vertex = -k1 / (2 * k2) if k2 > 0 else math.nan
            if k2 > 0 and logn[0] <= vertex <= logn[-1]:
                point.update(n_opt=float(math.exp(vertex)), bpb_opt=float(k0 + k1 * vertex + k2 * vertex**2),
                             interior=True)
        minima.append(point)
    return minima


MIN_POINTS = 3  # a curve with 3 parameters


def fitted_minima(minima: list[dict]) -> list[dict]:
    """The minima the fit uses: the interior ones, or all of them when fewer than MIN_POINTS are interior."""
    inside = [m for m in minima if m["interior"]]
    return inside if len(inside) >= MIN_POINTS else minima


def frontier_size(minima: list[dict], c: float) -> float:
    """N*(C) from the minima by least squares in log-log."""
    slope, intercept = np.polyfit(np.log([m["budget"] for m in minima]), np.log([m["n_opt"] for m in minima]), 1)
    return float(math.exp(intercept + slope * math.log(c)))


def seed_sd(results: list[dict]) -> dict:
    """Pooled seed-to-seed standard deviation of final bpb over (budget, size) pairs with several seeds."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        groups[(r["budget"], r["model"])].append(r["bpb"])
    pairs = [g for g in groups.values() if len(g) > 1]
    if not pairs:
        return {"sd": 0.0, "pairs": 0}
    pooled = sum((len(g) - 1) * np.var(g, ddof=1) for g in pairs) / sum(len(g) - 1 for g in pairs)
    return {"sd": float(math.sqrt(pooled)), "pairs": len(pairs)}


def bootstrap(results: list[dict], target: float, fit: dict, rng: np.random.Generator,
              n: int = BOOTSTRAPS) -> np.ndarray:
    """Predictions at `target` from fits to resampled runs (within each budget, with replacement)."""
    by_budget = defaultdict(list)
    for r in results:
        by_budget[r["budget"]].append(r)
    from rich.progress import track

    predictions = []
    for _ in track(range(n), description="bootstrap", transient=True):
        sample = [group[i] for group in by_budget.values() for i in rng.integers(0, len(group), len(group))]
        minima = fitted_minima(isoflop_minima(sample))
        refit = fit_power_law([m["budget"] for m in minima], [m["bpb_opt"] for m in minima], fit["c_ref"],
                              starts=[fit["log_params"], [fit["log_params"][0], -0.3, fit["log_params"][2]]])
        predictions.append(float(power_law(refit, target)))
    return np.array(predictions)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
