"""Inference precision modes of SmolLM2-135M-Instruct against the float32 reference, same run.

    python benchmarks/precision.py [--tokens 24000] [--mmlu 1000] [--modes float32 bf16-weights bfloat16]

Each mode runs in its own subprocess (so peak memory is its own) and measures:
- top-1 agreement with float32: teacher-forced next-token argmax over held-out text, in
  chunks of 512 tokens — Python standard-library modules held out of our training data
  (code), the synthetic world's validation documents (prose, five languages) and, when the
  HellaSwag file is present, HellaSwag validation contexts (plain English);
- perplexity on the same tokens, and its difference from float32;
- MMLU 5-shot accuracy on a seeded subset (`opengpt4 eval run mmlu --limit N`), its
  difference from float32 and how many answers flipped (needs the MMLU CSVs: `--data-dir`,
  `$OPENGPT4_DATA_DIR` or ../shared/data; skipped with a note otherwise);
- decode tokens/s at batch 1 (greedy, 128-token prompt, 64 new tokens, median of 5) and
  the process's peak RSS.
Prints one JSON object; `--out FILE` also writes it there.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 512


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def held_out_texts(data_dir: Path | None, budget_chars: int) -> dict[str, str]:
    """About `budget_chars` characters from each source."""
    from opengpt4.data.code import stdlib_sources
    from opengpt4.data.world import World

    sources, _ = stdlib_sources("val")  # the held-out modules
    texts = {"code": "\n\n".join(text for _, text in sources)[:budget_chars]}
    prose = []
    for doc in World.generate(seed=0, size="mini").documents("val"):
        if doc.domain in ("world", "qa", "misconceptions"):
            prose.append(doc.text)
        if sum(map(len, prose)) > budget_chars:
            break
    texts["world"] = "\n\n".join(prose)[:budget_chars]
    hellaswag = (data_dir / "hellaswag" / "hellaswag_val_full.txt.bz2") if data_dir else None
    if hellaswag and hellaswag.is_file():
        with bz2.open(hellaswag, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        # 6 lines an item: context, gold label, 4 endings; the context + its gold ending is real prose.
        items = [f"{lines[i]} {lines[i + 2 + int(lines[i + 1])]}" for i in range(0, len(lines) - 5, 6)]
        texts["english"] = "\n".join(items)[:budget_chars]
    return texts


def run_worker(args) -> dict:
    import numpy as np
    import torch

    from opengpt4.engine.generate import Engine
    from opengpt4.engine.sampling import SamplingParams

    engine = Engine.load(args.model, args.mode)
    tok, model = engine.tokenizer, engine.model
    data_dir = Path(args.data_dir) if args.data_dir else None
    per_source = max(args.tokens // 3, CHUNK)
    out: dict = {"mode": args.mode, "sources": {}}
    with torch.inference_mode():
        for name, text in held_out_texts(data_dir, per_source * 6).items():
            ids = tok.encode(text)[: per_source + 1]
            top1, nll = [], []
            for start in range(0, len(ids) - 1, CHUNK):
                chunk = ids[start : start + CHUNK + 1]
                logits = model(torch.tensor([chunk[:-1]]))[0].float()
                target = torch.tensor(chunk[1:])
                top1.append(logits.argmax(-1).numpy())
                nll.append((torch.logsumexp(logits, -1) - logits.gather(-1, target[:, None])[:, 0]).numpy())
            np.save(Path(args.scratch) / f"{args.mode}-{name}-top1.npy", np.concatenate(top1))
            out["sources"][name] = {"tokens": len(ids) - 1, "nll": float(np.concatenate(nll).mean())}

        prompt = tok.encode("The history of science is the study of the development of scientific knowledge. " * 20)[:128]
        params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)

        def decode() -> float:
            stamps = [time.perf_counter() for _ in engine.stream([prompt], params)]
            return (len(stamps) - 1) / (stamps[-1] - stamps[0])

        decode()  # warm-up
        out["decode_tokens_per_s_batch1"] = statistics.median(decode() for _ in range(5))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_mmlu(args, mode: str, out_dir: Path) -> dict | None:
    cmd = [sys.executable, "-m", "opengpt4.cli", "eval", "run", "mmlu", "--model", args.model, "--dtype", mode,
           "--limit", str(args.mmlu), "--no-cache", "--out", str(out_dir)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    started = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    [run_dir] = {p.parent for p in out_dir.rglob("results.json")}
    results = json.loads((run_dir / "results.json").read_text())
    scores = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        event = json.loads(line)
        if "sample_id" in event:
            scores[event["sample_id"]] = event["score"]
    return {"accuracy": results["score"], "n": len(scores), "seconds": time.perf_counter() - started,
            "scores": scores}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="opengpt4 checkpoint (default: SmolLM2, imported if missing)")
    p.add_argument("--modes", nargs="+", default=["float32", "bf16-weights", "bfloat16"])
    p.add_argument("--tokens", type=int, default=24000, help="held-out tokens scored (split over the sources)")
    p.add_argument("--mmlu", type=int, default=1000, help="MMLU questions (a seeded subset); 0 skips it")
    p.add_argument("--data-dir", default=None, help="benchmark data (default $OPENGPT4_DATA_DIR or ../shared/data)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.data_dir is None:
        default = os.environ.get("OPENGPT4_DATA_DIR") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
        args.data_dir = default if Path(default).is_dir() else None
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    if args.model is None:
        from opengpt4.model.convert import ensure_smollm2

        args.model = str(ensure_smollm2())

    import numpy as np
    import torch

    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            r = subprocess.run([sys.executable, __file__, "--worker", "1", "--mode", mode, "--model", args.model,
                                "--tokens", str(args.tokens), "--scratch", scratch,
                                *(["--data-dir", args.data_dir] if args.data_dir else [])],
                               check=True, capture_output=True, text=True)
            runs[mode] = json.loads(r.stdout.strip().splitlines()[-1])
            if args.mmlu and args.data_dir:
                runs[mode]["mmlu"] = run_mmlu(args, mode, Path(scratch) / f"mmlu-{mode}")
            print(f"{mode}: done", file=sys.stderr)
        ref = runs.get("float32")
        table = []
        for mode, run in runs.items():
            row = {"mode": mode, "decode_tokens_per_s_batch1": run["decode_tokens_per_s_batch1"],
                   "peak_rss_mb": run["peak_rss_mb"]}
            total = sum(s["tokens"] for s in run["sources"].values())
            nll = sum(s["nll"] * s["tokens"] for s in run["sources"].values()) / total
            row |= {"tokens": total, "perplexity": float(np.exp(nll))}
            if ref:
                agree = {}
                for name in run["sources"]:
                    a = np.load(Path(scratch) / f"{mode}-{name}-top1.npy")
                    b = np.load(Path(scratch) / f"float32-{name}-top1.npy")
                    agree[name] = float((a == b).mean())
                    run["sources"][name]["top1_agreement"] = agree[name]
                row["top1_agreement"] = sum(agree[n] * run["sources"][n]["tokens"] for n in agree) / total
                ref_nll = sum(s["nll"] * s["tokens"] for s in ref["sources"].values()) / total
                row["perplexity_delta"] = row["perplexity"] - float(np.exp(ref_nll))
                row["decode_speedup_vs_float32"] = row["decode_tokens_per_s_batch1"] / ref["decode_tokens_per_s_batch1"]
            mmlu, ref_mmlu = run.get("mmlu"), (ref or {}).get("mmlu")
            if mmlu and "accuracy" in mmlu:
                row["mmlu_accuracy"] = mmlu["accuracy"]
                if ref_mmlu and "accuracy" in ref_mmlu:
                    row["mmlu_delta"] = mmlu["accuracy"] - ref_mmlu["accuracy"]
                    row["mmlu_flipped"] = sum(mmlu["scores"][k] != v for k, v in ref_mmlu["scores"].items())
            elif mmlu:
                row["mmlu_skipped"] = mmlu["skipped"]
            table.append(row)
    for run in runs.values():
        if run.get("mmlu"):
            run["mmlu"].pop("scores", None)
    result = {"model": args.model, "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "mmlu_questions": args.mmlu,
              "table": table, "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
