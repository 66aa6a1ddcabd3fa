"""Decode speed of SmolLM2-135M: opengpt4 vs transformers' generate() and llama.cpp, same run.

    python benchmarks/decode.py [--prompt-tokens 128] [--new-tokens 64] [--batch 16] [--dtype float32 bfloat16]
                                [--threads N] [--peers transformers llama_cpp]

Each side runs in its own subprocess (so peak memory is its own) on the same number of CPU
threads, at each precision asked for: prefill tokens/s (one prompt), decode tokens/s at batch 1
and aggregate at batch N (greedy, EOS ignored, timed from the first generated token to the
last), peak RSS. opengpt4 is measured twice: `Engine.stream` (one dense KV cache per call, what
evals use) and the server's scheduler (paged KV cache, one flat forward per step).

Peers: transformers' generate() on the same weights at the same precision; llama.cpp through
llama-cpp-python's low-level batch API on the very GGUF `ensure_smollm2()` imports (Q4_1 weights:
llama.cpp reads a quarter of float32's bytes per token, so the ratio is against a quantized
peer). A peer that is not installed is skipped with the reason; llama-cpp-python compiles
llama.cpp when pip installs it (many minutes): `pip install llama-cpp-python`. Prints one JSON
object with every side and the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCE = ("The history of science is the study of the development of science and scientific knowledge, "
            "including both the natural and social sciences. ")


def prompts(tokenizer_encode, n: int, length: int) -> list[list[int]]:
    """n different prompts of exactly `length` tokens (equal lengths: no padding on either side)."""
    base = tokenizer_encode(SENTENCE * (length // 8 + 4))
    return [base[i * 3 : i * 3 + length] for i in range(n)]


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: the latter survives exec, so
    a worker would report its parent's peak if that were higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    import torch

    from opengpt4.engine.generate import Engine
    from opengpt4.engine.sampling import SamplingParams
    from opengpt4.engine.scheduler import Scheduler
    from opengpt4.model.checkpoint import load_checkpoint
    from opengpt4.model.transformer import KVCache

    torch.set_num_threads(args.threads)
    model, tok = load_checkpoint(args.model, dtype=getattr(torch, args.dtype))
    engine = Engine(model, tok)
    ps = prompts(tok.encode, args.batch, args.prompt_tokens)

    def prefill() -> float:
        with torch.inference_mode():
            cache = KVCache(model.config, 1, args.prompt_tokens, dtype=model.lm_head.weight.dtype)
            start = time.perf_counter()
            model(torch.tensor([ps[0]]), cache=cache, last_only=True)
            return time.perf_counter() - start

    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)

    def decode(batch: int) -> float:
        stamps = []
        for d in engine.stream(ps[:batch], params):
            if d.prompt_index == 0:
                stamps.append(time.perf_counter())
        return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def scheduled(batch: int) -> float:
        """The server's path: all prompts submitted at once, stepped until done."""
        scheduler = Scheduler(engine, max_batch=batch, prefill_chunk=batch * args.prompt_tokens)
        handles = [scheduler.submit(p, params) for p in ps[:batch]]
        stamps = []
        while not handles[0].done.is_set():
            scheduler.step()
            stamps.append(time.perf_counter())
        return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])

    result = measure(prefill, decode, args)
    scheduled(1)  # warm-up
    result["scheduler_decode_tokens_per_s_batch1"] = statistics.median(scheduled(1) for _ in range(5))
    result[f"scheduler_decode_tokens_per_s_batch{args.batch}"] = statistics.median(scheduled(args.batch)
                                                                                  for _ in range(3))
    return result


def run_transformers(args) -> dict:
    import torch
    from transformers import LlamaForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from opengpt4.model.checkpoint import read_config
    from opengpt4.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    model = LlamaForCausalLM.from_pretrained(args.hf_dir, dtype=getattr(torch, args.dtype)).eval()
    tok = Tokenizer.from_dir(args.model, read_config(args.model)["tokenizer"])  # the same ids as ours
    ps = prompts(tok.encode, args.batch, args.prompt_tokens)

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def prefill() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            model(torch.tensor([ps[0]]), use_cache=True, logits_to_keep=1)
            return time.perf_counter() - start

    def decode(batch: int) -> float:
        streamer = Stamps()
        ids = torch.tensor(ps[:batch])
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=False, streamer=streamer, pad_token_id=0)
        t = streamer.times[1:]  # the first put() is the prompt
        return batch * (len(t) - 1) / (t[-1] - t[0])

    return measure(prefill, decode, args)


