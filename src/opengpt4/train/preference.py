"""Learning from preference pairs: a Bradley-Terry reward model and DPO, two objectives of the one loop.

    opengpt4 reward train --model runs/d4-sft --pairs CHAT_DIR --out runs/rm
    opengpt4 reward score --model runs/rm --pairs CHAT_DIR
    opengpt4 dpo --policy runs/d4-sft --pairs CHAT_DIR --out runs/dpo [--resume]
    RewardModel.load("runs/rm").score(prompts, responses)    # (N,) float32 rewards: RL's reward

Pairs are TRL's conversational preference format, as `opengpt4 data chat` writes them
(pairs-train.jsonl, pairs-heldout.jsonl): {"prompt": [messages], "chosen": [assistant message],
"rejected": [...], "meta": {"kind", "rejected_because"}}. A response may also be a plain string, and a
row without "prompt" is TRL's implicit-prompt form (chosen and rejected are whole conversations; the
prompt is the messages they share). Every problem is a DataFileError naming file:line, raised when the
file is read; a pair whose two responses are the same teaches nothing and is one of them.

Each side is rendered with the model's own chat template: the prompt, then the response as the
assistant turn, up to and including the <|im_end|> that closes it (TRL's completion also holds the
newline the template writes after it: a token any chat model predicts, so it adds nothing to compare).
The response's tokens are SFT's loss mask (`sft.encode`: the assistant's content and its <|im_end|>;
assistant turns inside the prompt are context). A side longer than the model's context (or max_len) is
a PairTooLong error naming file:line, its length and the limit: cutting it would judge a response
without its question or without its end. `--set skip_too_long=true` skips such pairs and counts them.

The reward model is a HeadModel with a scalar head read at the response's <|im_end|> (model/heads.py,
as TRL's RewardTrainer on LlamaForSequenceClassification), started from a checkpoint (the SFT model)
and trained with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), summed over pairs; the two
sides of a pair go through one forward. Its checkpoint is the RBRM's: a normal decoder checkpoint plus
head.safetensors / head.json.

DPO (Rafailov et al., 2023) as TRL's DPOTrainer with loss_type="sigmoid": the policy starts from a
checkpoint (full fine-tuning) and a frozen copy of the same checkpoint is the reference (its own module,
never wrapped by DDP). Per side, the summed log-probability of the response tokens under each; the
implicit reward is beta * (log pi - log ref) and the loss is Bradley-Terry's on those rewards,
-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))). tests/test_preference.py checks it against
DPOTrainer on one batch. Resumable like SFT: the data position is the step, the checkpoint the policy.

Both evaluate a fixed seeded sample of eval_rows held-out pairs: how often the chosen side scores
above the rejected one (the reward model's pairwise accuracy; DPO's rewards/accuracies, with TRL's
rewards/chosen, rewards/rejected and rewards/margins), overall, per meta.kind and per
rejected_because. The held-out Bradley-Terry loss is the "val" curve of loss.png, the accuracies its
probe panel.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opengpt4.config import FineTuneConfig, LoopConfig, apply_overrides
from opengpt4.data.chat_io import ROLES, Conversation
from opengpt4.errors import CheckpointError, ConfigError, ContextLengthExceeded, DataFileError, PairTooLong
from opengpt4.files import iter_jsonl, write_text
from opengpt4.model.checkpoint import load_checkpoint, resolve_model
from opengpt4.model.heads import HeadConfig, HeadModel, load_head_checkpoint, pad_right
from opengpt4.model.transformer import IGNORE_INDEX, Transformer
from opengpt4.safety.classifier import by_length, head_snapshot
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.finetune import (
    describe_mode,
    freeze_image_path,
    load_trainable,
    reference,
    sha256,
    snapshot,
)
from opengpt4.train.loop import SeededEpochs, Snapshot, Trainer, micro_batches, read_state, target_count
from opengpt4.train.sft import encode as encode_chat

PAIRS_FILE = "pairs-{split}.jsonl"
REWARD_HEAD = HeadConfig("scalar", ("reward",))
GROUPS = ("kind", "rejected_because")  # the meta keys the evals break accuracy down by


@dataclass
class PairConfig(LoopConfig):
    """What the reward model's and DPO's settings share (`--set name=value`)."""

    micro_batch_size: int = 8  # pairs per forward: a step's pairs go into micro-batches by length (see next_batches)
    epochs: float = 0.1  # the length of the run unless --max-steps / --max-minutes say otherwise: 64 steps of 32
    # on the mini data's 20k pairs (the reward model's held-out accuracy read 0.779 at step 50, 0.785 at 96)
    max_len: int = 0  # tokens per side (prompt + response); 0: the model's context
    skip_too_long: bool = False  # a pair over max_len: an error naming file:line, or (True) skipped and counted
    eval_rows: int = 512  # held-out pairs per eval (a fixed seeded sample)
    eval_batch_size: int = 64  # sides per eval forward

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "eval_rows", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_len < 0:
            raise ConfigError(f"max_len must be >= 0, got {self.max_len}")


@dataclass
class RewardConfig(PairConfig):
    """`opengpt4 reward train --set name=value`: defaults for a small decoder (d4, ~5M parameters) on 2 CPU
    cores."""

    batch_size: int = 32  # pairs per step (64 sequences)
    mismatched: int = 1  # per training pair, this many more against a reply that does not answer it
    # (mismatched_pairs); 0: the data as it is
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    eval_at_start: bool = True  # chance-level accuracy at step 0, on the curves

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mismatched < 0:
            raise ConfigError(f"mismatched must be >= 0, got {self.mismatched}")


@dataclass
class DPOConfig(PairConfig, FineTuneConfig):
    """`opengpt4 dpo --set name=value`: TRL's defaults where they carry over (beta 0.1, the sigmoid loss),
    a learning rate for a small decoder (d4, ~5M parameters) on 2 CPU cores."""

    batch_size: int = 32  # pairs per step (64 sequences, and as many again through the reference)
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    ckpt_every: int = 50
    beta: float = 0.1  # how far the policy may move from the reference: the implicit reward's scale

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")


# --- data ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    prompt: list[dict[str, Any]]  # {"role", "content"} messages
    chosen: list[dict[str, Any]]  # assistant messages
    rejected: list[dict[str, Any]]
    meta: dict[str, Any]  # "kind", "rejected_because", ... as the file has them
    source: str  # "file:line"


def pairs_file(data: str | Path, split: str) -> Path:
    """A chat data dir's pairs-<split>.jsonl; a file stands for itself."""
    data = Path(data)
    return data / PAIRS_FILE.format(split=split) if data.is_dir() else data


