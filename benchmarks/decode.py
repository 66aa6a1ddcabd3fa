"""Decode speed of SmolLM2-135M: opengpt4's engine vs transformers' generate(), same weights, same run.

    python benchmarks/decode.py [--prompt-tokens 128] [--new-tokens 64] [--batch 8] [--dtype float32 bfloat16]

Each side runs in its own subprocess (so peak memory is its own) on the same CPU threads, at
each precision asked for (both sides at the same one): prefill tokens/s (one prompt), decode
tokens/s at batch 1 and aggregate at batch N (greedy, EOS ignored, timed from the first
generated token to the last), peak RSS. Prints one JSON object with both sides and the ratios.
"""

from __future__ import annotations

import argparse
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
    from opengpt4.model.checkpoint import load_checkpoint
    from opengpt4.model.transformer import KVCache

    model, tok = load_checkpoint(args.model, dtype=getattr(torch, args.dtype))
    engine = Engine(model, tok)
    ps = prompts(tok.encode, args.batch, args.prompt_tokens)

    def prefill() -> float:
        with torch.inference_mode():
            cache = KVCache(model.config, 1, args.prompt_tokens, dtype=model.lm_head.weight.dtype)
            start = time.perf_counter()
            model(torch.tensor([ps[0]]), cache=cache, last_only=True)
            return time.perf_counter() - start

    def decode(batch: int) -> float:
        params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        stamps = []
        for d in engine.stream(ps[:batch], params):
            if d.prompt_index == 0:
                stamps.append(time.perf_counter())
        return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])

    return measure(prefill, decode, args)


def run_transformers(args) -> dict:
    import torch
    from transformers import LlamaForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from opengpt4.model.checkpoint import read_config
    from opengpt4.tokenizer import Tokenizer

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="opengpt4 checkpoint (default: import SmolLM2 into a temp dir)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                   help="precisions to compare at (both sides use the same one)")
    p.add_argument("--worker", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--hf-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.dtype = args.dtype[0]
        print(json.dumps(run_ours(args) if args.worker == "ours" else run_transformers(args)))
        return

    from opengpt4.model import convert

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(convert.ensure_smollm2())
        hf_dir = convert.export_hf(model, Path(tmp) / "hf")
        common = ["--model", model, "--hf-dir", str(hf_dir), "--prompt-tokens", str(args.prompt_tokens),
                  "--new-tokens", str(args.new_tokens), "--batch", str(args.batch)]
        runs = []
        for dtype in args.dtype:
            sides = {}
            for side in ("ours", "transformers"):
                out = subprocess.run([sys.executable, __file__, "--worker", side, "--dtype", dtype, *common],
                                     check=True, capture_output=True, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
                sides[side] = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(compare(dtype, sides["ours"], sides["transformers"], args.batch))
    import torch
    import transformers

    print(json.dumps({
        "model": "SmolLM2-135M-Instruct", "threads": torch.get_num_threads(), "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "batch": args.batch, "torch": torch.__version__,
        "transformers": transformers.__version__, "runs": runs,
    }, indent=2))


def compare(dtype: str, ours: dict, theirs: dict, batch: int) -> dict:
    b = f"decode_tokens_per_s_batch{batch}"
    return {
        "dtype": dtype, "opengpt4": ours, "transformers_generate": theirs,
        "ratio_decode_batch1_vs_transformers": ours["decode_tokens_per_s_batch1"] / theirs["decode_tokens_per_s_batch1"],
        f"ratio_decode_batch{batch}_vs_transformers": ours[b] / theirs[b],
        "ratio_prefill_vs_transformers": ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"],
        f"ours_batch{batch}_aggregate_vs_batch1": ours[b] / ours["decode_tokens_per_s_batch1"],
    }


if __name__ == "__main__":
    main()