def run_llama_cpp(args) -> dict:
    """llama.cpp on the GGUF, through llama-cpp-python's low-level API (its Llama class decodes one
    sequence at a time): one llama_batch holds every row's token, each row its own sequence id."""
    import ctypes

    import llama_cpp
    import numpy as np

    from opengpt4.model.checkpoint import read_config
    from opengpt4.model.convert import default_gguf_path
    from opengpt4.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(args.model, read_config(args.model)["tokenizer"])  # the GGUF's own vocabulary
    ps = prompts(tok.encode, args.batch, args.prompt_tokens)
    vocab_size = read_config(args.model)["model"]["vocab_size"]
    llama_cpp.llama_backend_init()
    load = getattr(llama_cpp, "llama_model_load_from_file", None) or llama_cpp.llama_load_model_from_file
    model_params = llama_cpp.llama_model_default_params()
    # Extra buffer types are llama.cpp's repacked weight layouts (AMX tiles on a Xeon with AMX).
    # The parent turns them off only after a run with them crashed (see `side`).
    model_params.use_extra_bufts = not args.no_extra_bufts
    model = load(str(default_gguf_path()).encode(), model_params)
    new_context = getattr(llama_cpp, "llama_init_from_model", None) or llama_cpp.llama_new_context_with_model

    def run(rows: list[list[int]], steps: int) -> tuple[float, list[float]]:
        """Prefill every row in one batch, then `steps` greedy tokens per row: the prefill's seconds
        and a timestamp after each token."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = len(rows) * (args.prompt_tokens + steps + 8)
        params.n_batch = params.n_ubatch = max(len(rows) * args.prompt_tokens, 512)
        params.n_seq_max = len(rows)
        params.n_threads = params.n_threads_batch = args.threads
        ctx = new_context(model, params)
        batch = llama_cpp.llama_batch_init(params.n_batch, 0, len(rows))
        try:
            def decode(entries: list[tuple[int, int, int, bool]]) -> list[int]:
                """entries: (token, position, row, wants logits); returns each logits row's argmax."""
                for i, (token, pos, row, logits) in enumerate(entries):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
                    batch.seq_id[i][0] = row
                batch.n_tokens = len(entries)
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                wanted = [i for i, e in enumerate(entries) if e[3]]
                return [int(np.ctypeslib.as_array(ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, i),
                                                              ctypes.POINTER(ctypes.c_float)), (vocab_size,)).argmax())
                        for i in wanted]

            start = time.perf_counter()
            nexts = decode([(t, pos, r, pos == len(ids) - 1) for r, ids in enumerate(rows) for pos, t in enumerate(ids)])
            stamps = [time.perf_counter()]
            for step in range(steps - 1):
                nexts = decode([(t, len(rows[r]) + step, r, True) for r, t in enumerate(nexts)])
                stamps.append(time.perf_counter())
            return stamps[0] - start, stamps
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)

    def prefill() -> float:
        return run(ps[:1], 1)[0]

    def decode(batch: int) -> float:
        _, stamps = run(ps[:batch], args.new_tokens)
        return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])

    result = measure(prefill, decode, args)
    result["weights"] = default_gguf_path().name  # quantized as shipped
    result["extra_buffer_types"] = not args.no_extra_bufts
    return result


def measure(prefill, decode, args) -> dict:
    prefill()  # warm-up: allocator, thread pool, kernels
    decode(1)
    prefill_s = statistics.median(prefill() for _ in range(7))
    return {  # medians: this is a shared 2-core VM, single runs vary by +-20%
        "prefill_tokens_per_s": args.prompt_tokens / prefill_s,
        "decode_tokens_per_s_batch1": statistics.median(decode(1) for _ in range(5)),
        f"decode_tokens_per_s_batch{args.batch}": statistics.median(decode(args.batch) for _ in range(3)),
        "peak_rss_mb": peak_rss_mb(),
    }


