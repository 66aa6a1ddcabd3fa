"""Load test of `opengpt4 serve`: N concurrent streaming clients against a live server process.

    python benchmarks/serve_load.py [--model tiny|smollm2|PATH] [--clients 1 16 64] [--requests 3] [--max-tokens 64]

Starts `opengpt4 serve` in a subprocess with auth on (a fresh key in a temp database), then for
each N runs N clients at once, each sending `--requests` streaming chat requests back to back
with include_usage. Per N it reports request throughput, output tokens/s (from the usage
chunks), time to first token and inter-token latency p50/p99, errors by status, and whether the
usage ledger has exactly one row per request sent ("lost_usage_rows"). The peer is the same
server with one client: `speedup_vs_1_client` is aggregate output tokens/s over the 1-client
figure (continuous batching at work). Prints one JSON object.

`tiny` is a randomly initialised `test`-preset model with a small trained tokenizer (built in a
temp dir): it measures the server and scheduler overhead more than the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPTS = ["Write a long story about a lighthouse keeper and a storm.",
           "Explain in detail how a steam engine works.",
           "Describe a journey across a desert, day by day.",
           "Tell me everything you know about the history of bread."]


def tiny_checkpoint(dest: Path) -> Path:
    import dataclasses
    import random

    import torch

    from opengpt4.config import get_preset
    from opengpt4.model.checkpoint import save_checkpoint
    from opengpt4.model.transformer import Transformer
    from opengpt4.tokenizer import Tokenizer

    rng = random.Random(0)
    words = " ".join(PROMPTS).split()
    tokenizer = Tokenizer.train([" ".join(rng.choice(words) for _ in range(30)) for _ in range(300)], vocab_size=400,
                                tokens_per_image=get_preset("test").vision.tokens_per_image)
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("test"), vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_id,
                              max_seq_len=512)
    model = Transformer(cfg)
    model.init_weights()
    save_checkpoint(dest, model, tokenizer)
    return dest


def ledger_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def one_client(client: httpx.AsyncClient, model: str, requests: int, max_tokens: int, index: int,
                     out: dict) -> None:
    for r in range(requests):
        body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
                "temperature": 0.7, "seed": index * 1000 + r,
                "messages": [{"role": "user", "content": PROMPTS[(index + r) % len(PROMPTS)]}]}
        start = time.perf_counter()
        last, first = None, None
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    out["errors"].append(response.status_code)
                    continue
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out["errors"].append("in-stream")
                        break
                    if chunk.get("usage"):
                        out["tokens"] += chunk["usage"]["completion_tokens"]
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                            out["ttft"].append(now - start)
                        else:
                            out["itl"].append(now - last)
                        last = now
            out["ok"] += 1
        except httpx.HTTPError as e:
            out["errors"].append(type(e).__name__)


async def run_level(base: str, key: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    out = {"ok": 0, "errors": [], "tokens": 0, "ttft": [], "itl": []}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=600,
                                 limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client, model, requests, max_tokens, i, out) for i in range(clients)))
        seconds = time.perf_counter() - start
    ms = lambda v: round(v * 1000, 1) if v is not None else None  # noqa: E731
    return {"clients": clients, "requests": clients * requests, "seconds": round(seconds, 2),
            "requests_per_s": round(out["ok"] / seconds, 3), "output_tokens_per_s": round(out["tokens"] / seconds, 1),
            "output_tokens": out["tokens"],
            "ttft_ms_p50": ms(percentile(out["ttft"], 50)), "ttft_ms_p99": ms(percentile(out["ttft"], 99)),
            "itl_ms_p50": ms(percentile(out["itl"], 50)), "itl_ms_p99": ms(percentile(out["itl"], 99)),
            "errors": {str(k): out["errors"].count(k) for k in set(out["errors"])},
            "server_errors_5xx": sum(1 for e in out["errors"] if isinstance(e, int) and e >= 500)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny, smollm2 (the imported SmolLM2), or a checkpoint dir")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--requests", type=int, default=3, help="requests per client, back to back")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    if args.model == "tiny":
        model_path = tiny_checkpoint(tmp / "tiny")
    elif args.model == "smollm2":
        from opengpt4.model import convert

        model_path = convert.ensure_smollm2()
    else:
        model_path = Path(args.model)
    db = tmp / "serve.db"
    cli = [sys.executable, "-m", "opengpt4.cli"]
    key = subprocess.run([*cli, "keys", "create", "load", "--rpm", "100000", "--tpm", "100000000", "--db", str(db)],
                         capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    server = subprocess.Popen([*cli, "serve", "--model", str(model_path), "--port", str(port), "--db", str(db)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:  # the server loads the model first; poll until it answers
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.2)
        model = httpx.get(base + "/v1/models", headers={"authorization": f"Bearer {key}"}).json()["data"][0]["id"]
        asyncio.run(run_level(base, key, model, 1, 1, 8))  # warm-up, not reported
        results, sent = [], 1
        for clients in args.clients:
            level = asyncio.run(run_level(base, key, model, clients, args.requests, args.max_tokens))
            sent += level["requests"]
            deadline = time.monotonic() + 5  # a row lands just after its response's last byte
            while (rows := ledger_rows(db)) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            level["lost_usage_rows"] = sent - rows
            results.append(level)
            print(json.dumps(level), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
    one = next((r for r in results if r["clients"] == 1), None)
    for r in results:
        if one and one["output_tokens_per_s"]:
            r["speedup_vs_1_client"] = round(r["output_tokens_per_s"] / one["output_tokens_per_s"], 2)
    print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
                      "cpu_threads": os.cpu_count(), "levels": results}, indent=1))


if __name__ == "__main__":
    main()
