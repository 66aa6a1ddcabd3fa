"""Run one eval: load its spec and samples, ask the model in batches, log every sample, summarize.

Order and ids: samples keep their file order and get ids `<eval id>.<index in the file>`
(unless a sample or the class gives its own). `limit=N` takes the first N of a shuffle seeded
by `seed`, put back in file order, so a limited run is a representative sample and the same
seed always picks the same one. With the cache (the default) a rerun is served from SQLite.

A run directory holds `log.jsonl` (a spec line, one line per sample, a final report line) and
`results.json` (the report), plus `reliability.png` when samples carry a confidence.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error
from opengpt4.files import write_jsonl, write_text

from .api import CompletionFn, SampleResult
from .completion import CachedCompletionFn, make_completion_fn
from .registry import Registry
from .stats import summarize


def jsonable(obj: Any) -> Any:
    """json.dumps fallback: dataclasses (Loglik, requests) as dicts, paths and the rest as text."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=jsonable, ensure_ascii=False, **kw)


def model_slug(model: str | CompletionFn) -> str:
    name = model if isinstance(model, str) else model.identity
    name = name.rsplit("#", 1)[-1] if "#" in name else Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "model"


def default_out_dir(eval_name: str, model: str | CompletionFn) -> Path:
    base = Path("evals-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}_{eval_name}_{model_slug(model)}"
    out, k = base, 1
    while out.exists():  # two runs in the same second get their own directories
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def as_completion_fn(model: str | CompletionFn, *, cache: bool, cache_path: str | Path | None,
                     dtype: str) -> CompletionFn:
    fn = make_completion_fn(model, dtype=dtype) if isinstance(model, str) else model
    if cache and not isinstance(fn, CachedCompletionFn):
        fn = CachedCompletionFn(fn, cache_path)
    return fn


def select(samples: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or limit >= len(samples):
        return samples
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    return [samples[i] for i in sorted(order[:max(limit, 0)])]


def run_batches(eval_obj: Any, samples: list[dict[str, Any]], workers: int, label: str,
                progress: bool) -> list[SampleResult]:
    """run_batch over batches of eval_obj.batch_size on `workers` threads; results in sample order."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    size = max(1, int(eval_obj.batch_size))
    batches = [samples[i:i + size] for i in range(0, len(samples), size)]
    done: list[list[SampleResult] | None] = [None] * len(batches)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task(label, total=len(samples))
        futures = {pool.submit(eval_obj.run_batch, batch): i for i, batch in enumerate(batches)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results = future.result()
                if len(results) != len(batches[i]):
                    raise OpenGPT4Error(f"{type(eval_obj).__name__}.run_batch returned {len(results)} results "
                                        f"for {len(batches[i])} samples")
                done[i] = results
                bar.advance(task, len(results))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return [r for batch in done for r in batch or []]


def calibration(results: list[SampleResult], out: Path, title: str) -> dict[str, Any]:
    """ECE and a reliability diagram when samples report the confidence of their answer."""
    pairs = [(float(r.extra["confidence"]), r.score == 1) for r in results
             if "confidence" in r.extra and r.score is not None]
    if not pairs:
        return {}
    from .calibration import expected_calibration_error, reliability_diagram

    confidences, correct = [c for c, _ in pairs], [k for _, k in pairs]
    reliability_diagram(confidences, correct, out / "reliability.png", title)
    return {"ece": float(expected_calibration_error(confidences, correct, bins=10)),
            "reliability_png": str(out / "reliability.png")}


def eval_metrics(aggregate: dict[str, Any], tokens: dict[str, int]) -> dict[str, Any]:
    """The eval's own metrics plus the token counts as `oaieval` adds them to every final report
    (usage_prompt_tokens, ...), so the metrics of an OpenAI Evals template read as its report does."""
    usage = {f"usage_{k}": v for k, v in tokens.items()} if tokens["total_tokens"] else {}
    return {**aggregate, **{k: v for k, v in usage.items() if k not in aggregate}}


def cache_counts(fns: Iterable[CompletionFn | None]) -> dict[str, int]:
    unique = {id(f): f for f in fns if isinstance(f, CachedCompletionFn)}.values()
    return {"hits": sum(f.hits for f in unique), "misses": sum(f.misses for f in unique)}


def run_eval(name: str, completion_fn: str | CompletionFn, *, registries: Sequence[str | Path] = (),
             limit: int | None = None, seed: int = 0, out_dir: str | Path | None = None, workers: int = 1,
             grader: str | CompletionFn | None = None, data_dir: str | None = None, cache: bool = True,
             cache_path: str | Path | None = None, dtype: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Run eval `name` on a model (a CompletionFn, or a model spec for make_completion_fn); the report."""
    started = time.time()
    registry = Registry(list(registries))
    spec = registry.get_eval(name)
    model = as_completion_fn(completion_fn, cache=cache, cache_path=cache_path, dtype=dtype)
    grader_spec = grader if grader is not None else spec.args.get("grader")
    grader_fn = None
    if grader_spec is not None:  # the same spec as the model: share its (loaded) completion function
        grader_fn = model if grader_spec == completion_fn else \
            as_completion_fn(grader_spec, cache=cache, cache_path=cache_path, dtype=dtype)
    eval_obj = registry.make_eval(spec, model, seed=seed, data_dir=data_dir, grader=grader_fn)

    samples = eval_obj.load_samples()
    for i, sample in enumerate(samples):
        sample.setdefault("sample_id", f"{spec.name}.{i}")
    ids = [s["sample_id"] for s in samples]
    if len(set(ids)) != len(ids):
        raise OpenGPT4Error(f"{spec.name}: sample ids are not unique")
    samples = select(samples, limit, seed)
    out = Path(out_dir) if out_dir else default_out_dir(spec.name, completion_fn)
    out.mkdir(parents=True, exist_ok=True)

    results = run_batches(eval_obj, samples, workers, spec.name, progress)

    summary = summarize([r.score for r in results if r.score is not None], seed=seed)
    tokens = {k: sum((r.usage or {}).get(k, 0) for r in results) for k in ("prompt_tokens", "completion_tokens")}
    tokens["total_tokens"] = tokens["prompt_tokens"] + tokens["completion_tokens"]
    report = {
        "eval": spec.name, "base_eval": spec.base, "class": spec.cls, "model": model.identity,
        "grader": grader_fn.identity if grader_fn is not None else None,
        # The name of what `score` is: the class's own, not whatever the spec lists first.
        "metric": eval_obj.metric or (spec.metrics[0] if spec.metrics else "score"),
        "score": summary.mean, "stderr": summary.stderr, "ci95": list(summary.ci95) if summary.ci95 else None,
        "n": len(results), "n_unscorable": len(results) - summary.n,
        "metrics": eval_metrics(eval_obj.aggregate(results), tokens),
        **calibration(results, out, f"{spec.name} — {model.identity}"),
        "seed": seed, "limit": limit, "usage": tokens, "cache": cache_counts([model, grader_fn]),
        "run_time_s": round(time.time() - started, 3), "out_dir": str(out),
    }
    header = {"eval": spec.name, "base_eval": spec.base, "class": spec.cls, "args": spec.args,
              "registry": str(spec.registry), "model": model.identity, "grader": report["grader"],
              "seed": seed, "limit": limit, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))}
    events = [{"sample_id": r.sample_id, "prompt": r.prompt, "output": r.output, "parsed": r.parsed,
               "ideal": r.ideal, "score": r.score, "logprobs": r.logprobs, "usage": r.usage, "extra": r.extra}
              for r in results]
    write_jsonl(out / "log.jsonl", [{"spec": header}, *events, {"final_report": report}], default=jsonable)
    write_text(out / "results.json", dumps(report, indent=2) + "\n")
    return report
