"""Load test of `opengpt4 serve`: N concurrent streaming clients against a live server process.

    python benchmarks/serve_load.py [--model tiny|smollm2|PATH] [--clients 1 16 64] [--requests 3] [--max-tokens 64]
    python benchmarks/serve_load.py --soak 600 --clients 64 [--disconnect 0.2] [--bad 0.1] [--out soak.json]

Starts `opengpt4 serve` in a subprocess with auth on (a fresh key in a temp database), then for
each N runs N clients at once, each sending `--requests` streaming chat requests back to back
with include_usage. Per N it reports request throughput, output tokens/s (from the usage
chunks), time to first token and inter-token latency p50/p99, errors by status, and whether the
usage ledger has exactly one row per request sent ("lost_usage_rows"). The peer is the same
server with one client: `speedup_vs_1_client` is aggregate output tokens/s over the 1-client
figure (continuous batching at work). Prints one JSON object.

`--soak SECONDS`: the last --clients value of clients (each with its own key) send requests back
to back for that long. Each request is, at random, a bad input (`--bad` of them: a seed past
int64, a lone surrogate, n=99, 80 prompts, a body over the size limit, ...), a stream the client
hangs up on after a random number of tokens (`--disconnect`), or a whole stream with usage.
Meanwhile a thread times GET /v1/models every 0.25 s and another samples the server's RSS every
5 s. It reports the 5xx count (bad inputs must be 4xx), whether the usage ledger has every
completed stream with exactly the completion tokens its usage chunk said and every cut stream
with at least the tokens the client received, RSS over time (and its growth after the first
minute), and /v1/models latency (p50, p99, max, p99 per minute).

`tiny` is a randomly initialised `test`-preset model with a small trained tokenizer (built in a
temp dir): it measures the server and scheduler overhead more than the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from server_ready import wait_until_ready

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


async def sse_data(response: httpx.Response) -> AsyncIterator[dict]:
    """A stream's `data:` payloads, split on newlines only as SSE says: httpx's aiter_lines also
    splits on U+2028 and friends, which JSON strings may carry unescaped."""
    buffer = b""
    async for block in response.aiter_bytes():
        buffer += block
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                yield json.loads(line[6:])


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
                async for chunk in sse_data(response):
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


# --- the soak ------------------------------------------------------------------------------------
def bad_inputs(model: str) -> list[tuple[str, str, bytes]]:
    """(name, path, raw body) of requests the server must refuse with a 4xx, the load test's finds."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    as_json = lambda body: json.dumps(body).encode()  # noqa: E731
    return [
        ("seed_past_int64", "/v1/chat/completions", as_json(chat | {"seed": 2**70})),
        ("lone_surrogate", "/v1/chat/completions",
         b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % model.encode()),
        ("n_99", "/v1/chat/completions", as_json(chat | {"n": 99})),
        ("80_prompts", "/v1/completions", as_json({"model": model, "prompt": ["the cat"] * 80, "max_tokens": 8})),
        ("body_over_limit", "/v1/chat/completions", b"x" * (17 * 2**20)),
        ("text_over_context", "/v1/chat/completions",
         as_json(chat | {"messages": [{"role": "user", "content": "lorem " * 500_000}]})),
        ("empty_messages", "/v1/chat/completions", as_json(chat | {"messages": []})),
        ("top_logprobs_99", "/v1/chat/completions", as_json(chat | {"logprobs": True, "top_logprobs": 99})),
        ("not_json", "/v1/chat/completions", b'{"model": '),
        ("unknown_model", "/v1/chat/completions", as_json(chat | {"model": "gpt-9"})),
    ]


