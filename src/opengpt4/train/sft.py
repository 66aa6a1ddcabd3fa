"""Supervised fine-tuning on chat data: full or LoRA, one process or many (torchrun), resumable.

    opengpt4 sft --model smollm2-135m-instruct --data CHAT_DIR --out DIR [--lora 16] [--epochs 2]
    torchrun --nproc_per_node=2 -m opengpt4.cli sft ...

An objective of the shared loop (train/loop.py). It starts from any checkpoint (an imported
model by name, a pretraining run dir) and renders each conversation with the model's own
tokenizer (`render_chat`: ChatML, the system message its own turn, SmolLM2's default system
message where its template inserts one). The loss is on assistant tokens only: the tokenizer's
mask (assistant content and the <|im_end|> closing it), less turns marked "weight": 0.

Packing: whole conversations, never split, go into rows of seq_len tokens by best fit (each,
in a seeded shuffled order, into the fullest row that still has room; padding fills the
rest, with no loss): 93-97% of the row tokens are real on the chat data. A conversation longer
than seq_len is skipped and counted (the count and the first one's file:line are printed and
kept in trainer_state.json): truncating would cut the answer off, or train on an answer
without its question. Attention does not cross conversations: each row carries segment ids
and the decoder masks attention to a block-diagonal causal pattern, so a packed conversation
is computed exactly as it would be alone (tests/test_sft.py checks the logits) — as at
inference, where a conversation starts from nothing. Letting it cross (as pretraining does
across documents) is measurably wrong for chat data made from templates: SmolLM2-135M-Instruct's
loss on the test preset's held-out conversations is 1.76 packed with attention across them vs
2.63 alone (2.63 packed with the mask), i.e. the neighbours act as few-shot examples, so the
held-out loss would flatter and training would teach copying from a context that inference
never has. The mask costs ~6% of the attention time (SDPA with a boolean mask, not its causal kernel).

Replay (`--replay DATA_DIR`, `--set replay_fraction=F`): rows of the model's pretraining data (a
`data build` dir in its tokenizer), drawn by the default mixture's text domains, are added to the
packed rows so that they are F of all rows, each one causal segment with a loss on every token, as
in pretraining. Without it, SFT of the from-scratch d4 forgets the facts it read: 2 epochs on
`data chat` took its chat answers from 0.93 to 0.70 of the probe's facts; with replay 0.25 they stay
at 0.95-0.98 (README "Post-training").

Rows are packed once; epoch e visits them in the order of a generator seeded with [seed, e],
so the global batch of step s is a function of s alone: a checkpoint's data position is the
step, and any (ranks x micro-batches) split of the same batch sees the same rows.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from opengpt4.config import DEFAULT_MIXTURE, SFTConfig, apply_overrides
from opengpt4.data.chat_io import ChatData, Conversation, read_chat_data
from opengpt4.data.loader import DataLoader, read_index
from opengpt4.errors import ChatDataError, CheckpointError, ConfigError
from opengpt4.model.transformer import IGNORE_INDEX
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.finetune import describe_mode, load_trainable, sha256, snapshot
from opengpt4.train.loop import (
    SeededEpochs,
    Snapshot,
    Trainer,
    micro_batches,
    read_state,
    target_count,
)


def encode(tokenizer: Tokenizer, conversation: Conversation,
           read_image: Callable[[Any], str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, next-token targets) of one conversation: a target where the next token is
    in the assistant-only loss mask, IGNORE_INDEX elsewhere (and on the last token). `read_image`:
    each image's reading, written after it (Tokenizer.render_chat)."""
    encoding = tokenizer.render_chat(conversation.messages, read_image=read_image)
    ids, mask = np.array(encoding.ids, dtype=np.int64), np.array(encoding.loss_mask, dtype=bool)
    weights = [m.get("weight", 1) for m in conversation.messages if m["role"] == "assistant"]
    if 0 in weights:  # the mask's runs are the assistant turns, in order (each ends at its <|im_end|>)
        starts = np.flatnonzero(mask & ~np.r_[False, mask[:-1]])
        ends = np.flatnonzero(mask & ~np.r_[mask[1:], False]) + 1
        assert len(starts) == len(weights), (conversation.source, len(starts), len(weights))
        for lo, hi, weight in zip(starts, ends, weights, strict=True):
            mask[lo:hi] &= bool(weight)
    targets = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    targets[:-1] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
    return ids, targets


