"""Multiple-choice scoring speed on SmolLM2-135M: batched log-likelihood vs one request at a time.

    python benchmarks/eval_throughput.py [--questions 100] [--batch-size 16] [--dtype float32]

Same model, same requests, same run: `opengpt4.engine.score.loglikelihood` (batched, shared
contexts and few-shot prefixes run once) against `loglikelihood_naive` (one plain forward per
request, the reference it must equal). Tasks: MMLU 5-shot (the first questions of four
subjects, in file order as a full run meets them: a full run has ~250 per subject, so this
understates the sharing) and ARC-Easy (first questions). Prints one JSON object: questions
per second on each side, the ratio (of wall time, and of this process's CPU time, which a
busy shared machine disturbs less), the largest logprob difference between the two, and
the accuracy on the questions scored (a sanity check, not a benchmark result).
"""

from __future__ import annotations

import argparse
import json
import time

MMLU_SUBJECTS = ("high_school_geography", "college_biology", "marketing", "high_school_mathematics")


def mmlu_questions(n: int) -> list[tuple[list, int]]:
    """(requests, gold) of n questions, n/4 from each subject."""
    from opengpt4.engine.score import LoglikRequest
    from opengpt4.evals.benchmarks.mmlu import LETTERS, MMLU

    samples = MMLU(None, subjects=list(MMLU_SUBJECTS)).load_samples()
    per_subject = -(-n // len(MMLU_SUBJECTS))
    chosen = []
    for subject in MMLU_SUBJECTS:
        chosen += [s for s in samples if s["subject"] == subject][:per_subject]
    return [([LoglikRequest(s["prompt"], f" {c}") for c in LETTERS], LETTERS.index(s["answer"]))
            for s in chosen[:n]]


def arc_questions(n: int) -> list[tuple[list, int]]:
    from opengpt4.evals.benchmarks.common import join
    from opengpt4.evals.benchmarks.gauntlet import GauntletTask

    samples = GauntletTask(None, task="arc_easy").load_samples()[:n]
    return [([join(s["query"], c) for c in s["choices"]], int(s["gold"])) for s in samples]


def measure(engine, questions: list[tuple[list, int]], batch_size: int) -> dict:
    from opengpt4.engine.score import loglikelihood, loglikelihood_naive

    requests = [r for group, _ in questions for r in group]
    loglikelihood(engine, requests[:8], batch_size)  # warm-up: allocator, thread pool, kernels
    start, cpu = time.perf_counter(), time.process_time()
    batched = loglikelihood(engine, requests, batch_size)
    batched_s, batched_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    naive = loglikelihood_naive(engine, requests)
    naive_s, naive_cpu = time.perf_counter() - start, time.process_time() - cpu

    correct, i = 0, 0
    for group, gold in questions:
        scores = [x.logprob for x in batched[i : i + len(group)]]
        correct += max(range(len(scores)), key=scores.__getitem__) == gold
        i += len(group)
    tokens = [len(engine.tokenizer.encode(r.context + r.continuation)) for r in requests]
    n = len(questions)
    return {
        "questions": n, "requests": len(requests), "mean_request_tokens": sum(tokens) / len(tokens),
        "batched_questions_per_s": n / batched_s, "naive_questions_per_s": n / naive_s,
        "ratio": naive_s / batched_s, "batched_s_per_question": batched_s / n,
        # CPU seconds of this process: steadier than wall time on a machine shared with other jobs
        "ratio_cpu_time": naive_cpu / batched_cpu,
        "max_abs_logprob_diff": max(abs(a.logprob - b.logprob) for a, b in zip(batched, naive, strict=True)),
        "greedy_flags_equal": all(a.is_greedy == b.is_greedy for a, b in zip(batched, naive, strict=True)),
        "accuracy": correct / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="opengpt4 checkpoint (default: the imported SmolLM2)")
    p.add_argument("--questions", type=int, default=100, help="questions per task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()

    import torch

    from opengpt4.engine.generate import Engine
    from opengpt4.model import convert
    from opengpt4.model.checkpoint import load_checkpoint

    net, tokenizer = load_checkpoint(args.model or convert.ensure_smollm2(), dtype=getattr(torch, args.dtype))
    engine = Engine(net, tokenizer)

    tasks = {"mmlu_5shot": measure(engine, mmlu_questions(args.questions), args.batch_size),
             "arc_easy": measure(engine, arc_questions(args.questions), args.batch_size)}
    batched_s = sum(t["questions"] / t["batched_questions_per_s"] for t in tasks.values())
    naive_s = sum(t["questions"] / t["naive_questions_per_s"] for t in tasks.values())
    total = sum(t["questions"] for t in tasks.values())
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "torch": torch.__version__, "tasks": tasks,
        "overall": {"batched_questions_per_s": total / batched_s, "naive_questions_per_s": total / naive_s,
                    "ratio": naive_s / batched_s},
    }, indent=2))


if __name__ == "__main__":
    main()
