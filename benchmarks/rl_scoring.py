"""RL scoring: a rollout's response log-probs with only the response positions through the LM head
(what train/rl.py does) vs the whole row's logits then a gather (TRL's way), same model, same run.

    python benchmarks/rl_scoring.py [--model smollm2-135m-instruct] [--rows 32] [--prompt 90] [--response 40]

Rows are random tokens: a prompt of --prompt tokens then a response of --response tokens, as a
GRPO rollout of SmolLM2 on the real safety prompts (~90-token chat prompts, <= 48-token replies).
Times the no-grad scoring of a rollout (old and reference log-probs) and one training step's
forward + backward, median of --reps, and checks both ways give the same log-probs. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.train.rl import scored, tempered_logprobs, token_logprobs


def full_row_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """The peer: logits for every position, log-softmax over all of them, then the response's tokens."""
    logits = model(ids)[:, :-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)[mask]


def response_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    return token_logprobs(tempered_logprobs(model(ids, where=scored(mask)), temperature), ids[:, 1:][mask])


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=90)
    ap.add_argument("--response", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    model, _ = load_checkpoint(args.model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.prompt + args.response))
    mask = torch.zeros(args.rows, ids.shape[1] - 1, dtype=torch.bool)
    mask[:, args.prompt - 1 :] = True  # position t scores token t+1: the response's tokens

    with torch.no_grad():
        a = full_row_logprobs(model, ids, mask, args.temperature)
        b = response_logprobs(model, ids, mask, args.temperature)
    max_diff = float((a - b).abs().max())

    def step(fn):
        def run():
            model.zero_grad(set_to_none=True)
            fn(model, ids, mask, args.temperature).sum().backward()
        return run

    def score(fn):
        def run():
            with torch.no_grad():
                fn(model, ids, mask, args.temperature)
        return run

    result = {"model": args.model, "rows": args.rows, "prompt_tokens": args.prompt, "response_tokens": args.response,
              "threads": torch.get_num_threads(), "max_abs_logprob_diff": max_diff}
    for name, make in (("scoring", score), ("train_step", step)):
        ours = median_seconds(make(response_logprobs), args.reps)
        peer = median_seconds(make(full_row_logprobs), args.reps)
        result[name] = {"response_positions_s": round(ours, 3), "full_rows_s": round(peer, 3),
                        "speedup": round(peer / ours, 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
