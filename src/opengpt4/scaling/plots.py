"""`opengpt4 scaling plot`: the announcement's two figures and the IsoFLOP curves, as PNGs.

loss.png: held-out bits per byte against training compute normalised so the target is 1,
the sweep's compute-optimal points, the fitted L(C), the prediction with its interval and,
once the target ran, its observed value. capability.png: the same for -mean log pass rate.
isoflop.png: bpb against parameters per budget, the parabola fits and their minima.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from opengpt4.scaling import fit as F


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(results: list[dict], prediction: dict, target: dict | None, png: Path) -> None:
    plt = _pyplot()
    c_target = prediction["target_budget"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([r["budget"] / c_target for r in results], [r["bpb"] for r in results], s=10, c="0.75",
               label="sweep runs")
    minima = prediction["isoflop_minima"]
    fitted = set(prediction.get("fitted_budgets", [m["budget"] for m in minima]))
    for used, style in ((True, {"c": "k", "label": "compute-optimal (IsoFLOP minima, fitted)"}),
                        (False, {"facecolors": "none", "edgecolors": "k", "label": "best run at the edge (not fitted)"})):
        points = [m for m in minima if (m["budget"] in fitted) == used]
        if points:
            ax.scatter([m["budget"] / c_target for m in points], [m["bpb_opt"] for m in points], zorder=3, **style)
    c = np.geomspace(min(m["budget"] for m in minima) / 2, c_target * 2, 200)
    fit = prediction["fit"]
    ax.plot(c / c_target, F.power_law(fit, c), "C0", label=f"L(C) = {F.formula(fit)}")
    alternative = fit.get("f_test", {}).get("irreducible_fit")
    if alternative and not fit["c"]:  # the curve with c the F-test did not keep
        ax.plot(c / c_target, F.power_law(alternative, c), "C0", ls=":", alpha=0.6,
                label=f"with c, not kept: {F.formula(alternative)}")
    lo, hi = prediction["interval_95"]
    p = prediction["predicted_bpb"]
    ax.errorbar([1.0], [p], yerr=[[max(p - lo, 0)], [max(hi - p, 0)]], fmt="D", c="C1", capsize=4, label=f"prediction {p:.3f}")
    if target is not None:
        ax.scatter([1.0], [target["observed_bpb"]], marker="*", s=160, c="C3", zorder=4,
                   label=f"target observed {target['observed_bpb']:.3f}")
    for name, floor in prediction.get("floors_bits_per_byte", {}).items():
        ax.axhline(floor, ls=":", c="0.5", lw=0.8)
        ax.annotate(name, (c[0] / c_target, floor), fontsize=7, va="bottom", color="0.4")
    ax.set(xscale="log", xlabel="compute (target = 1)", ylabel="held-out code, bits per byte",
           title="Predictable scaling: loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_capability(capability: dict, points: dict[str, float], prediction: dict, target: dict | None,
                    png: Path) -> None:
    """`points`: -mean log pass rate by run id; `capability`: prediction.json's capability fit."""
    plt = _pyplot()
    c_target = prediction["target_budget"]
    runs = capability["runs"]
    xs = [float(b) for b in runs]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(np.array(xs) / c_target, [points[runs[b]] for b in runs], c="k", label="sweep (best run per budget)")
    c = np.geomspace(min(xs) / 2, c_target * 2, 200)
    ax.plot(c / c_target, capability["alpha"] * c ** -capability["k"], "C0",
            label=f"{capability['alpha']:.3g} C^-{capability['k']:.3f}")
    lo, hi = capability["interval"]
    p = capability["predicted"]
    ax.errorbar([1.0], [p], yerr=[[max(p - lo, 0)], [max(hi - p, 0)]], fmt="D", c="C1", capsize=4, label=f"prediction {p:.3f}")
    if target is not None and "capability" in target:
        ax.scatter([1.0], [target["capability"]["observed"]], marker="*", s=160, c="C3", zorder=4,
                   label=f"target observed {target['capability']['observed']:.3f}")
    ax.set(xscale="log", xlabel="compute (target = 1)", ylabel="-mean log pass rate",
           title=f"Capability: {len(capability['problems'])} held-out Python problems")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_isoflop(results: list[dict], png: Path) -> None:
    plt = _pyplot()
    by_budget: dict[float, list[dict]] = defaultdict(list)
    for r in results:
        by_budget[r["budget"]].append(r)
    minima = {m["budget"]: m for m in F.isoflop_minima(results)}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, budget in enumerate(sorted(by_budget)):
        runs = by_budget[budget]
        color = f"C{i}"
        ax.scatter([r["params"] for r in runs], [r["bpb"] for r in runs], c=color, s=14, label=f"{budget:.0e} FLOPs")
        sizes = sorted({r["params"] for r in runs})
        if len(sizes) >= 3:
            means = [np.mean([r["bpb"] for r in runs if r["params"] == n]) for n in sizes]
            k = np.polyfit(np.log(sizes), means, 2)
            n = np.geomspace(sizes[0], sizes[-1], 100)
            ax.plot(n, np.polyval(k, np.log(n)), c=color, lw=1)
        m = minima[budget]
        ax.scatter([m["n_opt"]], [m["bpb_opt"]], marker="x", c=color, s=50)
    ax.set(xscale="log", xlabel="parameters", ylabel="held-out code, bits per byte", title="IsoFLOP curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