def best_fit(lengths: list[int], order: np.ndarray, capacity: int) -> list[list[int]]:
    """Rows of item indices: each item, in `order`, goes into the fullest row it still fits in."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in order:
        k = bisect_left(free, (lengths[i], -1))
        if k == len(free):
            room, row = capacity, len(rows)
            rows.append([])
        else:
            room, row = free.pop(k)
        rows[row].append(int(i))
        if room - lengths[i] > 0:
            insort(free, (room - lengths[i], row))
    return rows


@dataclass
class PackStats:
    conversations: int  # packed
    skipped: int  # longer than a row
    first_skipped: str | None  # file:line
    rows: int
    fill: float  # real tokens / row tokens
    trained_tokens: int  # tokens with a loss
    replay_rows: int = 0  # pretraining rows mixed in (counted in rows and trained_tokens)

    def describe(self, seq_len: int) -> str:
        text = (f"{self.conversations:,} conversations in {self.rows - self.replay_rows:,} rows of {seq_len} tokens "
                f"({100 * self.fill:.1f}% filled)")
        if self.replay_rows:
            text += f" + {self.replay_rows:,} pretraining rows (replay)"
        text += f", {self.trained_tokens:,} tokens with a loss"
        if self.skipped:
            text += f", {self.skipped:,} skipped as longer than {seq_len} tokens (first: {self.first_skipped})"
        return text


@dataclass
class ChatBatch:
    input_ids: torch.Tensor  # (b, T)
    targets: torch.Tensor  # (b, T), IGNORE_INDEX where no loss
    segments: torch.Tensor  # (b, T): which conversation of its row each token is (-1: padding)


class PackedChats:
    """Conversations tokenized and packed into rows of seq_len (input ids, targets, segment ids)."""

    def __init__(self, conversations: list[Conversation], tokenizer: Tokenizer, seq_len: int,
                 seed: int | None, pad_id: int, read_image: Callable[[Any], str] | None = None) -> None:
        """`seed`: the order conversations are packed in (None: as in the file); `read_image`: see `encode`."""
        encoded, skipped = [], []
        for c in conversations:
            ids, targets = encode(tokenizer, c, read_image)
            (encoded if len(ids) <= seq_len else skipped).append((c.source, ids, targets))
        if not encoded:
            where = conversations[0].source.rsplit(":", 1)[0]
            raise ChatDataError(f"{where}: all {len(conversations):,} conversations are longer than seq_len "
                                f"{seq_len} tokens (raise it with --set seq_len=N, up to the model's context)")
        lengths = [len(ids) for _, ids, _ in encoded]
        n = len(encoded)
        order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
        rows = best_fit(lengths, order, seq_len)
        self.sources = [[encoded[i][0] for i in members] for members in rows]  # each row's conversations, in order
        self.input_ids = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
        self.targets = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int32)
        self.segments = np.full((len(rows), seq_len), -1, dtype=np.int32)
        for r, members in enumerate(rows):
            at = 0
            for segment, i in enumerate(members):
                _, ids, targets = encoded[i]
                self.input_ids[r, at : at + len(ids)] = ids
                self.targets[r, at : at + len(ids)] = targets
                self.segments[r, at : at + len(ids)] = segment
                at += len(ids)
        self.stats = PackStats(n, len(skipped), skipped[0][0] if skipped else None, len(rows),
                               sum(lengths) / (len(rows) * seq_len), int((self.targets != IGNORE_INDEX).sum()))

    def add_replay(self, input_ids: np.ndarray, targets: np.ndarray) -> None:
        """Append whole rows of pretraining text: one segment each (plain causal attention, as in
        pretraining), a loss on every token."""
        self.input_ids = np.concatenate([self.input_ids, input_ids.astype(np.int32)])
        self.targets = np.concatenate([self.targets, targets.astype(np.int32)])
        self.segments = np.concatenate([self.segments, np.zeros(input_ids.shape, dtype=np.int32)])
        self.sources += [[] for _ in range(len(input_ids))]
        self.stats.rows += len(input_ids)
        self.stats.replay_rows += len(input_ids)
        self.stats.trained_tokens += int((targets != IGNORE_INDEX).sum())

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: list[int]) -> ChatBatch:
        return ChatBatch(*(torch.from_numpy(a[rows].astype(np.int64)) for a in (self.input_ids, self.targets,
                                                                                 self.segments)))


def replay_rows(cfg: SFTConfig, tokenizer: Tokenizer, chat_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of cfg.replay_data's train split, drawn by the default mixture's text domains, enough to be
    cfg.replay_fraction of all rows beside `chat_rows` packed chat rows (the same rows on a resume)."""
    data = Path(cfg.replay_data)
    index = read_index(data)
    if Tokenizer.from_dir(data, index["tokenizer"]).backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(f"replay data {data} was built with another tokenizer than the model's: replay needs "
                          "data in the model's own tokens (its pretraining data dir)")
    weights = {d: w for d, w in DEFAULT_MIXTURE.items() if d in index["domains"]}
    if not weights:
        raise ConfigError(f"replay data {data} has none of the text domains {', '.join(DEFAULT_MIXTURE)}")
    loader = DataLoader(data, "train", seq_len=cfg.seq_len, batch_size=1, weights=weights, vision=None,
                        image_token_id=None)
    return loader.sample_rows(round(chat_rows * cfg.replay_fraction / (1 - cfg.replay_fraction)), seed=cfg.seed)


