"""The report's bar charts: groups on the x axis, one bar per series (model), 95% intervals as error bars."""

from __future__ import annotations

from pathlib import Path

from opengpt4.files import atomic_write

Point = tuple[float, float, float] | None  # (value, interval low, interval high); None: not measured


def grouped_bars(groups: list[str], series: dict[str, list[Point]], png: Path, ylabel: str, title: str,
                 chance: float | None = None, baseline: tuple[str, list[float | None]] | None = None) -> None:
    """Bars per group and series with their intervals; `chance` a dashed line across, `baseline`
    (label, one value per group) a black tick over each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(len(series), 1) * 0.5 + 3), 3.8), dpi=100)
    for i, (name, points) in enumerate(series.items()):
        xs = [x[j] + (i - (len(series) - 1) / 2) * width for j, p in enumerate(points) if p is not None]
        values = [p for p in points if p is not None]
        if not values:
            continue
        heights = [v for v, _, _ in values]
        errors = [[v - lo for v, lo, _ in values], [hi - v for v, _, hi in values]]
        ax.bar(xs, heights, width, yerr=errors, capsize=2, label=name)
    if chance is not None:
        ax.axhline(chance, ls="--", color="#888888", lw=1, label="chance")
    if baseline is not None:
        label, values = baseline
        for j, v in enumerate(values):
            if v is not None:
                ax.hlines(v, x[j] - 0.45, x[j] + 0.45, colors="black", lw=2, label=label if j == 0 else None)
    tilt = len(groups) > 4 or max(map(len, groups)) > 12  # long labels would overlap
    ax.set_xticks(x, groups, rotation=25 if tilt else 0, ha="right" if tilt else "center")
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
