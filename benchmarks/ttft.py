"""Time to first token under load: this tree's server against an earlier commit's, same run.

    python benchmarks/ttft.py [--ref-commit HEAD~1] [--commit REV] [--model tiny|smollm2|PATH]
                              [--clients 1 16 64] [--requests 2] [--max-tokens 64] [--max-batch N] [--context N]

Checks the ref commit (and `--commit`, default: this working tree as it is) out into temporary
git worktrees, then for each side in turn starts
`opengpt4 serve --no-auth` from that side's source (PYTHONPATH) on the same checkpoint and runs
benchmarks/serve_load.py's client levels against it: TTFT and inter-token latency p50/p99,
output tokens/s. It also reads the server's resident memory once the model is loaded and idle
(after a one-request warm-up) and at the end: the KV cache shows there. Prints one JSON object
with both sides and the ratios (ref / ours for TTFT: above 1 is faster here).

`--max-batch` and `--context` go to both servers through a registry file (default: each side's
own defaults, i.e. what a plain `opengpt4 serve` does at that commit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, run_level, tiny_checkpoint  # noqa: E402
from server_ready import wait_until_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def start(source: Path, model: Path, registry: Path | None, log: Path) -> tuple[subprocess.Popen, str]:
    """`opengpt4 serve` running `source`'s code; returns once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "opengpt4.cli", "serve", "--port", str(port), "--no-auth",
               "--db", str(log.with_suffix(".db"))]
    command += ["--registry", str(registry)] if registry else ["--model", str(model)]
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    server = subprocess.Popen(command, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(server, base, log, 600)
    return server, base


def measure(source: Path, model: Path, registry: Path | None, args, log: Path) -> dict:
    server, base = start(source, model, registry, log)
    try:
        name = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        asyncio.run(run_level(base, "unused", name, 1, 1, 8))  # warm-up, not reported
        idle = rss_mb(server.pid)
        levels = []
        for clients in args.clients:
            level = asyncio.run(run_level(base, "unused", name, clients, args.requests, args.max_tokens))
            print(json.dumps({"source": str(source), **level}), file=sys.stderr)
            levels.append(level)
        return {"idle_rss_mb": idle, "end_rss_mb": rss_mb(server.pid), "levels": levels}
    finally:
        server.terminate()
        server.wait(timeout=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref-commit", default="HEAD~1", help="the commit to compare with (any git revision)")
    p.add_argument("--commit", default=None, help="measure this revision instead of the working tree")
    p.add_argument("--model", default="tiny", help="tiny, smollm2 (the imported SmolLM2), or a checkpoint dir")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--requests", type=int, default=2, help="requests per client, back to back")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=None, help="both servers' max_batch (registry)")
    p.add_argument("--context", type=int, default=None, help="both servers' context_length (registry)")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ttft-"))
    if args.model == "tiny":
        model = tiny_checkpoint(tmp / "tiny")
    elif args.model == "smollm2":
        from opengpt4.model import convert

        model = convert.ensure_smollm2()
    else:
        model = Path(args.model).resolve()
    registry = None
    if args.max_batch or args.context:
        entry = {"snapshot": "bench", "path": str(model)}
        entry |= {"max_batch": args.max_batch} if args.max_batch else {}
        entry |= {"context_length": args.context} if args.context else {}
        registry = tmp / "registry.yaml"
        registry.write_text(json.dumps({"models": [entry]}))  # JSON is YAML
    revisions = {"ref": args.ref_commit} | ({"ours": args.commit} if args.commit else {})
    sources, commits = {"ours": REPO}, {"ours": "working tree"}
    try:
        for side, revision in revisions.items():
            commits[side] = subprocess.run(["git", "rev-parse", revision], cwd=REPO, check=True, capture_output=True,
                                           text=True).stdout.strip()
            sources[side] = tmp / side
            subprocess.run(["git", "worktree", "add", "--detach", str(sources[side]), commits[side]], cwd=REPO,
                           check=True, capture_output=True)
        sides = {side: measure(sources[side], model, registry, args, tmp / f"{side}.log") for side in ("ref", "ours")}
    finally:
        for side in revisions:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / side)], cwd=REPO, check=False)
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    ratios = [{"clients": ours["clients"],
               "ttft_p50_ref_over_ours": ratio(theirs["ttft_ms_p50"], ours["ttft_ms_p50"]),
               "ttft_p99_ref_over_ours": ratio(theirs["ttft_ms_p99"], ours["ttft_ms_p99"]),
               "tokens_per_s_ours_over_ref": ratio(ours["output_tokens_per_s"], theirs["output_tokens_per_s"])}
              for theirs, ours in zip(sides["ref"]["levels"], sides["ours"]["levels"], strict=True)]
    one = next((lv for lv in sides["ours"]["levels"] if lv["clients"] == 1), None)
    for lv in sides["ours"]["levels"]:
        if one and one["output_tokens_per_s"]:
            lv["speedup_vs_1_client"] = round(lv["output_tokens_per_s"] / one["output_tokens_per_s"], 2)
    result = {"model": args.model, "ref_commit": commits["ref"], "ours_commit": commits["ours"], "max_tokens": args.max_tokens,
              "requests_per_client": args.requests, "max_batch": args.max_batch, "context": args.context,
              "cpu_threads": os.cpu_count(), **sides, "ratios": ratios}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