PEERS = {"transformers": "transformers", "llama_cpp": "llama_cpp"}  # peer -> the module it needs
INSTALL = {"transformers": "pip install transformers",
           "llama_cpp": "pip install llama-cpp-python (compiles llama.cpp: many minutes)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="opengpt4 checkpoint (default: SmolLM2, imported once)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                   help="precisions to compare at (opengpt4 and transformers use the same one)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of every side (default: torch's)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--worker", choices=["ours", *PEERS], help=argparse.SUPPRESS)
    p.add_argument("--hf-dir", help=argparse.SUPPRESS)
    p.add_argument("--no-extra-bufts", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    args.threads = args.threads or torch.get_num_threads()
    if args.worker:
        args.dtype = args.dtype[0]
        worker = {"ours": run_ours, "transformers": run_transformers, "llama_cpp": run_llama_cpp}[args.worker]
        print(json.dumps(worker(args)))
        return

    from opengpt4.model import convert

    skipped = {peer: f"{PEERS[peer]} is not installed ({INSTALL[peer]})" for peer in args.peers
               if importlib.util.find_spec(PEERS[peer]) is None}
    peers = [peer for peer in args.peers if peer not in skipped]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(convert.ensure_smollm2())
        common = ["--model", model, "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                  "--batch", str(args.batch), "--threads", str(args.threads)]
        if "transformers" in peers:
            common += ["--hf-dir", str(convert.export_hf(model, Path(tmp) / "hf"))]

        def side(name: str, dtype: str, *extra: str) -> dict:
            out = subprocess.run([sys.executable, __file__, "--worker", name, "--dtype", dtype, *common, *extra],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode < 0 and name == "llama_cpp" and not extra:
                # Seen on an Intel Xeon with AMX: llama-cpp-python 0.3.36 built with GGML_NATIVE segfaults
                # in llama_decode on the AMX-repacked Q4_1 weights. Rerun on its plain AVX-512 kernels
                # (what a CPU without AMX runs) and say so in the result.
                result = side(name, dtype, "--no-extra-bufts")
                return {**result, "crashed_with_extra_buffer_types": f"signal {-out.returncode}"}
            if out.returncode != 0:
                if name == "ours":
                    raise SystemExit(out.stderr)
                return {"failed": out.stderr.strip()[-1500:]}  # a peer's failure is reported, not fatal
            return json.loads(out.stdout.strip().splitlines()[-1])

        llama = {"llama_cpp": side("llama_cpp", "float32")} if "llama_cpp" in peers else {}  # its GGUF's own precision
        runs = []
        for dtype in args.dtype:
            ours = side("ours", dtype)
            theirs = {"transformers_generate": side("transformers", dtype)} if "transformers" in peers else {}
            runs.append(compare(dtype, ours, theirs | llama, args.batch))
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct", "threads": args.threads, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "batch": args.batch, "torch": torch.__version__,
        "versions": {peer: version(PEERS[peer]) for peer in peers}, "skipped": skipped, "runs": runs,
    }, indent=2))


def version(module: str) -> str | None:
    return getattr(__import__(module), "__version__", None)


def compare(dtype: str, ours: dict, peers: dict[str, dict], batch: int) -> dict:
    """Ratios of opengpt4 (Engine.stream and the scheduler) to each peer that ran; above 1 is faster here."""
    b = f"decode_tokens_per_s_batch{batch}"
    run = {"dtype": dtype, "opengpt4": ours, **peers,
           f"ours_batch{batch}_aggregate_vs_batch1": ours[b] / ours["decode_tokens_per_s_batch1"]}
    for name, theirs in peers.items():
        if "prefill_tokens_per_s" not in theirs:
            continue
        run[f"ratios_vs_{name}"] = {
            "decode_batch1": ours["decode_tokens_per_s_batch1"] / theirs["decode_tokens_per_s_batch1"],
            f"decode_batch{batch}": ours[b] / theirs[b],
            "scheduler_decode_batch1": ours["scheduler_decode_tokens_per_s_batch1"] / theirs["decode_tokens_per_s_batch1"],
            f"scheduler_decode_batch{batch}": ours[f"scheduler_{b}"] / theirs[b],
            "prefill": ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"],
        }
    return run


if __name__ == "__main__":
    main()