async def soak_client(base: str, key: str, model: str, index: int, args: argparse.Namespace, end: float,
                      bad: list[tuple[str, str, bytes]], out: dict) -> None:
    rng = random.Random(index)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
        r = 0
        while time.monotonic() < end:
            r += 1
            roll = rng.random()
            try:
                if roll < args.bad:
                    name, path, raw = bad[r % len(bad)]
                    response = await client.post(path, content=raw)
                    out["bad"].append((name, response.status_code))
                    continue
                cut_after = rng.randint(1, max(1, args.max_tokens // 2)) if roll < args.bad + args.disconnect else None
                await soak_stream(client, model, index * 100_000 + r, args.max_tokens, cut_after, out)
            except httpx.HTTPError as e:
                out["transport_errors"].append(type(e).__name__)


async def soak_stream(client: httpx.AsyncClient, model: str, seed: int, max_tokens: int, cut_after: int | None,
                      out: dict) -> None:
    """One streaming request; with cut_after, the client hangs up after that many content chunks."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "temperature": 0.7, "seed": seed, "messages": [{"role": "user", "content": PROMPTS[seed % len(PROMPTS)]}]}
    start, request_id, received, usage = time.perf_counter(), None, 0, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            out["stream_statuses"].append(response.status_code)
            return
        async for chunk in sse_data(response):
            if "error" in chunk:
                out["in_stream_errors"] += 1
                return
            request_id = chunk["id"]
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                if received == 0:
                    out["ttft"].append(time.perf_counter() - start)
                received += 1
                if cut_after is not None and received >= cut_after:
                    break  # leaving the block closes the connection mid-stream
    if cut_after is not None and usage is None:
        out["disconnected"].append((request_id, received))
    else:
        out["completed"].append((request_id, usage))
        out["tokens"] += usage or 0


def probe_models(base: str, key: str, stop: threading.Event, out: list) -> None:
    """GET /v1/models every 0.25 s from its own thread: (seconds since start, latency or None)."""
    start = time.monotonic()
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        while not stop.wait(0.25):
            t = time.perf_counter()
            try:
                ok = client.get("/v1/models").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((time.monotonic() - start, time.perf_counter() - t if ok else None))


def sample_rss(pid: int, stop: threading.Event, out: list) -> None:
    start = time.monotonic()
    while True:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out.append((round(time.monotonic() - start, 1), round(int(line.split()[1]) / 1024, 1)))
        if stop.wait(5):
            return


def ledger_check(db: Path, out: dict) -> dict:
    """Every completed stream's row has exactly the completion tokens its usage chunk said; every
    cut stream's row has at least the tokens the client received (more may have been generated
    and in flight when it hung up)."""
    deadline = time.monotonic() + 10  # a row lands just after its response's last byte
    wanted = {rid for rid, _ in out["completed"] + out["disconnected"] if rid}
    while True:
        with sqlite3.connect(db) as conn:
            rows = {rid: (status, completion) for rid, status, completion in conn.execute(
                "SELECT request_id, status, completion_tokens FROM usage WHERE request_id IS NOT NULL")}
        if wanted <= rows.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    completed = [(rows.get(rid), usage) for rid, usage in out["completed"]]
    cut = [(rows.get(rid), received) for rid, received in out["disconnected"]]
    over = [row[1] - received for row, received in cut if row]
    return {"completed": len(completed), "completed_in_ledger": sum(1 for row, _ in completed if row),
            "completed_exact": sum(1 for row, usage in completed if row and row == (200, usage)),
            "disconnected": len(cut), "disconnected_in_ledger": sum(1 for row, _ in cut if row),
            "disconnected_billed_at_least_received": sum(1 for row, received in cut if row and row[1] >= received),
            "disconnected_status_499": sum(1 for row, _ in cut if row and row[0] == 499),
            "disconnected_billed_beyond_received_mean": round(sum(over) / len(over), 2) if over else None,
            "missing": [rid for rid in wanted if rid not in rows][:5]}


def soak(args: argparse.Namespace, base: str, keys: list[str], model: str, db: Path, pid: int) -> dict:
    clients = args.clients[-1]
    out = {"completed": [], "disconnected": [], "bad": [], "stream_statuses": [], "transport_errors": [],
           "in_stream_errors": 0, "ttft": [], "tokens": 0}
    probes, rss, stop = [], [], threading.Event()
    threads = [threading.Thread(target=probe_models, args=(base, keys[0], stop, probes), daemon=True),
               threading.Thread(target=sample_rss, args=(pid, stop, rss), daemon=True)]
    for t in threads:
        t.start()
    bad = bad_inputs(model)
    start = time.monotonic()
    end = start + args.soak

    async def everyone() -> None:
        await asyncio.gather(*(soak_client(base, keys[i + 1], model, i, args, end, bad, out) for i in range(clients)))

    asyncio.run(everyone())
    seconds = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join()
    statuses = [s for _, s in out["bad"]] + out["stream_statuses"]
    latencies = [lat for _, lat in probes if lat is not None]
    minutes = sorted({int(t // 60) for t, _ in probes})
    ms = lambda v: round(v * 1000, 1) if v is not None else None  # noqa: E731
    after_first_minute = [mb for t, mb in rss if t >= 60]
    return {
        "soak_s": round(seconds, 1), "clients": clients, "disconnect_fraction": args.disconnect,
        "bad_fraction": args.bad, "max_tokens": args.max_tokens,
        "requests": {"completed": len(out["completed"]), "disconnected": len(out["disconnected"]),
                     "bad": len(out["bad"])},
        "server_errors_5xx": sum(1 for s in statuses if s >= 500),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "bad_inputs": {name: sorted({s for n, s in out["bad"] if n == name}) for name, _, _ in bad},
        "bad_accepted_2xx": sum(1 for _, s in out["bad"] if s < 300),
        "in_stream_errors": out["in_stream_errors"],
        "transport_errors": {e: out["transport_errors"].count(e) for e in set(out["transport_errors"])},
        "output_tokens_per_s": round(out["tokens"] / seconds, 1),
        "ttft_ms_p50": ms(percentile(out["ttft"], 50)), "ttft_ms_p99": ms(percentile(out["ttft"], 99)),
        "ledger": ledger_check(db, out),
        "rss_mb": {"start": rss[0][1] if rss else None, "at_60s": after_first_minute[0] if after_first_minute else None,
                   "end": rss[-1][1] if rss else None,
                   "max_after_60s": max(after_first_minute) if after_first_minute else None,
                   "growth_after_60s": round(after_first_minute[-1] - after_first_minute[0], 1)
                   if after_first_minute else None, "samples": rss},
        "models_latency_ms": {
            "probes": len(probes), "failures": sum(1 for _, lat in probes if lat is None),
            "p50": ms(percentile(latencies, 50)), "p99": ms(percentile(latencies, 99)),
            "max": ms(max(latencies)) if latencies else None,
            "p99_per_minute": [ms(percentile([lat for t, lat in probes if lat is not None and int(t // 60) == m], 99))
                               for m in minutes]},
    }


def start_server(model_path: Path, db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`opengpt4 serve` on a free port, its log in a file (a pipe nobody reads would fill and stall
    it); returns once /healthz answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "opengpt4.cli", "serve", "--model", str(model_path), "--port",
                               str(port), "--db", str(db)], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(server, base, log, 300)
    return server, base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny, smollm2 (the imported SmolLM2), or a checkpoint dir")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--requests", type=int, default=3, help="requests per client, back to back")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="soak instead of levels: the last --clients value of clients for this long")
    p.add_argument("--disconnect", type=float, default=0.2, help="soak: fraction of requests cut mid-stream")
    p.add_argument("--bad", type=float, default=0.1, help="soak: fraction of requests that are bad inputs")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    if args.model == "tiny":
        model_path = tiny_checkpoint(tmp / "tiny")
    elif args.model == "smollm2":
        from opengpt4.model import convert

        model_path = convert.ensure_smollm2()
    else:
        model_path = Path(args.model)
    from opengpt4.serve.keys import KeyStore

    db = tmp / "serve.db"
    store = KeyStore(db)  # one key per soak client (and one for the probe), as separate users would have
    keys = [store.create(f"load-{i}", rpm=100_000, tpm=100_000_000) for i in range(1 + args.clients[-1])]
    server, base = start_server(model_path, db, tmp / "server.log")
    key = keys[0]
    try:
        model = httpx.get(base + "/v1/models", headers={"authorization": f"Bearer {key}"}).json()["data"][0]["id"]
        asyncio.run(run_level(base, key, model, 1, 1, 8))  # warm-up, not reported
        if args.soak is not None:
            result = {"model": args.model, "cpu_threads": os.cpu_count(),
                      **soak(args, base, keys, model, db, server.pid)}
        else:
            result = {"model": args.model, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
                      "cpu_threads": os.cpu_count(), "levels": levels(args, base, key, model, db)}
    finally:
        server.terminate()
        server.wait(timeout=60)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


def levels(args: argparse.Namespace, base: str, key: str, model: str, db: Path) -> list[dict]:
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
    one = next((r for r in results if r["clients"] == 1), None)
    for r in results:
        if one and one["output_tokens_per_s"]:
            r["speedup_vs_1_client"] = round(r["output_tokens_per_s"] / one["output_tokens_per_s"], 2)
    return results


if __name__ == "__main__":
    main()