def read_pairs(path: str | Path, split: str = "train") -> list[Pair]:
    """Preference pairs: a chat data dir's pairs-<split>.jsonl, or a JSONL file; errors name file:line."""
    file = pairs_file(path, split)
    pairs = [parse_pair(row, f"{file}:{number}") for number, row in iter_jsonl(file)]
    if not pairs:
        raise DataFileError(f"{file}: no preference pairs")
    return pairs


def parse_pair(row: dict[str, Any], where: str) -> Pair:
    if "prompt" not in row:
        row = implicit_prompt(row, where)
    prompt = _messages(row["prompt"], where)
    chosen, rejected = _response(row.get("chosen"), where, "chosen"), _response(row.get("rejected"), where, "rejected")
    if chosen == rejected:
        raise DataFileError(f"{where}: 'chosen' and 'rejected' are the same response: nothing to prefer")
    meta = row.get("meta")
    return Pair(prompt, chosen, rejected, meta if isinstance(meta, dict) else {}, where)


def implicit_prompt(row: dict[str, Any], where: str) -> dict[str, Any]:
    """TRL's implicit-prompt row as an explicit one: the messages chosen and rejected share are the prompt."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise DataFileError(f"{where}: no 'prompt', and 'chosen' and 'rejected' are not conversations to take one from")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return {**row, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value):
        raise DataFileError(f"{where}: 'prompt' must be a non-empty list of {{role, content}} messages "
                            f"(role one of {', '.join(ROLES)}, content a string)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _response(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    messages = [{"role": "assistant", "content": value}] if isinstance(value, str) else value
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str)
            and m["content"].strip() for m in messages):
        raise DataFileError(f"{where}: {key!r} must be a non-empty string or a list of assistant messages "
                            "with non-empty string content")
    return [{"role": "assistant", "content": m["content"]} for m in messages]


# --- encoding ----------------------------------------------------------------------------------------
def encode_response(tokenizer: Tokenizer, prompt: list[dict[str, Any]], response: list[dict[str, Any]],
                    where: str) -> tuple[list[int], list[int]]:
    """(input ids, next-token targets) of the prompt and the response as its assistant turn(s), up to the
    <|im_end|> closing the response: targets on the response's tokens only (SFT's mask)."""
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
    ids, targets = encode_chat(tokenizer, Conversation([*context, *response], where))
    end = int(np.flatnonzero(ids == tokenizer.im_end_id)[-1]) + 1
    return ids[:end].tolist(), targets[:end].tolist()


@dataclass
class RowBatch:
    input_ids: Tensor  # (B, T) right-padded
    lengths: Tensor  # (B,) real tokens per row
    targets: Tensor  # (B, T) next-token targets on the response tokens, IGNORE_INDEX elsewhere


@dataclass
class Rows:
    """Encoded sequences (prompt + response), batched on demand."""

    ids: list[list[int]]
    targets: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: Sequence[int]) -> RowBatch:
        input_ids, lengths = pad_right([self.ids[i] for i in rows], self.pad_id)
        targets, _ = pad_right([self.targets[i] for i in rows], IGNORE_INDEX)
        return RowBatch(input_ids, lengths, targets)


class EncodedPairs:
    """Pairs rendered for a model: `rows` holds pair i's chosen side at row i and its rejected side at
    row n + i. A pair with a side over `limit` tokens is PairTooLong, or skipped and counted."""

    def __init__(self, pairs: Sequence[Pair], tokenizer: Tokenizer, limit: int, skip_too_long: bool = False) -> None:
        self.pairs: list[Pair] = []
        self.lengths: list[int] = []  # each pair's longer side, in tokens
        self.skipped, self.first_skipped = 0, None
        chosen, rejected = [], []
        for p in pairs:
            sides = [encode_response(tokenizer, p.prompt, r, p.source) for r in (p.chosen, p.rejected)]
            longest = max(len(ids) for ids, _ in sides)
            if longest > limit:
                if not skip_too_long:
                    raise PairTooLong(p.source, longest, limit)
                self.skipped += 1
                self.first_skipped = self.first_skipped or p.source
                continue
            self.pairs.append(p)
            self.lengths.append(longest)
            chosen.append(sides[0])
            rejected.append(sides[1])
        if pairs and not self.pairs:
            raise DataFileError(f"{pairs[0].source.rsplit(':', 1)[0]}: all {len(pairs):,} pairs are longer than "
                                f"{limit} tokens")
        sides = chosen + rejected
        self.rows = Rows([ids for ids, _ in sides], [targets for _, targets in sides], tokenizer.pad_id)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, pairs: Sequence[int]) -> RowBatch:
        """The pairs' chosen sides, then their rejected sides, as one batch: one forward for both."""
        n = len(self.pairs)
        return self.rows.batch([*pairs, *(n + i for i in pairs)])

    def describe(self, limit: int) -> str:
        kinds = Counter(str(p.meta.get("kind", "?")) for p in self.pairs)
        text = f"{len(self):,} pairs ({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))})"
        if self.skipped:
            text += f", {self.skipped:,} skipped as longer than {limit} tokens (first: {self.first_skipped})"
        return text