class SFT:
    """Fine-tuning a checkpoint on conversations (see loop.Objective and this module's docstring)."""

    name = "sft"

    def __init__(self, model: str, data: ChatData, out: Path, cfg: SFTConfig, d: distributed.Dist,
                 state: dict | None) -> None:
        self.cfg, self.dist, self.data = cfg, d, data
        resumed = state["sft"] if state is not None else None
        self.data_sha256 = sha256(data.train_file)
        if resumed is not None and resumed["data_sha256"] != self.data_sha256:
            raise CheckpointError(f"{data.train_file} is not the data {out} was trained on "
                                  f"({resumed['data']}): resume with the same file")
        if cfg.replay_data is not None:
            read_index(cfg.replay_data)  # a missing or foreign dir fails here, naming it
        self.replay_sha256 = sha256(Path(cfg.replay_data) / "index.json") if cfg.replay_data else None
        if resumed is not None and resumed.get("replay_sha256") != self.replay_sha256:
            raise CheckpointError(f"{cfg.replay_data} is not the replay data {out} was trained on: resume with the same")
        torch.manual_seed(cfg.seed)
        trainable = load_trainable(model, out, resumed, cfg, "--model")
        self.model, self.tokenizer, self.base, self.base_sha256 = (trainable.decoder, trainable.tokenizer,
                                                                   trainable.base, trainable.base_sha256)
        config = self.model_config = self.model.config
        if cfg.seq_len > config.max_seq_len:
            raise ConfigError(f"seq_len {cfg.seq_len} is longer than {self.base}'s context ({config.max_seq_len})")

        pad = self.tokenizer.pad_id
        self.train = PackedChats(data.train, self.tokenizer, cfg.seq_len, cfg.seed, pad)
        if cfg.replay_data is not None and cfg.replay_fraction > 0:
            self.train.add_replay(*replay_rows(cfg, self.tokenizer, len(self.train)))
        self.heldout = PackedChats(data.heldout, self.tokenizer, cfg.seq_len, None, pad) if data.heldout else None
        self.n_micro = micro_batches(cfg, d)
        self.rows_per_micro = cfg.batch_size // d.world_size // self.n_micro
        self.step = resumed["step"] if resumed is not None else 0
        self.epochs = SeededEpochs(len(self.train), cfg.batch_size, cfg.seed)
        self.flops_per_weight = 4.0 if cfg.lora_rank else 6.0  # LoRA: the frozen base gets no weight gradients

    # --- the objective ---------------------------------------------------------------------
    def describe(self) -> str:
        c, cfg = self.model_config, self.cfg
        text = (f"model {self.base.name} ({c.num_params() / 1e6:.2f}M parameters), {describe_mode(self.model)}; "
                f"train: {self.train.stats.describe(cfg.seq_len)}; "
                f"{cfg.batch_size} rows/step, {self.steps_for(1.0):,} steps/epoch")
        if self.heldout is not None:
            text += f"; held-out: {self.heldout.stats.describe(cfg.seq_len)}"
        return text

    def steps_for(self, epochs: float) -> int:
        return self.epochs.steps_for(epochs)

    def default_steps(self) -> int:
        return self.steps_for(self.cfg.epochs)

    def next_batches(self) -> list[ChatBatch]:
        rows = self.epochs.rows(self.step, self.dist)
        self.step += 1
        m = self.rows_per_micro
        return [self.train.batch(rows[j * m : (j + 1) * m]) for j in range(self.n_micro)]

    def count(self, batch: ChatBatch) -> int:
        return target_count(batch)

    def tokens(self, batch: ChatBatch) -> int:
        return batch.input_ids.numel()

    def flops(self, batch: ChatBatch) -> float:
        return self.model_config.step_flops(batch.input_ids.numel(), batch.input_ids.shape[1], target_count(batch),
                                            self.flops_per_weight)

    def loss(self, model: nn.Module, batch: ChatBatch) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(batch.input_ids.to(device), targets=batch.targets.to(device),
                     segments=batch.segments.to(device), reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """Loss on the held-out conversations' assistant tokens (the first eval_rows packed rows)."""
        if self.heldout is None:
            return {}
        rows, m = list(range(min(self.cfg.eval_rows, len(self.heldout)))), self.rows_per_micro
        model.eval()
        total, count = 0.0, 0
        for i in range(0, len(rows), m):
            batch = self.heldout.batch(rows[i : i + m])
            with autocast:
                total += float(self.loss(model, batch))
            count += target_count(batch)
        model.train()
        return {"val": {"heldout": total / count}}

    def format_eval(self, result: dict[str, Any]) -> str:
        if "val" not in result:
            return f"step {result['step']}: no held-out data (a chat data dir's heldout.jsonl)"
        return f"step {result['step']}: held-out loss {result['val']['heldout']:.4f}"

    def snapshot(self, model: nn.Module) -> Snapshot:
        return snapshot(model, self.model_config)

    def state_dict(self) -> dict[str, Any]:
        return {"sft": {"step": self.step, "base": str(self.base), "base_sha256": self.base_sha256,
                        "data": str(self.data.train_file), "data_sha256": self.data_sha256,
                        "replay_sha256": self.replay_sha256,
                        "train": vars(self.train.stats),
                        "heldout": vars(self.heldout.stats) if self.heldout is not None else None}}


def build_trainer(model: str, data: str | Path, out: Path, cfg: SFTConfig, *, max_steps: int | None = None,
                  epochs: float | None = None, max_minutes: float | None = None, resume: bool = False,
                  fsdp: bool = False) -> Trainer:
    d = distributed.init()
    state = read_state(out) if resume else None
    if state is not None:
        cfg = SFTConfig(**state["train_config"])
    objective = SFT(model, read_chat_data(data), out, cfg, d, state)
    if epochs is not None:
        max_steps = objective.steps_for(epochs)
    return Trainer(objective, cfg, out, d, state, max_steps=max_steps, max_minutes=max_minutes, fsdp=fsdp)


def sft_from_cli(args) -> None:
    cfg = SFTConfig()
    cfg.use_lora(args.lora)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.replay is not None:
        cfg.replay_data = args.replay
    apply_overrides(cfg, args.set)
    build_trainer(args.model, args.data, Path(args.out), cfg, max_steps=args.max_steps, epochs=args.epochs,
                  max_minutes=args.max_minutes, resume=args.resume, fsdp=args.fsdp).run()
