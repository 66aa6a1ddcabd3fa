"""Compare two runs of the same eval, sample by sample.

Samples are paired by `sample_id`. Every comparison gets a paired bootstrap 95% interval of
the mean difference (b - a); binary scores also get the exact McNemar test (a binomial test on
the pairs where exactly one run is right), whose p-value is reported. The samples whose score
changed are listed with both answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error
from opengpt4.files import read_jsonl

from .stats import mcnemar, paired_bootstrap


def read_log(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """(spec, samples by id, final report) of a run directory's log.jsonl."""
    file = Path(run_dir) / "log.jsonl"
    if not file.is_file():
        raise OpenGPT4Error(f"{run_dir}: not a run directory (no log.jsonl)")
    spec: dict[str, Any] | None = None
    samples: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] = {}
    for event in read_jsonl(file):
        if "spec" in event:
            spec = event["spec"]
        elif "final_report" in event:
            final = event["final_report"]
        else:
            samples[event["sample_id"]] = event
    if spec is None:
        raise OpenGPT4Error(f"{file}: no spec line")
    return spec, samples, final


def compare(run_a: str | Path, run_b: str | Path, *, seed: int = 0) -> dict[str, Any]:
    spec_a, samples_a, _ = read_log(run_a)
    spec_b, samples_b, _ = read_log(run_b)
    if spec_a["eval"] != spec_b["eval"]:
        raise OpenGPT4Error(f"cannot compare runs of different evals: {spec_a['eval']} ({run_a}) "
                            f"vs {spec_b['eval']} ({run_b})")
    common = [i for i in samples_a if i in samples_b]
    scored = [i for i in common if samples_a[i]["score"] is not None and samples_b[i]["score"] is not None]
    a = [float(samples_a[i]["score"]) for i in scored]
    b = [float(samples_b[i]["score"]) for i in scored]
    binary = all(s in (0.0, 1.0) for s in a + b)
    bootstrap = paired_bootstrap(a, b, seed=seed)
    test = mcnemar([s == 1.0 for s in a], [s == 1.0 for s in b]) if binary else bootstrap
    flipped = [{"sample_id": i, "parsed_a": samples_a[i]["parsed"], "parsed_b": samples_b[i]["parsed"],
                "ideal": samples_a[i]["ideal"], "score_a": samples_a[i]["score"], "score_b": samples_b[i]["score"]}
               for i in scored if samples_a[i]["score"] != samples_b[i]["score"]]
    return {
        "eval": spec_a["eval"],
        "run_a": {"dir": str(run_a), "model": spec_a.get("model"), "mean": sum(a) / len(a) if a else None},
        "run_b": {"dir": str(run_b), "model": spec_b.get("model"), "mean": sum(b) / len(b) if b else None},
        "n_paired": len(scored), "mean_diff": (sum(b) - sum(a)) / len(a) if a else None,
        "n_unscorable": len(common) - len(scored),  # pairs where either run could not score
        "only_in_a": len(samples_a) - len(common), "only_in_b": len(samples_b) - len(common),
        **test, "ci95": bootstrap["ci95"], "flipped": flipped,
    }
