"""`opengpt4 eval {run,compare,list}`. Human tables first; for run and compare the report as one
JSON line, last on stdout. Only argparse at import time: the top-level parser imports this."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from opengpt4.config import PRECISION_HELP, PRECISIONS
from opengpt4.errors import OpenGPT4Error


def _console():
    from rich.console import Console

    # Piped output gets wide lines rather than cells folded at rich's default 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def cmd_run(args: argparse.Namespace) -> None:
    """One eval, or several on one loaded model (each into --out/<eval> then), as OpenAI Evals' oaievalset."""
    from pathlib import Path

    from .runner import as_completion_fn, dumps, run_eval

    if len(set(args.eval)) != len(args.eval):
        raise OpenGPT4Error(f"an eval is named twice: {' '.join(args.eval)}")
    model = args.model
    if len(args.eval) > 1:  # load the weights once for all of them
        model = as_completion_fn(args.model, cache=not args.no_cache, cache_path=None, dtype=args.dtype)
    for name in args.eval:
        out = args.out if len(args.eval) == 1 or args.out is None else str(Path(args.out) / name)
        try:
            report = run_eval(name, model, registries=args.registry, limit=args.limit, seed=args.seed,
                              out_dir=out, workers=args.workers, grader=args.grader, data_dir=args.data_dir,
                              cache=not args.no_cache, dtype=args.dtype)
        except NotImplementedError as e:  # e.g. an endpoint that cannot score text (loglik evals)
            raise OpenGPT4Error(str(e)) from None
        _print_report(report)
        print(dumps(report), flush=True)


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{report['eval']} — {report['model']}", show_header=False)
    ci = report["ci95"]
    table.add_row(report["metric"], f"{_fmt(report['score'])} ± {_fmt(report['stderr'])} (stderr)")
    table.add_row("95% CI (bootstrap)", f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-")
    table.add_row("samples", f"{report['n']} ({report['n_unscorable']} unscorable)")
    for key, value in report["metrics"].items():
        table.add_row(key, _fmt(value))
    if "ece" in report:
        table.add_row("ECE", _fmt(report["ece"]))
    table.add_row("cache", f"{report['cache']['hits']} hits, {report['cache']['misses']} misses")
    # Log-likelihood scoring (multiple choice) reports no token usage, only generation does.
    tokens = report["usage"]["total_tokens"]
    table.add_row("tokens", str(tokens) if tokens else "- (log-likelihood scoring counts none)")
    table.add_row("time", f"{report['run_time_s']:.1f} s")
    table.add_row("run dir", report["out_dir"])
    _console().print(table)


def cmd_compare(args: argparse.Namespace) -> None:
    from rich.table import Table

    from .compare import compare
    from .runner import dumps

    report = compare(args.run_a, args.run_b, seed=args.seed)
    console = _console()
    table = Table(title=f"{report['eval']}: A vs B", show_header=False)
    table.add_row("A", f"{report['run_a']['model']}: mean {_fmt(report['run_a']['mean'])}")
    table.add_row("B", f"{report['run_b']['model']}: mean {_fmt(report['run_b']['mean'])}")
    table.add_row("paired samples", str(report["n_paired"]))
    ci = report["ci95"]
    table.add_row("B - A", _fmt(report["mean_diff"]) + (f"  (95% CI {_fmt(ci[0])} to {_fmt(ci[1])}, paired bootstrap)"
                                                        if ci else ""))
    table.add_row(report["test"], f"p = {_fmt(report['p_value'])}")
    console.print(table)
    if report["flipped"]:
        flips = Table("sample", "A", "B", "ideal", title=f"{len(report['flipped'])} samples changed score")
        for f in report["flipped"][:args.show]:
            flips.add_row(f["sample_id"], f"{_fmt(f['parsed_a'])} ({_fmt(f['score_a'])})",
                          f"{_fmt(f['parsed_b'])} ({_fmt(f['score_b'])})", _fmt(f["ideal"]))
        console.print(flips)
    print(dumps(report), flush=True)


def cmd_calibration(args: argparse.Namespace) -> None:
    from .calibration import expected_calibration_error, reliability_diagrams, run_confidences
    from .runner import dumps

    labels = args.label or [str(run) for run in args.runs]
    if len(labels) != len(args.runs):
        raise OpenGPT4Error(f"{len(args.runs)} runs but {len(labels)} --label values: give one per run or none")
    panels, report = [], {}
    for run, label in zip(args.runs, labels, strict=True):
        spec, confidences, correct = run_confidences(run)
        panels.append((f"{label} ({spec['eval']})", confidences, correct))
        report[label] = {"run": str(run), "eval": spec["eval"], "n": len(correct),
                         "accuracy": sum(correct) / len(correct), "mean_confidence": sum(confidences) / len(confidences),
                         "ece": expected_calibration_error(confidences, correct, bins=args.bins)}
    reliability_diagrams(panels, args.out, bins=args.bins)
    print(dumps({"png": args.out, "runs": report}))


def cmd_list(args: argparse.Namespace) -> None:
    from rich.table import Table

    from .registry import list_evals

    table = Table("name", "id", "class", "description")
    for row in list_evals(args.registry):
        table.add_row(row["name"], row["id"], row["class"], row["description"])
    _console().print(table)


def add_eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="run, compare and list evals (OpenAI Evals registry format)")
    verb = p.add_subparsers(dest="eval_command", required=True, metavar="VERB")

    r = verb.add_parser("run", help="run an eval (or several) on a model; each report is a JSON line on stdout")
    r.add_argument("eval", nargs="+", help="eval name (base name or full id), from the package or a --registry; "
                                           "several run one after the other on the model loaded once")
    r.add_argument("--model", required=True,
                   help="checkpoint dir, model name, or an endpoint http://HOST:PORT/v1#MODEL")
    r.add_argument("--registry", action="append", default=[],
                   help="extra registry dir with evals/, data/, modelgraded/ (repeatable; later ones win)")
    r.add_argument("--limit", type=int, default=None, help="run N samples, picked by a seeded shuffle")
    r.add_argument("--seed", type=int, default=0, help="seed of --limit, sampling and the bootstrap (default 0)")
    r.add_argument("--out", default=None, help="run directory (default ./evals-runs/<time>_<eval>_<model>); with "
                                                "several evals, the parent of one run directory per eval")
    r.add_argument("--workers", type=int, default=1, help="batches in flight at once (default 1)")
    r.add_argument("--grader", default=None, help="model that grades model-graded evals (default: --model)")
    r.add_argument("--data-dir", default=None, help="data directory for evals that read one (benchmarks)")
    r.add_argument("--no-cache", action="store_true", help="neither read nor write the completion cache")
    r.add_argument("--dtype", choices=["auto", *PRECISIONS], default="auto", help=PRECISION_HELP)
    r.set_defaults(func=cmd_run)

    c = verb.add_parser("compare", help="paired comparison of two runs of the same eval")
    c.add_argument("run_a", help="run directory A")
    c.add_argument("run_b", help="run directory B")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--show", type=int, default=20, help="changed samples to print (default 20; all are in the JSON)")
    c.set_defaults(func=cmd_compare)

    k = verb.add_parser("calibration", help="reliability diagrams of multiple-choice runs side by side, and each ECE")
    k.add_argument("runs", nargs="+", help="run directories (e.g. base, SFT and RLHF on the same eval)")
    k.add_argument("--label", action="append", default=None, help="a panel title per run, in order (repeatable)")
    k.add_argument("--bins", type=int, default=10, help="equal-width confidence bins (default 10)")
    k.add_argument("--out", required=True, help="output PNG")
    k.set_defaults(func=cmd_calibration)

    ls = verb.add_parser("list", help="every eval in the package registry and the given ones")
    ls.add_argument("--registry", action="append", default=[], help="extra registry dir (repeatable)")
    ls.set_defaults(func=cmd_list)