# --- scores ----------------------------------------------------------------------------------------
def reward(model: nn.Module, batch: RowBatch) -> Tensor:
    """(B,) a scalar-head model's reward of each row, read at its last token (the response's <|im_end|>)."""
    device = next(model.parameters()).device
    return model(batch.input_ids.to(device), batch.lengths.to(device))


def response_logps(model: nn.Module, batch: RowBatch) -> Tensor:
    """(B,) each row's summed log-probability of its response tokens (its targets), float32."""
    device = next(model.parameters()).device
    targets = batch.targets.to(device)
    # Only the target positions reach the head (Transformer.forward): one loss per target, row by row.
    per_token = model(batch.input_ids.to(device), targets=targets, reduction="none")
    rows = (targets != IGNORE_INDEX).nonzero()[:, 0]
    return torch.zeros(len(targets), device=device).index_add(0, rows, -per_token.float())


@torch.no_grad()
def each_row(score: Callable[[nn.Module, RowBatch], Tensor], model: nn.Module, rows: Rows, batch_size: int,
             autocast: AbstractContextManager | None = None) -> Tensor:
    """(N,) `score` of every row in eval mode, float32 on the CPU, in row order: batched by length."""
    out = torch.empty(len(rows))
    was_training = model.training
    model.eval()
    for batch in by_length(rows.ids, batch_size):
        with autocast or nullcontext():
            out[batch] = score(model, rows.batch(batch)).float().cpu()
    model.train(was_training)
    return out


