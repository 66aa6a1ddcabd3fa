"""Training metrics: a JSONL log (one object per line), the loss-curve PNG, and the FLOP/s peak for MFU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from opengpt4.files import read_jsonl, write_jsonl


class MetricsLog:
    """Lines kept in memory (they go into every checkpoint) and appended live to `live_path`
    when it exists, so `tail -f` works during training. Reopened per write: a checkpoint save
    replaces the directory that holds it."""

    def __init__(self, live_path: Path, lines: list[dict] | None = None) -> None:
        self.live_path = live_path
        self.lines = list(lines or [])

    @classmethod
    def resume(cls, live_path: Path, step: int) -> MetricsLog:
        """The log of a checkpoint, without the lines a killed run wrote after it."""
        lines = read_jsonl(live_path) if live_path.is_file() else []
        return cls(live_path, [line for line in lines if line.get("step", 0) <= step])

    def append(self, line: dict) -> None:
        self.lines.append(line)
        if self.live_path.parent.is_dir():
            with open(self.live_path, "a") as f:
                f.write(json.dumps(line) + "\n")

    def write(self, path: Path) -> None:
        write_jsonl(path, self.lines)


def plot_metrics(lines: list[dict], png: Path) -> None:
    """Train and per-domain validation loss against tokens seen; probe accuracies beside them, if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in lines if "loss" in m]
    evals = [m for m in lines if "val" in m]
    probes = sorted({k for m in evals for k in m.get("probe", {})})
    if probes:
        fig, (ax_loss, ax_probe) = plt.subplots(1, 2, figsize=(12, 4.5))
    else:  # a run without probes (SFT): the loss alone
        fig, ax_loss = plt.subplots(figsize=(6.5, 4.5))
    if train:
        ax_loss.plot([m["tokens"] for m in train], [m["loss"] for m in train], lw=0.8, alpha=0.6, label="train")
    for domain in sorted({d for m in evals for d in m["val"]}):
        points = [(m["tokens"], m["val"][domain]) for m in evals if domain in m["val"]]
        ax_loss.plot(*zip(*points, strict=True), marker="o", ms=3, label=f"val {domain}")
    ax_loss.set(xlabel="tokens", ylabel="loss (nats/token)", yscale="log", title="loss")
    if ax_loss.lines:  # nothing to label before the first step's line
        ax_loss.legend(fontsize=7)
    if probes:
        for key in (k for k in probes if not k.endswith("_blind")):
            points = [(m["tokens"], m["probe"][key]) for m in evals if key in m.get("probe", {})]
            (line,) = ax_probe.plot(*zip(*points, strict=True), marker="o", ms=3, label=key)
            blind = [m["probe"][f"{key}_blind"] for m in evals if f"{key}_blind" in m.get("probe", {})]
            if blind:  # a property of the questions, not of the model: one dotted line in the probe's colour
                ax_probe.axhline(blind[-1], color=line.get_color(), ls=":", lw=0.8)
        ax_probe.set(xlabel="tokens", ylabel="exact match", ylim=(0, 1),
                     title="probes (held-out questions; dotted: subject-blind guess)")
        ax_probe.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, seconds: float = 0.5, windows: int = 5) -> float:
    """FLOP/s of a square matmul on this process's threads: the MFU denominator on hardware
    without a published peak (a CPU's depends on its clocks and thread count). The best of
    `windows` equal windows: another process on the same cores slows some windows, not the
    peak (one 0.5 s window read 128 and 170 GFLOP/s on the same machine, busy and idle).

    The matrix grows from 128 to at most 1024 while the next size's product fits in a window, so
    the measurement takes about `seconds` everywhere: a bfloat16 matmul on a CPU without native
    bfloat16 (AVX2 only) runs at ~1 GFLOP/s, where a fixed 1024 matrix took 24 s of every
    training run's start. The matrices come from a generator of their own: how many sizes are tried
    depends on the clock, and the global generator must not (it seeds what the run does next)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def product_seconds(n: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        a @ b  # the first call pays for allocation and kernel selection
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        return time.perf_counter() - start, a, b

    n = 128
    took, a, b = product_seconds(n)
    while n < 1024 and took * 8 < seconds / windows:  # the next size costs 8x as much
        n *= 2
        took, a, b = product_seconds(n)
    best = 0.0
    for _ in range(windows):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            a @ b
            runs += 1
        _sync(device)
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
