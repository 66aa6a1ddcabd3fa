"""Where a scaling run's held-out bits per byte come from: bytes a model can copy from its context, and the rest.

A held-out byte is *copyable* when the 12-byte span it ends also occurs earlier in the same 256-byte row
(the model's context when `scaling.measure.heldout_bpb` scores it): an induction-style copy would predict it.
Each checkpoint's bpb is reported on the copyable bytes, the others, and all, in float32.

    python benchmarks/scaling_copy.py --data data/scaling 3e13=runs/scaling/runs/3e13-w96l3-s0/ckpt \\
        3e14=runs/scaling/target/ckpt --out copy.json

The fourth pre-registered attempt (README, Predictable scaling): the copyable bytes' loss halves from the
sweep's best 3e13 model to the target while the others fall 20%.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import track

from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.scaling.measure import heldout_ids

SPAN = 12


def heldout_rows(data_dir: Path, seq_len: int) -> tuple[torch.Tensor, int]:
    """The held-out code shard as whole rows of seq_len + 1 tokens (the short tail left out), and BOS."""
    ids, bos = heldout_ids(data_dir)
    return torch.stack([ids[s : s + seq_len + 1] for s in range(0, len(ids) - seq_len - 1, seq_len)]), bos


def copyable(rows: torch.Tensor, span: int = SPAN) -> torch.Tensor:
    """[rows, seq_len] bool: the target at each position ends a span seen earlier in its row."""
    out = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool)
    for r, row in enumerate(rows.tolist()):
        seen: set[tuple[int, ...]] = set()
        for i in range(span - 1, len(row)):
            gram = tuple(row[i - span + 1 : i + 1])
            out[r, i - 1] = gram in seen  # target row[i] is position i - 1's prediction
            seen.add(gram)
    return out


@torch.no_grad()
def bits(checkpoint: Path, rows: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """[rows, seq_len] bits of each target under the checkpoint's model."""
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    out = []
    for lo in track(range(0, len(rows), batch), description=checkpoint.parent.name, transient=True):
        x, y = rows[lo : lo + batch, :-1], rows[lo : lo + batch, 1:]
        out.append(F.cross_entropy(model(x, None).float().transpose(1, 2), y, reduction="none"))
    return torch.cat(out) / math.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", metavar="NAME=DIR", help="scaling checkpoints, e.g. 3e13=DIR")
    parser.add_argument("--data", required=True, help="the `opengpt4 scaling data` dir the runs trained on")
    parser.add_argument("--seq-len", type=int, default=256, help="the runs' context (the plan's seq_len)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    rows, bos = heldout_rows(Path(args.data), args.seq_len)
    counted = rows[:, 1:] != bos  # a document's BOS is context, never a target
    copy = copyable(rows) & counted
    other = ~copy & counted
    report = {"span": SPAN, "copyable_share": float(copy.sum() / counted.sum()), "bpb": {}}
    for spec in args.checkpoints:
        name, _, path = spec.partition("=")
        b = bits(Path(path), rows)
        report["bpb"][name] = {"all": float(b[counted].mean()), "copyable": float(b[copy].mean()),
                               "other": float(b[other].mean())}
        print(name, {k: round(v, 4) for k, v in report["bpb"][name].items()}, flush=True)
    print(f"copyable: {report['copyable_share']:.1%} of the held-out bytes")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