def bradley_terry(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Per pair, -log P(chosen preferred) = -log sigmoid(r_chosen - r_rejected): the reward model's loss,
    and DPO's on its implicit rewards."""
    return -F.logsigmoid(chosen.float() - rejected.float())


def dpo_rewards(policy: Tensor, reference: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """DPO's implicit rewards beta * (log pi - log ref) of the chosen and the rejected sides, from the
    log-probabilities of rows laid out as EncodedPairs.batch lays them (chosen sides first)."""
    rewards = beta * (policy.float() - reference.float())
    chosen, rejected = rewards.chunk(2)
    return chosen, rejected


def pairwise(chosen: Tensor, rejected: Tensor, pairs: Sequence[Pair]) -> dict[str, Any]:
    """How often the chosen side scores above the rejected one, and the mean margin between them: overall,
    and per value of each meta key in GROUPS (pairs without the key are left out of its breakdown)."""

    def summary(picked: Tensor | slice) -> dict[str, Any]:
        margin = chosen[picked] - rejected[picked]
        return {"n": len(margin), "accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean())}

    report = summary(slice(None))
    for key in GROUPS:
        members: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(pairs):
            if key in p.meta:
                members[str(p.meta[key])].append(i)
        report[key] = {value: summary(torch.tensor(idx)) for value, idx in sorted(members.items())}
    return report


def eval_metrics(report: dict[str, Any], loss: float, accuracy_key: str) -> dict[str, Any]:
    """A `pairwise` report as metrics-log fields: the loss on the "val" curve, the accuracies overall and
    per kind in the "probe" panel, the per-rejected_because accuracies beside them."""
    return {"val": {"heldout": loss},
            "probe": {accuracy_key: report["accuracy"], **{k: s["accuracy"] for k, s in report["kind"].items()}},
            "rejected_because": {k: s["accuracy"] for k, s in report["rejected_because"].items()}}


def format_accuracies(result: dict[str, Any], accuracy_key: str) -> str:
    probe = result["probe"]
    kinds = " ".join(f"{k} {v:.3f}" for k, v in probe.items() if k != accuracy_key)
    return f"held-out loss {result['val']['heldout']:.4f}, {accuracy_key} {probe[accuracy_key]:.3f} ({kinds})"


# --- training: what both objectives share ------------------------------------------------------------
class PairTraining:
    """The part of loop.Objective the reward model and DPO share: the training pairs visited in SeededEpochs
    order, micro-batches of pairs with both sides of each in one forward, the seeded held-out sample."""

    def __init__(self, base: Path, decoder: Transformer, tokenizer: Tokenizer, data: str | Path, cfg: PairConfig,
                 d: distributed.Dist) -> None:
        """`decoder`: loaded from the checkpoint `base` (or the run being resumed), its image path frozen."""
        self.cfg, self.dist, self.base = cfg, d, base
        self.decoder, self.tokenizer, self.model_config = decoder, tokenizer, decoder.config
        context = self.model_config.max_seq_len
        self.max_len = min(cfg.max_len or context, context)
        self.train_file = pairs_file(data, "train")
        self.train = EncodedPairs(self.training_pairs(read_pairs(self.train_file)), self.tokenizer, self.max_len,
                                  cfg.skip_too_long)
        self.heldout = self._heldout_sample(data)
        self.n_micro = micro_batches(cfg, d)
        self.pairs_per_micro = cfg.batch_size // d.world_size // self.n_micro
        self.epochs = SeededEpochs(len(self.train), cfg.batch_size, cfg.seed)
        self.step = 0

    def training_pairs(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs trained on, from those read (the reward model adds mismatched ones)."""
        return pairs

    def _heldout_sample(self, data: str | Path) -> EncodedPairs | None:
        file = pairs_file(data, "heldout")  # a single file (no data dir): no held-out eval
        if file == self.train_file or not file.is_file():
            return None
        pairs = read_pairs(file)
        # A seeded sample, not the first rows: the file lists its kinds of pair one after another.
        picked = sorted(random.Random(self.cfg.seed).sample(range(len(pairs)), min(self.cfg.eval_rows, len(pairs))))
        return EncodedPairs([pairs[i] for i in picked], self.tokenizer, self.max_len, self.cfg.skip_too_long)

    def describe_data(self) -> str:
        heldout = f"{len(self.heldout):,} pairs" if self.heldout is not None else "none (a chat data dir's pairs-heldout.jsonl)"
        return (f"train: {self.train.describe(self.max_len)}; held-out eval: {heldout}; "
                f"{self.cfg.batch_size} pairs/step, {self.steps_for(1.0):,} steps/epoch")

    def steps_for(self, epochs: float) -> int:
        return self.epochs.steps_for(epochs)

    def default_steps(self) -> int:
        return self.steps_for(self.cfg.epochs)

    def next_batches(self) -> list[RowBatch]:
        # Sorted by length before the split, so a micro-batch pads to a length near its own: the step's summed
        # loss is the same, and on the mini data 8 pairs per micro-batch forward 1.24x the real tokens, not
        # the 1.96x of one batch of 32 random pairs.
        pairs = sorted(self.epochs.rows(self.step, self.dist), key=self.train.lengths.__getitem__)
        self.step += 1
        m = self.pairs_per_micro
        return [self.train.batch(pairs[j * m : (j + 1) * m]) for j in range(self.n_micro)]

    def count(self, batch: RowBatch) -> int:
        return len(batch.lengths) // 2  # pairs

    def tokens(self, batch: RowBatch) -> int:
        return batch.input_ids.numel()

    def flops(self, batch: RowBatch) -> float:
        # A reward model reads one position per row through its scalar head: no LM head anywhere.
        return self.model_config.step_flops(batch.input_ids.numel(), batch.input_ids.shape[1], 0)

    def data_state(self) -> dict[str, Any]:
        return {"step": self.step, "base": str(self.base), "data": str(self.train_file), "pairs": len(self.train),
                "skipped": self.train.skipped, "first_skipped": self.train.first_skipped}


# --- the reward model ------------------------------------------------------------------------------------
# Replies that answer nothing. "Sure." is left out on purpose: it is what a PPO policy found against a
# reward model trained without these (it scored "Sure." above the chosen reply on 50 of 50 allowed
# prompts), and leaving it out measures whether the lesson carries over.
ACKNOWLEDGEMENTS = ("OK.", "Of course.", "Yes.", "Okay!", "Happy to help!", "Good question.", "I see.",
                    "Certainly.", "Here you go.", "Got it.")


def mismatched_pairs(pairs: Sequence[Pair], per_pair: int, seed: int) -> list[Pair]:
    """Each pair's prompt and chosen reply again, `per_pair` times, against a reply that does not answer
    it: another pair's chosen reply (off topic) or an empty acknowledgement (ACKNOWLEDGEMENTS), half each.

    The data's rejected replies are near misses written for their prompt (a wrong fact, a broken
    constraint, disallowed content); a policy in RL writes anything, and a reward model never shown a
    non-answer scores it arbitrarily (the RBRM's swapped responses exist for the same reason)."""
    rng = random.Random(seed)
    out = []
    for p in pairs:
        for _ in range(per_pair):
            if rng.random() < 0.5:
                reply, because = rng.choice(pairs).chosen, "off_topic"
            else:
                reply, because = [{"role": "assistant", "content": rng.choice(ACKNOWLEDGEMENTS)}], "non_answer"
            if reply != p.chosen:
                out.append(Pair(p.prompt, p.chosen, reply, {**p.meta, "rejected_because": because},
                                f"{p.source} ({because})"))
    return out


class RewardTraining(PairTraining):
    """A scalar-head reward model from a checkpoint, trained on pairs (see loop.Objective and this module's docstring)."""

    name = "reward"

    def __init__(self, model: str | Path, data: str | Path, cfg: RewardConfig, d: distributed.Dist) -> None:
        base = resolve_model(model)
        decoder, tokenizer = load_checkpoint(base)
        freeze_image_path(decoder)
        super().__init__(base, decoder, tokenizer, data, cfg, d)
        torch.manual_seed(cfg.seed)  # the head's initial weights
        self.model = HeadModel(self.decoder, REWARD_HEAD).train()

    def training_pairs(self, pairs: list[Pair]) -> list[Pair]:
        return pairs + mismatched_pairs(pairs, self.cfg.mismatched, self.cfg.seed)

    def describe(self) -> str:
        return (f"model {self.base.name} ({self.model_config.num_params() / 1e6:.2f}M parameters) + a scalar reward "
                f"head, Bradley-Terry loss; {self.describe_data()}")

    def loss(self, model: nn.Module, batch: RowBatch) -> Tensor:
        chosen, rejected = reward(model, batch).chunk(2)
        return bradley_terry(chosen, rejected).sum()

    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """The held-out sample's Bradley-Terry loss, pairwise accuracy (overall, per kind and per
        rejected_because) and mean margin r_chosen - r_rejected."""
        if self.heldout is None:
            return {}
        chosen, rejected = each_row(reward, model, self.heldout.rows, self.cfg.eval_batch_size, autocast).chunk(2)
        report = pairwise(chosen, rejected, self.heldout.pairs)
        loss = float(bradley_terry(chosen, rejected).mean())
        return {**eval_metrics(report, loss, "accuracy"), "margin": report["margin"]}

    def format_eval(self, result: dict[str, Any]) -> str:
        if "val" not in result:
            return f"step {result['step']}: no held-out pairs (a chat data dir's pairs-heldout.jsonl)"
        return f"step {result['step']}: {format_accuracies(result, 'accuracy')}, margin {result['margin']:.3f}"

    def snapshot(self, model: nn.Module) -> Snapshot:
        return head_snapshot(model, self.model_config)

    def state_dict(self) -> dict[str, Any]:
        return {"reward": self.data_state()}


def train_reward_model(model: str | Path, data: str | Path, out: Path, cfg: RewardConfig, *,
                       max_steps: int | None = None, max_minutes: float | None = None) -> Trainer:
    d = distributed.init()
    objective = RewardTraining(model, data, cfg, d)
    trainer = Trainer(objective, cfg, out, d, None, max_steps=max_steps, max_minutes=max_minutes, fsdp=False)
    trainer.run()
    return trainer


class RewardModel:
    """A trained reward model: the checkpoint dir of `opengpt4 reward train` (any decoder + scalar head).

        rm = RewardModel.load("runs/rm")
        rm.score([[{"role": "user", "content": "2 + 2?"}]], ["4."])    # tensor([r]), float32

    A response is the assistant's reply as a string (or a list of assistant messages), scored as in
    training: rendered after its prompt in the model's chat template, read at the <|im_end|> closing it.
    Inputs are batched by length; the model stays in eval mode, float32, on the device it is moved to
    (`rm.model.to(device)`). A prompt and response over the context raise ContextLengthExceeded."""

    def __init__(self, model: HeadModel, tokenizer: Tokenizer, *, batch_size: int = 32) -> None:
        if model.head.kind != "scalar":
            raise CheckpointError(f"not a reward model: a {model.head.kind} head over {list(model.head.labels)}, "
                                  "not a scalar one (a checkpoint of `opengpt4 reward train`)")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_len = model.decoder.config.max_seq_len

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 32) -> RewardModel:
        model, tokenizer = load_head_checkpoint(path)
        return cls(model, tokenizer, batch_size=batch_size)

    def score(self, prompts: Sequence[list[dict[str, Any]]], responses: Sequence[str | list[dict[str, Any]]]) -> Tensor:
        """(N,) the reward of each response to its prompt (a list of {role, content} messages)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            messages = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
            ids, targets = encode_response(self.tokenizer, prompt, messages, f"response {i}")
            if len(ids) > self.max_len:
                raise ContextLengthExceeded(self.max_len, len(ids))
            encoded.append((ids, targets))
        rows = Rows([ids for ids, _ in encoded], [targets for _, targets in encoded], self.tokenizer.pad_id)
        return each_row(reward, self.model, rows, self.batch_size)

    def score_pairs(self, pairs: Sequence[Pair]) -> tuple[Tensor, Tensor]:
        """(rewards of the chosen sides, of the rejected sides), each (N,); a pair over the context is PairTooLong."""
        encoded = EncodedPairs(pairs, self.tokenizer, self.max_len)
        rewards = each_row(reward, self.model, encoded.rows, self.batch_size)
        return rewards[: len(encoded)], rewards[len(encoded) :]


# --- DPO ---------------------------------------------------------------------------------------------
class DPO(PairTraining):
    """Direct preference optimisation of a checkpoint against a frozen copy of itself (see loop.Objective
    and this module's docstring)."""

    name = "dpo"

    def __init__(self, policy: str | Path, data: str | Path, out: Path, cfg: DPOConfig, d: distributed.Dist,
                 state: dict | None) -> None:
        resumed = state["dpo"] if state is not None else None
        # A resumed policy continues from its checkpoint (or the base and its adapters); the reference
        # is always the starting model: a frozen copy of it, or (LoRA) the policy with its adapters off.
        trainable = load_trainable(policy, out, resumed, cfg, "--policy")
        super().__init__(trainable.base, trainable.decoder, trainable.tokenizer, data, cfg, d)
        self.model, self.base_sha256 = self.decoder, trainable.base_sha256
        self.reference = None if cfg.lora_rank else load_checkpoint(self.base)[0].requires_grad_(False).eval()
        self.data_sha256 = sha256(self.train_file)
        if resumed is not None:
            if resumed["data_sha256"] != self.data_sha256:
                raise CheckpointError(f"{self.train_file} is not the data {out} was trained on ({resumed['data']}): "
                                      "resume with the same pairs")
            self.step = resumed["step"]
        self.flops_per_weight = 4.0 if cfg.lora_rank else 6.0  # LoRA: the frozen base gets no weight gradients
        self.heldout_reference: Tensor | None = None  # the reference's held-out log-probs: computed once

    def describe(self) -> str:
        against = "a frozen copy" if self.reference is not None else "itself with the adapters off"
        return (f"policy {self.base.name} ({self.model_config.num_params() / 1e6:.2f}M parameters, "
                f"{describe_mode(self.model)}) against {against}, DPO sigmoid loss, beta {self.cfg.beta:g}; "
                f"{self.describe_data()}")

    def flops(self, batch: RowBatch) -> float:
        # The policy's forward and backward and the reference's forward, each with the head on the responses.
        shape = (batch.input_ids.numel(), batch.input_ids.shape[1], target_count(batch))
        return self.model_config.step_flops(*shape, self.flops_per_weight) + self.model_config.step_flops(*shape, 2.0)

    def loss(self, model: nn.Module, batch: RowBatch) -> Tensor:
        with torch.no_grad(), reference(model, self.reference) as ref:
            reference_logps = response_logps(ref, batch)
        policy = response_logps(model, batch)
        return bradley_terry(*dpo_rewards(policy, reference_logps, self.cfg.beta)).sum()

    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """TRL's DPO metrics on the held-out sample (rewards/chosen, rewards/rejected: the mean implicit
        rewards; rewards/accuracies, overall, per kind and per rejected_because; rewards/margins) and its loss."""
        if self.heldout is None:
            return {}
        rows, size = self.heldout.rows, self.cfg.eval_batch_size
        if self.heldout_reference is None:
            with reference(model, self.reference) as ref:
                self.heldout_reference = each_row(response_logps, ref, rows, size, autocast)
        policy = each_row(response_logps, model, rows, size, autocast)
        chosen, rejected = dpo_rewards(policy, self.heldout_reference, self.cfg.beta)
        report = pairwise(chosen, rejected, self.heldout.pairs)
        loss = float(bradley_terry(chosen, rejected).mean())
        return {**eval_metrics(report, loss, "rewards/accuracies"), "rewards/chosen": float(chosen.mean()),
                "rewards/rejected": float(rejected.mean()), "rewards/accuracies": report["accuracy"],
                "rewards/margins": report["margin"]}

    def format_eval(self, result: dict[str, Any]) -> str:
        if "val" not in result:
            return f"step {result['step']}: no held-out pairs (a chat data dir's pairs-heldout.jsonl)"
        return (f"step {result['step']}: {format_accuracies(result, 'rewards/accuracies')}, rewards/margins "
                f"{result['rewards/margins']:.3f} (chosen {result['rewards/chosen']:.3f}, rejected "
                f"{result['rewards/rejected']:.3f})")

    def snapshot(self, model: nn.Module) -> Snapshot:
        return snapshot(model, self.model_config)

    def state_dict(self) -> dict[str, Any]:
        return {"dpo": {**self.data_state(), "base_sha256": self.base_sha256, "data_sha256": self.data_sha256}}


def build_dpo_trainer(policy: str | Path, data: str | Path, out: Path, cfg: DPOConfig, *,
                      max_steps: int | None = None, max_minutes: float | None = None, resume: bool = False) -> Trainer:
    d = distributed.init()
    state = read_state(out) if resume else None
    if state is not None:
        cfg = DPOConfig(**state["train_config"])
    objective = DPO(policy, data, out, cfg, d, state)
    return Trainer(objective, cfg, out, d, state, max_steps=max_steps, max_minutes=max_minutes, fsdp=False)


# --- the commands ------------------------------------------------------------------------------------
def reward_train_from_cli(args) -> None:
    cfg = RewardConfig()
    apply_overrides(cfg, args.set)
    train_reward_model(args.model, args.pairs, Path(args.out), cfg, max_steps=args.max_steps,
                       max_minutes=args.max_minutes)


def dpo_from_cli(args) -> None:
    cfg = DPOConfig()
    cfg.use_lora(args.lora)
    apply_overrides(cfg, args.set)
    build_dpo_trainer(args.policy, args.pairs, Path(args.out), cfg, max_steps=args.max_steps,
                      max_minutes=args.max_minutes, resume=args.resume).run()


def reward_score_from_cli(args) -> None:
    rm = RewardModel.load(args.model)
    source = pairs_file(args.pairs, args.split)
    pairs = read_pairs(args.pairs, args.split)
    total = len(pairs)
    if args.limit and args.limit < total:  # a seeded subset, in file order
        pairs = [pairs[i] for i in sorted(random.Random(args.seed).sample(range(total), args.limit))]
    start = time.perf_counter()
    report = pairwise(*rm.score_pairs(pairs), pairs)
    seconds = time.perf_counter() - start
    print(f"reward model {args.model} on {source}: {len(pairs):,} of {total:,} pairs"
          f"{f' (seed {args.seed})' if len(pairs) < total else ''}, scored in {seconds:.1f} s")
    print(f"pairwise accuracy {report['accuracy']:.3f}, mean margin {report['margin']:.3f}")
    for key in GROUPS:
        print(f"{key:<20}{'n':>7}{'accuracy':>10}{'margin':>9}")
        for value, s in report[key].items():
            print(f"{value:<20}{s['n']:>7,}{s['accuracy']:>10.3f}{s['margin']:>9.3f}")
    if args.out:
        result = {"model": str(args.model), "pairs": str(source), "total": total, "limit": args.limit,
                  "seed": args.seed, "seconds": seconds, **report}
        write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
