"""`opengpt4 scaling ...`: the predictable-scaling experiment, stage by stage (data/ and runs/ are gitignored).

    opengpt4 scaling data --out data/scaling             # byte corpus, decontamination, gzip/xz floors
    opengpt4 scaling throughput                          # tokens/s per size; the plan's predicted wall time
    opengpt4 scaling lr-check --data data/scaling --out runs/lr-check
    opengpt4 scaling sweep --data data/scaling --out runs/scaling
    opengpt4 scaling capability --sweep runs/scaling
    opengpt4 scaling fit --sweep runs/scaling --data data/scaling --out results/scaling/prediction.json
    git add results/scaling/prediction.json && git commit -m "scaling: prediction" -- results/scaling/prediction.json
    opengpt4 scaling target --sweep runs/scaling --data data/scaling --prediction results/scaling/prediction.json
    opengpt4 scaling plot --sweep runs/scaling --prediction results/scaling/prediction.json --out results/scaling
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from opengpt4.scaling.plan import DEFAULT_PLAN, Plan, Run


def _plan(args: argparse.Namespace) -> Plan:
    plan = Plan.from_file(Path(args.plan)) if getattr(args, "plan", None) else DEFAULT_PLAN
    return dataclasses.replace(plan, jobs=args.jobs) if getattr(args, "jobs", None) else plan


def _sweep_plan(sweep: Path) -> Plan:
    from opengpt4.errors import SweepError
    from opengpt4.scaling.sweep import PLAN

    if not (sweep / PLAN).is_file():
        raise SweepError(f"{sweep}: no {PLAN}; is it a sweep dir from `opengpt4 scaling sweep`?")
    return Plan.from_file(sweep / PLAN)


def cmd_data(args: argparse.Namespace) -> None:
    from opengpt4.scaling.data import build

    start = time.perf_counter()
    r = build(Path(args.out), args.seed)
    floors = ", ".join(f"{k} {v:.3f}" for k, v in r["floors_bits_per_byte"].items())
    print(f"built {args.out} in {time.perf_counter() - start:.0f} s (Python {r['python']}): "
          f"{r['train_bytes'] / 1e6:.1f} MB of training text ({r['code_files']:,} code files, "
          f"{r['code_bytes'] / 1e6:.1f} MB; world {r['world_bytes'] / 1e6:.1f} MB), "
          f"{len(r['dropped_sharing_span'])} files dropped for a {r['span_bytes']}-byte span in common with the "
          f"held-out modules, {r['skipped_files']:,} skipped (duplicates, not UTF-8, empty, > 200 kB)")
    print(f"held out: {r['heldout_bytes']:,} bytes of {', '.join(r['heldout_modules'][:6])}, ...; "
          f"{100 * r['heldout_windows_in_training']:.2f}% of its {r['window_bytes']}-byte windows occur in training "
          f"text; floors (bits/byte): {floors}")


def cmd_throughput(args: argparse.Namespace) -> None:
    from opengpt4.scaling.family import SHAPES
    from opengpt4.scaling.throughput import measure, predict_stages

    plan = _plan(args)
    models = args.models or list(SHAPES)
    table: dict[int, dict[str, dict]] = {}
    for threads in args.threads:
        table[threads] = {}
        for name in models:
            row = measure(name, threads, args.seconds, plan)
            table[threads][name] = row
            print(f"{name:7s} {row['params']:>9,} params  {threads} thread(s): {row['tokens_per_s']:>9,.0f} tokens/s  "
                  f"{row['gflops']:6.1f} GFLOP/s wall; {row['tokens_per_cpu_s']:>9,.0f} tokens/s "
                  f"{row['gflops_cpu']:6.1f} GFLOP/s per CPU-second ({100 * row['cpu_share']:.0f}% of the cores ours)",
                  flush=True)
    # One thread per run: its speed on a core of its own is tokens per CPU-second, whatever else runs now.
    if 1 in table and all(r.model in table[1] for r in plan.runs()):
        speed = {n: r["tokens_per_cpu_s"] for n, r in table[1].items()}
        for threads in sorted(table):
            target_speed = {n: r["tokens_per_cpu_s" if threads == 1 else "tokens_per_s"] for n, r in table[threads].items()}
            for target_model in (m for m in args.target_models if m in target_speed):
                p = predict_stages(plan, speed, target_speed, target_model)
                print(f"plan: {p['runs']} runs, {p['sweep_flops']:.2e} FLOPs: sweep {p['sweep_seconds'] / 60:.1f} min "
                      f"on {plan.jobs} x 1 thread; target {target_model} at {plan.target_budget:.3g} FLOPs: "
                      f"{p['target_seconds'] / 60:.1f} min on {threads} thread(s)"
                      + ("" if threads == 1 else " (wall-clock speed: only as good as the machine is idle)"))
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=2) + "\n")


def cmd_lr_check(args: argparse.Namespace) -> None:
    from opengpt4.scaling.sweep import sweep

    plan = _plan(args)
    runs = [Run(args.budget, m, 0, s) for m in args.models for s in args.scales]
    results = sweep(Path(args.out), Path(args.data), plan, runs)
    for m in args.models:
        rows = sorted((r for r in results if r["model"] == m), key=lambda r: r["lr"])
        best = min(rows, key=lambda r: r["bpb"])
        print(f"{m}: " + "  ".join(f"lr {r['lr']:.2e} bpb {r['bpb']:.4f}" for r in rows) + f"  -> best {best['lr']:.2e}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from opengpt4.scaling.sweep import sweep

    start = time.perf_counter()
    results = sweep(Path(args.out), Path(args.data), _plan(args))
    print(f"{len(results)} runs in {Path(args.out) / 'results.jsonl'} ({(time.perf_counter() - start) / 60:.1f} min "
          "this time)")


def cmd_capability(args: argparse.Namespace) -> None:
    from opengpt4.scaling.capability import measure_runs, summary, sweep_checkpoints

    sweep_dir = Path(args.sweep)
    samples = args.samples or _sweep_plan(sweep_dir).samples
    state = measure_runs(sweep_dir, sweep_checkpoints(sweep_dir), samples)
    for run_id, value in summary(state).items():
        print(f"{run_id}: -mean log pass rate {value:.3f}")


def cmd_fit(args: argparse.Namespace) -> None:
    from opengpt4.scaling import fit as F
    from opengpt4.scaling.predict import make_prediction, write_prediction

    sweep_dir = Path(args.sweep)
    p = make_prediction(sweep_dir, Path(args.data), _sweep_plan(sweep_dir))
    write_prediction(Path(args.out), p)
    fit, (lo, hi) = p["fit"], p["interval_95"]
    p_value = fit["f_test"]["p"]
    why = f"F-test p = {p_value:.3f}" if p_value is not None else f"{len(p['fitted_budgets'])} minima: too few to test it"
    curve = F.formula(fit, "(C / {:.3g})".format(fit["c_ref"]))
    print(f"L(C) = {curve} from {p['runs']} runs; irreducible term {'kept' if fit['c'] else 'left out'} ({why}); "
          f"seed-to-seed sd {p['seed_sd']['sd']:.4f} bpb ({p['seed_sd']['pairs']} pairs)")
    print(f"prediction at {p['target_budget']:.3g} FLOPs with {p['target_model']} ({p['target_params']:,} params, "
          f"{p['target_tokens']:,} tokens): {p['predicted_bpb']:.4f} bpb, 95% interval [{lo:.4f}, {hi:.4f}]; "
          f"Chinchilla L(N, D) says {p['chinchilla']['predicted_bpb']:.4f}")
    if p["capability"]:
        c = p["capability"]
        print(f"capability: -mean log pass rate {c['predicted']:.3f} [{c['interval'][0]:.3f}, {c['interval'][1]:.3f}]")
    print(f"wrote {args.out}: commit it before `opengpt4 scaling target`")


def cmd_target(args: argparse.Namespace) -> None:
    from opengpt4.scaling.predict import run_target

    report = run_target(Path(args.sweep), Path(args.data), Path(args.prediction), require_commit=not args.no_git_check)
    print(f"target {report['run']['model']}: observed {report['observed_bpb']:.4f} bpb, predicted "
          f"{report['predicted_bpb']:.4f} [{report['interval_95'][0]:.4f}, {report['interval_95'][1]:.4f}]: "
          f"error {100 * report['relative_error']:+.2f}%, inside the interval: {report['inside_interval']}")
    if "capability" in report:
        c = report["capability"]
        print(f"capability: observed {c['observed']:.3f}, predicted {c['predicted']:.3f} "
              f"[{c['interval_95'][0]:.3f}, {c['interval_95'][1]:.3f}], inside: {c['inside_interval']}")


def cmd_plot(args: argparse.Namespace) -> None:
    from opengpt4.scaling import plots
    from opengpt4.scaling.capability import summary
    from opengpt4.scaling.predict import CAPABILITY, TARGET
    from opengpt4.scaling.sweep import read_results

    sweep_dir, out = Path(args.sweep), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = read_results(sweep_dir)
    plots.plot_isoflop(results, out / "isoflop.png")
    written = ["isoflop.png"]
    if args.prediction:
        prediction = json.loads(Path(args.prediction).read_text())
        target = json.loads((sweep_dir / TARGET).read_text()) if (sweep_dir / TARGET).is_file() else None
        plots.plot_loss(results, prediction, target, out / "loss.png")
        written.append("loss.png")
        if prediction.get("capability") and (sweep_dir / CAPABILITY).is_file():
            points = summary(json.loads((sweep_dir / CAPABILITY).read_text()))
            plots.plot_capability(prediction["capability"], points, prediction, target, out / "capability.png")
            written.append("capability.png")
    print(f"wrote {', '.join(str(out / w) for w in written)}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scaling", help="predictable scaling: sweep small models, fit, predict, then run the target")
    verb = p.add_subparsers(dest="verb", required=True)

    d = verb.add_parser("data", help="the byte-level data dir: world text + a deduplicated code corpus, held-out code")
    d.add_argument("--out", required=True, help="data directory to write")
    d.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    d.set_defaults(func=cmd_data)

    t = verb.add_parser("throughput", help="training tokens/s per family size; the default plan's predicted wall time")
    t.add_argument("--models", nargs="*", default=None, help="family shapes (default: all)")
    t.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure (default 1 2)")
    t.add_argument("--seconds", type=float, default=3.0, help="measured seconds per size and thread count (default 3)")
    t.add_argument("--target-models", nargs="*", default=["w160l4", "w192l5"],
                   help="shapes to predict the target run's time for")
    t.add_argument("--plan", default=None, help="a plan.json (default: the built-in plan)")
    t.add_argument("--out", default=None, help="write the measurements as JSON here")
    t.set_defaults(func=cmd_throughput)

    c = verb.add_parser("lr-check", help="the learning-rate rule checked: a few multiples of it at two widths")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--models", nargs="+", default=["w48l2", "w128l3"], help="two widths (default w48l2 w128l3)")
    c.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="multiples of the rule's learning rate (default 0.5 1 2)")
    c.add_argument("--budget", type=float, default=3e12,
                   help="FLOPs per run (default 3e12: >= 146 steps at both widths; ~3.5 min on 2 idle cores)")
    c.add_argument("--plan", default=None, help="a plan.json whose batch and schedule the runs use (default: the built-in plan)")
    c.add_argument("--jobs", type=int, default=None)
    c.set_defaults(func=cmd_lr_check)

    s = verb.add_parser("sweep", help="the IsoFLOP sweep (resumable: run it again after a kill)")
    s.add_argument("--data", required=True, help="data dir from `opengpt4 scaling data`")
    s.add_argument("--out", required=True, help="sweep directory")
    s.add_argument("--plan", default=None, help="a plan.json (default: the built-in plan, fitted to 2 cores)")
    s.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: the plan's)")
    s.set_defaults(func=cmd_sweep)

    a = verb.add_parser("capability", help="pass rates of the sweep's models on the held-out Python problems")
    a.add_argument("--sweep", required=True)
    a.add_argument("--samples", type=int, default=None, help="samples per problem (default: the plan's, 100)")
    a.set_defaults(func=cmd_capability)

    f = verb.add_parser("fit", help="fit L(C) and write the pre-registered prediction.json")
    f.add_argument("--sweep", required=True)
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True, help="prediction.json to write (commit it before the target run)")
    f.set_defaults(func=cmd_fit)

    g = verb.add_parser("target", help="the target run, checked against the committed prediction")
    g.add_argument("--sweep", required=True)
    g.add_argument("--data", required=True)
    g.add_argument("--prediction", required=True)
    g.add_argument("--no-git-check", action="store_true", help="do not require prediction.json to be committed")
    g.set_defaults(func=cmd_target)

    q = verb.add_parser("plot", help="loss.png, capability.png and isoflop.png")
    q.add_argument("--sweep", required=True)
    q.add_argument("--prediction", default=None)
    q.add_argument("--out", required=True, help="directory for the PNGs")
    q.set_defaults(func=cmd_plot)
