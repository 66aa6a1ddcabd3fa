"""The training verbs of the `opengpt4` command: train, sft, rbrm, reward, dpo, rlhf.

All of them are objectives of the one training loop (`train/loop.py`); each verb parses its flags
and hands over to the module that owns the objective.
"""

from __future__ import annotations

import argparse
import importlib


def _command(module: str, function: str):
    """The verb's handler, imported when the verb runs: torch and the trainers load only for the verb in use."""
    def run(args: argparse.Namespace) -> None:
        getattr(importlib.import_module(module), function)(args)

    return run


def _stop_flags(p: argparse.ArgumentParser, steps_help: str) -> argparse._MutuallyExclusiveGroup:
    """--max-steps or --max-minutes (one of them, or the objective's default length)."""
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--max-steps", type=int, default=None, help=steps_help)
    stop.add_argument("--max-minutes", type=float, default=None,
                      help="wall-clock budget from the command's start, the final eval and checkpoint included")
    return stop


def add_lora_flag(p: argparse.ArgumentParser, more: str = "") -> None:
    p.add_argument("--lora", type=int, default=None, metavar="RANK",
                   help="train rank-RANK LoRA adapters on the attention and MLP projections (merged into the written "
                        f"weights) instead of every weight, at 10x the default lr{more}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain a model on a data dir (runs under torchrun too)")
    p.add_argument("--preset", default="d4",
                   help="model preset: test, d4 ... d12 (default d4: 5.05M parameters with the mini data's 8k vocabulary)")
    p.add_argument("--data", required=True, help="data directory from `opengpt4 data build`")
    p.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--max-steps", type=int, default=None,
                      help="optimizer steps to run. With neither flag: Chinchilla's 20 tokens per parameter, which "
                           "for d4 on mini data is 24,652 steps of 4,096 tokens (~100M tokens, about 4 hours on 2 "
                           "cores); `--max-minutes 10` is the 10-minute run")
    stop.add_argument("--max-minutes", type=float, default=None,
                      help="wall-clock budget from the command's start, the final eval and checkpoint included; "
                           "the learning-rate schedule follows time")
    stop.add_argument("--max-flops", type=float, default=None,
                      help="training FLOP budget (e.g. 3e13): the steps whose tokens cost that much by the model's "
                           "FLOPs per token; the same experiment on any machine, unlike --max-minutes")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training or model setting, e.g. --set lr=3e-3 --set model.n_layer=4 "
                        "--set model.vision=null (text only) --set probe_size=0 (no probes)")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP2 instead of DDP")
    p.set_defaults(func=_command("opengpt4.train.pretrain", "train_from_cli"))

    p = sub.add_parser("sft", help="supervised fine-tuning on chat data, full or LoRA (runs under torchrun too)")
    p.add_argument("--model", required=True,
                   help="checkpoint dir or model name to start from (e.g. smollm2-135m-instruct, a `train` run dir)")
    p.add_argument("--data", required=True,
                   help="a chat data dir (train.jsonl, heldout.jsonl) or a JSONL file: OpenAI fine-tuning "
                        "{\"messages\": [...]}, or the same under \"chat\" / \"conversations\" (ShareGPT turns too)")
    p.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    add_lora_flag(p)
    p.add_argument("--replay", default=None, metavar="DATA_DIR",
                   help="mix rows of this pretraining data dir (`data build`, the model's tokenizer) into training, "
                        "replay_fraction of all rows (default 0.25): keeps what pretraining taught")
    stop = _stop_flags(p, "optimizer steps to run")
    stop.add_argument("--epochs", type=float, default=None, help="passes over the training conversations (default 2)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (SFTConfig), e.g. --set lr=5e-5 --set seq_len=1024 --set batch_size=32")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP2 instead of DDP")
    p.set_defaults(func=_command("opengpt4.train.sft", "sft_from_cli"))

    p = sub.add_parser("rbrm", help="the safety graders (RBRMs): train the rubric classifier, measure agreement")
    verb = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    t = verb.add_parser("train", help="train a rubric classifier (a decoder + classification head) on "
                                      "labelled responses")
    t.add_argument("--model", required=True, help="checkpoint dir or model name to start from (e.g. a `train` run)")
    t.add_argument("--data", required=True,
                   help="a chat data dir (safety-train.jsonl, safety-heldout.jsonl for the eval) or a JSONL file")
    t.add_argument("--out", required=True, help="checkpoint directory: the decoder + head.safetensors + head.json")
    _stop_flags(t, "optimizer steps to run (default: a quarter epoch, --set epochs=E)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (RBRMConfig), e.g. --set lr=5e-4 --set epochs=2")
    t.set_defaults(func=_command("opengpt4.safety.classifier", "rbrm_train_from_cli"))
    a = verb.add_parser("agreement", help="accuracy and Cohen's kappa of a grader against the oracle's labels")
    a.add_argument("--grader", required=True, metavar="GRADER",
                   help="oracle | model:NAME_OR_URL (zero-shot rubric; an endpoint as http://HOST:PORT/v1#MODEL) "
                        "| classifier:DIR (from `rbrm train`)")
    a.add_argument("--data", required=True, help="a chat data dir (safety-<split>.jsonl) or a JSONL file")
    a.add_argument("--split", default="heldout", help="which safety-<split>.jsonl of a data dir (default heldout)")
    a.add_argument("--limit", type=int, default=None, help="grade a seeded random subset of this many responses")
    a.add_argument("--seed", type=int, default=0, help="the subset's seed (default 0)")
    a.add_argument("--out", default=None, help="write the report as JSON here")
    a.set_defaults(func=_command("opengpt4.safety.classifier", "rbrm_agreement_from_cli"))

    pairs_help = ("a chat data dir (pairs-train.jsonl; pairs-heldout.jsonl for the eval) or a JSONL file of TRL "
                  "preference pairs {\"prompt\": [messages], \"chosen\": [...], \"rejected\": [...]}")
    p = sub.add_parser("reward", help="the reward model: train it on preference pairs, score held-out pairs")
    verb = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    t = verb.add_parser("train", help="train a reward model (a decoder + scalar head, Bradley-Terry loss)")
    t.add_argument("--model", required=True, help="checkpoint dir or model name to start from (e.g. an `sft` run)")
    t.add_argument("--pairs", required=True, help=pairs_help)
    t.add_argument("--out", required=True, help="checkpoint directory: the decoder + head.safetensors + head.json")
    _stop_flags(t, "optimizer steps to run (default: 0.1 epoch, 64 steps on the mini data; --set epochs=E)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (RewardConfig), e.g. --set lr=1e-4 --set skip_too_long=true")
    t.set_defaults(func=_command("opengpt4.train.preference", "reward_train_from_cli"))
    sc = verb.add_parser("score", help="pairwise accuracy and mean margin of a reward model on preference pairs")
    sc.add_argument("--model", required=True, help="a `reward train` checkpoint dir")
    sc.add_argument("--pairs", required=True, help="a chat data dir (pairs-<split>.jsonl) or a JSONL file of pairs")
    sc.add_argument("--split", default="heldout", help="which pairs-<split>.jsonl of a data dir (default heldout)")
    sc.add_argument("--limit", type=int, default=None, help="score a seeded random subset of this many pairs")
    sc.add_argument("--seed", type=int, default=0, help="the subset's seed (default 0)")
    sc.add_argument("--out", default=None, help="write the report as JSON here")
    sc.set_defaults(func=_command("opengpt4.train.preference", "reward_score_from_cli"))

    p = sub.add_parser("dpo", help="direct preference optimisation of a checkpoint on preference pairs")
    p.add_argument("--policy", required=True, help="checkpoint dir or model name to start from; a frozen copy is "
                                                   "the reference")
    p.add_argument("--pairs", required=True, help=pairs_help)
    p.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    _stop_flags(p, "optimizer steps to run (default: 0.1 epoch, 64 steps on the mini data; --set epochs=E)")
    add_lora_flag(p, "; the reference is then the policy with its adapters off (no second copy of the weights)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (DPOConfig), e.g. --set beta=0.1 --set lr=5e-5")
    p.set_defaults(func=_command("opengpt4.train.preference", "dpo_from_cli"))

    p = sub.add_parser("rlhf", help="RLHF (PPO or GRPO) against a reward model, the RBRM safety reward and a KL leash")
    p.add_argument("--algo", choices=("ppo", "grpo"), default="ppo",
                   help="ppo: value head, GAE, clipped ratio; grpo: group-normalised advantages, no value head")
    p.add_argument("--policy", required=True, help="the SFT checkpoint to start from (also the frozen KL reference)")
    p.add_argument("--reward", required=True, help="a reward model dir (`opengpt4 reward train`)")
    p.add_argument("--rbrm", default=None, metavar="GRADER",
                   help="safety reward on prompts with a safety family: oracle | classifier:DIR | model:NAME_OR_URL")
    p.add_argument("--prompts", required=True,
                   help="a chat data dir (the prompts of pairs-train.jsonl; pairs-heldout.jsonl for the evals) or a "
                        "JSONL file of {\"prompt\": messages, \"family\", \"category\"} rows")
    p.add_argument("--heldout", default=None, help="held-out prompts for the evals (default: the data dir's)")
    p.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    _stop_flags(p, "optimizer steps to run (default: --set steps=200)")
    add_lora_flag(p, "; the KL reference is then the policy with its adapters off (no second copy of the weights)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (RLConfig), e.g. --set kl_coef=0.1 --set samples_per_prompt=4")
    p.set_defaults(func=_command("opengpt4.train.rl", "rlhf_from_cli"))
