"""Statistics of eval scores: mean, standard error, bootstrap intervals and paired tests.

Every resampling is seeded, so the same scores always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000


@dataclass
class Summary:
    mean: float | None
    stderr: float | None  # sample standard deviation / sqrt(n)
    ci95: tuple[float, float] | None  # percentile bootstrap of the mean
    n: int


def bootstrap_means(values: np.ndarray, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Means of `resamples` resamples with replacement, drawn in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n, means = len(values), []
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means)


def percentile_ci(means: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(scores: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES) -> Summary:
    values = np.asarray(scores, dtype=np.float64)
    n = len(values)
    if n == 0:
        return Summary(None, None, None, 0)
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return Summary(float(values.mean()), stderr, percentile_ci(bootstrap_means(values, seed, resamples)), n)


def half_sample_std(values: Sequence[float], *, seed: int = 0, draws: int = 1000) -> float | None:
    """OpenAI Evals' bootstrap std of accuracy: the std of the means of `draws` halves drawn
    without replacement (theirs is unseeded; this one is seeded). None under two values."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=np.float64)
    half = len(data) // 2
    return float(np.std([rng.choice(data, half, replace=False).mean() for _ in range(draws)]))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes: a two-sided binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"test": "mcnemar_exact", "a_only_correct": a_only, "b_only_correct": b_only, "p_value": float(p)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, seed: int = 0,
                     resamples: int = RESAMPLES) -> dict[str, Any]:
    """Bootstrap of the mean paired difference b - a; two-sided p from how often it crosses zero."""
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(diffs) == 0:
        return {"test": "paired_bootstrap", "mean_diff": None, "ci95": None, "p_value": None}
    means = bootstrap_means(diffs, seed, resamples)
    tail = min(np.mean(means <= 0), np.mean(means >= 0))
    return {"test": "paired_bootstrap", "mean_diff": float(diffs.mean()), "ci95": list(percentile_ci(means)),
            "p_value": float(min(1.0, 2 * tail))}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% for z=1.96): unlike p ± z·stderr it stays in
    [0, 1] and does not collapse to a point at 0 or n successes. None when n is 0."""
    if n == 0:
        return None
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)
