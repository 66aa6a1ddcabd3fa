"""What the sweep measures of a trained model: bits per byte on the held-out code, and pass rates.

Bits per byte: the whole held-out shard (every module of `data.code.HELDOUT_MODULES`), cut
into consecutive rows of seq_len; every byte is a target exactly once, predicted from up to
seq_len bytes before it (the model's training context); a document's BOS is context, never
a target. In float32, whatever the training precision.

Capability: the world's held-out Python functions (never in training: `World._functions`'
"eval" pool), the first PROBLEMS of them. A problem is its signature and docstring; the
model writes the body's first line (every function in the world has a one-line body) and
the program prompt + body + the problem's asserts runs in the evals sandbox. n samples per
problem at SAMPLE_TEMPERATURE give a pass rate; bodies that do not compile fail without
running, and identical programs run once.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from opengpt4.data.loader import read_index
from opengpt4.data.world import World
from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
from opengpt4.evals.sandbox import run_many
from opengpt4.model.transformer import IGNORE_INDEX, Transformer
from opengpt4.scaling.data import CODE
from opengpt4.tokenizer import Tokenizer

PROBLEMS = 25
SAMPLE_TEMPERATURE, SAMPLE_TOP_P, MAX_BODY_BYTES = 0.8, 0.95, 64


def heldout_ids(data_dir: Path) -> tuple[torch.Tensor, int]:
    """The held-out code shard's token ids, and the BOS id (context, never a target)."""
    index = read_index(data_dir)
    entry = index["domains"][CODE]["val"]
    ids = torch.from_numpy(np.fromfile(data_dir / entry["file"], dtype=index["dtype"]).astype(np.int64))
    return ids, Tokenizer.from_dir(data_dir, index["tokenizer"]).bos_id


@torch.no_grad()
def heldout_bpb(model: Transformer, data_dir: Path, seq_len: int, rows_per_batch: int = 32) -> dict[str, float]:
    """{"bpb", "bytes"} of the model on the held-out code shard."""
    ids, bos = heldout_ids(data_dir)
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    starts = list(range(0, len(ids) - 1, seq_len))
    for lo in range(0, len(starts), rows_per_batch):
        rows = [ids[s : min(s + seq_len + 1, len(ids))] for s in starts[lo : lo + rows_per_batch]]
        for same in _by_length(rows):  # the last row is shorter: a batch of its own
            x = torch.stack([r[:-1] for r in same])
            y = torch.stack([r[1:] for r in same])
            y = torch.where(y == bos, IGNORE_INDEX, y)
            nats += float(model(x, None, targets=y, reduction="sum"))
            count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return {"bpb": nats / count / math.log(2), "bytes": count}


def _by_length(rows: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[int, list[torch.Tensor]] = {}
    for r in rows:
        groups.setdefault(len(r), []).append(r)
    return list(groups.values())


def problems(seed: int = 0, world_size: str = "mini") -> list[dict]:
    """[{"name", "prompt", "tests"}]: the world's first PROBLEMS held-out functions."""
    functions = World.generate(seed, world_size)._functions()["eval"][:PROBLEMS]
    return [{"name": f.name, "prompt": f.prompt, "tests": f.tests} for f in functions]


def program(problem: dict, body: str) -> str:
    return f"{problem['prompt']}{body.rstrip()}\n\n\n{problem['tests']}"


def compiles(source: str) -> bool:
    with warnings.catch_warnings():  # a sampled body's `x is 1` warns; thousands of them are noise on the console
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            compile(source, "<sample>", "exec")  # compiling runs nothing
        except (SyntaxError, ValueError):
            return False
    return True


def pass_rates(model: Transformer, tokenizer: Tokenizer, todo: list[dict], n: int, seed: int = 0) -> dict[str, dict]:
    """{problem name: {"passed", "samples", "distinct_programs"}} from n samples per problem."""
    engine = Engine(model.eval(), tokenizer, pack=False)
    params = SamplingParams(n=n, max_tokens=MAX_BODY_BYTES, temperature=SAMPLE_TEMPERATURE, top_p=SAMPLE_TOP_P,
                            seed=seed, stop=["\n"])
    # One problem at a time: its n rows share a KV cache of n x context (all problems at once, 2,500 rows, took
    # 7 GB for w160l4).
    bodies = {p["name"]: [c.text for c in engine.generate([Prompt([tokenizer.bos_id, *tokenizer.encode(p["prompt"])])],
                                                         params)[0]] for p in todo}
    programs = sorted({program(p, b) for p in todo for b in bodies[p["name"]] if compiles(program(p, b))})
    results = dict(zip(programs, run_many(programs, timeout=5.0), strict=True)) if programs else {}
    out = {}
    for p in todo:
        runs = [program(p, b) for b in bodies[p["name"]]]
        passed = sum(1 for r in runs if r in results and results[r].status == "passed")
        out[p["name"]] = {"passed": passed, "samples": len(runs), "distinct_programs": len(set(runs))}
    return out


def neg_mean_log_pass_rate(rates: dict[str, dict]) -> float:
    """The announcement's capability metric, -mean over problems of log(pass rate). A problem never
    passed would make it infinite: pass rates are (passed + 0.5) / (samples + 1) (Jeffreys' prior)."""
    return -float(np.mean([math.log((r["passed"] + 0.5) / (r["samples"] + 1)) for r in rates.values()]))
