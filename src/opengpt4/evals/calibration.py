"""Calibration: does a model's confidence in its answer match how often it is right?

`expected_calibration_error` bins answers by confidence (equal-width bins over [0, 1]) and
averages |accuracy - mean confidence| over the bins, weighted by how many answers fall in
each (Guo et al., 2017). `reliability_diagram` draws the figure of the GPT-4 announcement:
accuracy per confidence bin as bars against the diagonal of perfect calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from opengpt4.files import atomic_write


def _bins(confidences: Sequence[float], correct: Sequence[bool | float], bins: int):
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape:
        raise ValueError(f"{len(conf)} confidences but {len(hit)} correctness values")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    # Bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    hit_sum = np.bincount(index, weights=hit, minlength=bins)
    return counts, conf_sum, hit_sum


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool | float], bins: int = 10) -> float:
    counts, conf_sum, hit_sum = _bins(confidences, correct, bins)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(np.abs(hit_sum - conf_sum).sum() / total)  # = sum_b n_b/N * |acc_b - conf_b|


def run_confidences(run_dir: str | Path) -> tuple[dict, list[float], list[bool]]:
    """(spec, confidences, correct) of an eval run directory's scored multiple-choice samples."""
    from opengpt4.errors import OpenGPT4Error
    from opengpt4.evals.compare import read_log

    spec, samples, _ = read_log(run_dir)
    scored = [(float(s["extra"]["confidence"]), s["score"] == 1) for s in samples.values()
              if "confidence" in s.get("extra", {}) and s.get("score") is not None]
    if not scored:
        raise OpenGPT4Error(f"{run_dir}: no sample reports a confidence ({spec['eval']} is not multiple choice)")
    return spec, [c for c, _ in scored], [k for _, k in scored]


def reliability_diagram(confidences: Sequence[float], correct: Sequence[bool | float], path: str | Path,
                        title: str, bins: int = 10) -> None:
    """A PNG at `path`, written to a temp file first and renamed (no half-written figure)."""
    reliability_diagrams([(title, confidences, correct)], path, bins)


def reliability_diagrams(panels: Sequence[tuple[str, Sequence[float], Sequence[bool | float]]], path: str | Path,
                         bins: int = 10) -> None:
    """One reliability diagram per (title, confidences, correct), side by side in one PNG: the
    announcement's before/after post-training figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.8), dpi=100, squeeze=False)
    for ax, (title, confidences, correct) in zip(axes[0], panels, strict=True):
        counts, _, hit_sum = _bins(confidences, correct, bins)
        accuracy = np.divide(hit_sum, counts, out=np.zeros(bins), where=counts > 0)
        ece = expected_calibration_error(confidences, correct, bins)
        ax.bar(edges[:-1], accuracy, width=1 / bins, align="edge", color="#4c72b0", edgecolor="white",
               label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="#999999", label="perfect calibration")
        for left, n in zip(edges[:-1], counts, strict=True):
            if n:
                ax.text(left + 0.5 / bins, 0.01, str(int(n)), ha="center", va="bottom", fontsize=7, color="white")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="P(answer)", ylabel="P(correct)")
        ax.set_title(f"{title}\nECE = {ece:.3f}", fontsize=9, wrap=True)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
