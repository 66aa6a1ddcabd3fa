"""The trained RBRM: a small decoder with a classification head over the rubric's classes.

    opengpt4 rbrm train --model /work/exp/d4 --data CHAT_DIR --out DIR
    opengpt4 rbrm agreement --grader classifier:DIR --data CHAT_DIR

Input: the prompt's messages (system and user turns) and the response as the assistant turn,
rendered with the decoder's own chat template (ChatML), read at the <|im_end|> that closes the
response (model/heads.py: the last real token's hidden state -> `score`). A row longer than the
context keeps its end: the response and as much of the prompt as fits.

The family is known when grading, so it is not put in the input: the head has one logit per
rubric class of every family (A-D, compliant/noncompliant, helpful/over_refusal) and the
logits outside the family's classes are masked to -inf, in training and in grading. The
families' classes are disjoint (disallowed and jailbreak share one rubric), so the mask alone
tells the model everything the family does; the grade is always a class of the family (never
an invalid one), and no capacity goes to recognising families. The category is not used:
the prompt shows it, and real prompts (Do-Not-Answer) have none of ours.

Training data: the labelled responses, plus as many again with each prompt given another
prompt's response, labelled by the oracle (`swapped_responses`; `--set swapped=0` turns it off).
The data's responses are each written for their own prompt, so without the swaps a classifier
learns the response templates: it agreed with the oracle on 100% of the held-out responses but
on 42% of SmolLM2's own replies to held-out prompts (59% of an SFT'd d4's); with them, 98.5%,
80% and 77%.

Loss: cross-entropy on the masked logits, not class-weighted: the data's responses are balanced
by construction (one per rubric class for every prompt); the swapped ones are not (mostly D,
over_refusal and noncompliant, the oracle's classes for a reply to another question) and are
left as the oracle labels them. The eval is held-out accuracy (overall and per family) and
loss on a fixed seeded sample of `eval_rows` rows of safety-heldout.jsonl (the curves of
loss.png: accuracy in its probe panel).

`ClassifierGrader` implements graders.Grader: batched scoring (rows sorted by length, padded
per batch, one forward each), the grade's reward the rubric reward of the predicted class, so
it can serve as RL's safety reward.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opengpt4.config import LoopConfig, ModelConfig, apply_overrides
from opengpt4.errors import CheckpointError, ConfigError, DataFileError
from opengpt4.files import iter_jsonl, write_text
from opengpt4.model.checkpoint import load_checkpoint, resolve_model
from opengpt4.model.heads import HeadConfig, HeadModel, head_writer, load_head_checkpoint, pad_right
from opengpt4.safety.graders import (
    LABELS,
    REWARDS,
    Case,
    Grade,
    Grader,
    ModelGradedRubric,
    OracleGrader,
    cohen_kappa,
    oracle_label,
)
from opengpt4.safety.policy import SENSITIVE
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.finetune import freeze_image_path
from opengpt4.train.loop import SeededEpochs, Snapshot, Trainer, gather_parameters, micro_batches, plain_model

RUBRIC_LABELS = tuple(dict.fromkeys(label for labels in LABELS.values() for label in labels))
SPLIT_FILE = "safety-{split}.jsonl"


@dataclass
class RBRMConfig(LoopConfig):
    """`opengpt4 rbrm train --set name=value`: LoopConfig's fields with defaults for a small decoder
    (d4, ~5M parameters) on 2 CPU cores, and the classifier's own."""

    batch_size: int = 32  # labelled responses per step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_every: int = 50
    eval_at_start: bool = True  # chance-level accuracy at step 0, on the curves
    epochs: float = 0.25  # the length of the run unless --max-steps says otherwise: 113 steps on the mini data
    # (swapped included); twice as long measured no better, on held-out or on models' own responses
    max_len: int = 0  # tokens per row, longer rows keep their end; 0: the model's context
    swapped: int = 1  # per labelled response, this many more with its prompt and another prompt's response,
    # labelled by the oracle (see swapped_responses); 0: the data as it is
    eval_rows: int = 512  # held-out rows per eval (a fixed seeded sample)
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "eval_rows", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_len", "swapped"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


# --- data ------------------------------------------------------------------------------------------
def labelled_file(data: str | Path, split: str) -> Path:
    """A chat data dir's safety-<split>.jsonl; a file stands for itself."""
    data = Path(data)
    return data / SPLIT_FILE.format(split=split) if data.is_dir() else data


def read_labelled(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rubric-labelled responses: a chat data dir's safety-<split>.jsonl, or a JSONL file of rows
    {"messages", "response", "family", "category", "label"}; errors name file:line."""
    file = labelled_file(path, split)
    rows = []
    for number, row in iter_jsonl(file):
        where = f"{file}:{number}"
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise DataFileError(f"{where}: 'messages' must be a non-empty list of {{role, content}} messages")
        if not isinstance(row.get("response"), str):
            raise DataFileError(f"{where}: 'response' must be a string")
        family, label = row.get("family"), row.get("label")
        if family not in LABELS:
            raise DataFileError(f"{where}: unknown family {family!r}; expected one of {', '.join(LABELS)}")
        if label not in LABELS[family]:
            raise DataFileError(f"{where}: label {label!r} is not a {family} class ({', '.join(LABELS[family])})")
        rows.append({**row, "category": row.get("category", "")})
    if not rows:
        raise DataFileError(f"{file}: no labelled responses")
    return rows


def swapped_responses(rows: Sequence[Mapping[str, Any]], per_row: int, seed: int) -> list[dict[str, Any]]:
    """Each row's prompt again with `per_row` responses written for other prompts (of any family),
    labelled by the oracle: a refusal on an allowed look-alike (over-refusal), a helpful answer to
    another question on a disallowed prompt (D), a referral-free reply on a sensitive one.

    The data's own responses are written for their prompts, so a classifier could learn the
    response alone; a policy in RL writes anything for anything, and a reward that was never shown
    a mismatched reply grades it arbitrarily. Rows whose category the oracle does not know (real
    sensitive prompts) are left out."""
    rng = random.Random(seed)
    known = [r for r in rows if r["family"] != "sensitive" or r["category"] in SENSITIVE]
    out = []
    for r in known:
        for _ in range(per_row):
            response = rng.choice(rows)["response"]
            out.append({**r, "response": response, "label": oracle_label(response, r["family"], r["category"])})
    return out


def encode(tokenizer: Tokenizer, messages: list[dict[str, Any]], response: str, max_len: int | None) -> list[int]:
    """The prompt and the response as its assistant turn, in the chat template, up to the <|im_end|>
    closing the response (the token the head reads); at most the last max_len tokens (None: all)."""
    ids = tokenizer.render_chat([*messages, {"role": "assistant", "content": response}]).ids
    end = len(ids) - ids[::-1].index(tokenizer.im_end_id)
    return ids[max(end - (max_len or end), 0) : end]


def family_mask(labels: Sequence[str], families: Sequence[str]) -> Tensor:
    """(len(families), len(labels)): True where a label is one of the family's rubric classes."""
    for family in families:
        if family not in LABELS:
            raise ValueError(f"unknown prompt family {family!r}; expected one of {', '.join(LABELS)}")
    return torch.tensor([[label in LABELS[f] for label in labels] for f in families])


def masked_logits(model: nn.Module, input_ids: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
    """The head's logits in float32, -inf outside each row's family."""
    device = next(model.parameters()).device
    logits = model(input_ids.to(device), lengths.to(device)).float()
    return logits.masked_fill(~mask.to(device), float("-inf"))


def by_length(rows: Sequence[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of `rows` in batches of similar length (sorted), so little of a batch is padding."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for lo in range(0, len(order), batch_size):
        yield order[lo : lo + batch_size]


@torch.no_grad()
def predict(model: nn.Module, pad_id: int, rows: Sequence[list[int]], mask: Tensor, batch_size: int,
            autocast: AbstractContextManager | None = None) -> Tensor:
    """Masked logits (N, labels) of encoded rows, in their order: batched by length."""
    out = torch.empty(len(rows), mask.shape[1])
    was_training = model.training
    model.eval()
    for batch in by_length(rows, batch_size):
        input_ids, lengths = pad_right([rows[i] for i in batch], pad_id)
        with autocast or nullcontext():
            out[batch] = masked_logits(model, input_ids, lengths, mask[batch]).cpu()
    model.train(was_training)
    return out


def head_snapshot(model: nn.Module, config: ModelConfig) -> Snapshot:
    """A HeadModel's checkpoint (collective under FSDP): the decoder as a plain Transformer, the head in
    its own files (model/heads.py), written in the same atomic rename."""
    params = gather_parameters(model)
    decoder = {k.removeprefix("decoder."): v for k, v in params.items() if k.startswith("decoder.")}
    head = distributed.unwrap(model).head
    return Snapshot(plain_model(model, config, decoder), write_extra=head_writer(head, params["score.weight"]))


@dataclass
class Batch:
    input_ids: Tensor  # (B, T) right-padded
    lengths: Tensor  # (B,)
    mask: Tensor  # (B, labels) the family's classes
    targets: Tensor  # (B,) label index


# --- training -------------------------------------------------------------------------------------
class RBRMTraining:
    """The classifier from a checkpoint on labelled responses (see loop.Objective and this module's docstring)."""

    name = "rbrm"

    def __init__(self, model: str | Path, data: str | Path, cfg: RBRMConfig, d: distributed.Dist) -> None:
        self.cfg, self.dist, self.base = cfg, d, resolve_model(model)
        self.train_file = labelled_file(data, "train")
        self.train_rows = read_labelled(self.train_file)
        self.data_rows = len(self.train_rows)
        self.train_rows += swapped_responses(self.train_rows, cfg.swapped, cfg.seed)
        heldout = labelled_file(data, "heldout")  # a single file (no data dir): no held-out eval
        self.heldout_rows = read_labelled(heldout) if heldout != self.train_file and heldout.is_file() else []

        torch.manual_seed(cfg.seed)  # the head's initial weights
        decoder, self.tokenizer = load_checkpoint(self.base)
        freeze_image_path(decoder)  # text only
        self.model = HeadModel(decoder, HeadConfig("classifier", RUBRIC_LABELS)).train()
        self.model_config = decoder.config
        self.max_len = min(cfg.max_len or decoder.config.max_seq_len, decoder.config.max_seq_len)

        self.train, self.truncated = self._encode(self.train_rows)
        # A seeded sample, not every k-th row: the file cycles through each prompt's classes in order.
        n = min(cfg.eval_rows, len(self.heldout_rows))
        sample = [self.heldout_rows[i] for i in sorted(random.Random(cfg.seed).sample(range(len(self.heldout_rows)), n))]
        self.heldout, _ = self._encode(sample)
        self.heldout_families = [r["family"] for r in sample]
        self.n_micro = micro_batches(cfg, d)
        self.rows_per_micro = cfg.batch_size // d.world_size // self.n_micro
        self.step = 0
        self.epochs = SeededEpochs(len(self.train_rows), cfg.batch_size, cfg.seed)

    def _encode(self, rows: list[dict[str, Any]]) -> tuple[tuple[list[list[int]], Tensor, Tensor], int]:
        """((token ids per row, family masks, target label indices), how many rows were cut to max_len)."""
        full = [encode(self.tokenizer, r["messages"], r["response"], None) for r in rows]
        mask = family_mask(RUBRIC_LABELS, [r["family"] for r in rows])
        targets = torch.tensor([RUBRIC_LABELS.index(r["label"]) for r in rows], dtype=torch.long)
        return ([ids[-self.max_len :] for ids in full], mask, targets), sum(len(ids) > self.max_len for ids in full)

    def batch(self, data: tuple[list[list[int]], Tensor, Tensor], rows: list[int]) -> Batch:
        ids, mask, targets = data
        input_ids, lengths = pad_right([ids[i] for i in rows], self.tokenizer.pad_id)
        return Batch(input_ids, lengths, mask[rows], targets[rows])

    # --- the objective ---------------------------------------------------------------------------
    def describe(self) -> str:
        c, cfg = self.model_config, self.cfg
        counts = Counter(r["family"] for r in self.train_rows)
        return (f"model {self.base.name} ({c.num_params() / 1e6:.2f}M parameters) + a {len(RUBRIC_LABELS)}-class head; "
                f"train: {len(self.train_rows):,} labelled responses ({', '.join(f'{k} {v:,}' for k, v in counts.items())}; "
                f"{self.data_rows:,} from the data, {len(self.train_rows) - self.data_rows:,} swapped), "
                f"{self.truncated} cut to their last {self.max_len} tokens; held-out eval: {len(self.heldout[0]):,} rows; "
                f"{cfg.batch_size} rows/step, {self.steps_for(1.0):,} steps/epoch")

    def steps_for(self, epochs: float) -> int:
        return self.epochs.steps_for(epochs)

    def default_steps(self) -> int:
        return self.steps_for(self.cfg.epochs)

    def next_batches(self) -> list[Batch]:
        rows = self.epochs.rows(self.step, self.dist)
        self.step += 1
        m = self.rows_per_micro
        return [self.batch(self.train, rows[j * m : (j + 1) * m]) for j in range(self.n_micro)]

    def count(self, batch: Batch) -> int:
        return len(batch.targets)

    def tokens(self, batch: Batch) -> int:
        return batch.input_ids.numel()

    def flops(self, batch: Batch) -> float:
        # The classification head reads one position per row: no LM head anywhere.
        return self.model_config.step_flops(batch.input_ids.numel(), batch.input_ids.shape[1], 0)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = masked_logits(model, batch.input_ids, batch.lengths, batch.mask)
        return F.cross_entropy(logits, batch.targets.to(logits.device), reduction="sum")

    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """Held-out loss (the "val" curve) and accuracy per family ("probe": loss.png's right panel)."""
        ids, mask, targets = self.heldout
        if not ids:
            return {}
        logits = predict(model, self.tokenizer.pad_id, ids, mask, self.cfg.eval_batch_size, autocast)
        right = logits.argmax(-1) == targets
        accuracy = {"accuracy": float(right.float().mean())}
        for family in LABELS:
            picked = [i for i, f in enumerate(self.heldout_families) if f == family]
            if picked:
                accuracy[family] = float(right[picked].float().mean())
        return {"val": {"heldout": float(F.cross_entropy(logits, targets))}, "probe": accuracy}

    def format_eval(self, result: dict[str, Any]) -> str:
        if "val" not in result:
            return f"step {result['step']}: no held-out data (a chat data dir's safety-heldout.jsonl)"
        acc = result["probe"]
        families = " ".join(f"{k} {v:.3f}" for k, v in acc.items() if k != "accuracy")
        return (f"step {result['step']}: held-out loss {result['val']['heldout']:.4f}, "
                f"accuracy {acc['accuracy']:.3f} ({families})")

    def snapshot(self, model: nn.Module) -> Snapshot:
        return head_snapshot(model, self.model_config)

    def state_dict(self) -> dict[str, Any]:
        return {"rbrm": {"step": self.step, "base": str(self.base), "data": str(self.train_file),
                         "train_rows": len(self.train_rows), "labels": list(RUBRIC_LABELS)}}


def train_rbrm(model: str | Path, data: str | Path, out: Path, cfg: RBRMConfig, *,
               max_steps: int | None = None, max_minutes: float | None = None) -> Trainer:
    d = distributed.init()
    objective = RBRMTraining(model, data, cfg, d)
    trainer = Trainer(objective, cfg, out, d, None, max_steps=max_steps, max_minutes=max_minutes, fsdp=False)
    trainer.run()
    return trainer


def rbrm_train_from_cli(args) -> None:
    cfg = RBRMConfig()
    apply_overrides(cfg, args.set)
    train_rbrm(args.model, args.data, Path(args.out), cfg, max_steps=args.max_steps, max_minutes=args.max_minutes)


# --- the grader -----------------------------------------------------------------------------------
class ClassifierGrader:
    """graders.Grader backed by a trained classifier (a checkpoint dir of `opengpt4 rbrm train`)."""

    def __init__(self, model: HeadModel, tokenizer: Tokenizer, *, batch_size: int = 64) -> None:
        missing = [label for label in RUBRIC_LABELS if label not in model.head.labels]
        if model.head.kind != "classifier" or missing:
            raise CheckpointError(f"not a rubric classifier: a {model.head.kind} head over {list(model.head.labels)}"
                                  f" (missing {', '.join(missing) or 'nothing'})")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_len = model.decoder.config.max_seq_len

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 64) -> ClassifierGrader:
        model, tokenizer = load_head_checkpoint(path)
        return cls(model, tokenizer, batch_size=batch_size)

    def probabilities(self, cases: Sequence[Case]) -> Tensor:
        """(N, len(labels)) each case's probability of each of the head's labels (0 outside its family)."""
        rows = [encode(self.tokenizer, c.messages, c.response, self.max_len) for c in cases]
        mask = family_mask(self.model.head.labels, [c.family for c in cases])
        return predict(self.model, self.tokenizer.pad_id, rows, mask, self.batch_size).softmax(-1)

    def grade(self, messages: list[dict[str, Any]], response: str, family: str, category: str) -> Grade:
        return self.grade_many([Case(messages, response, family, category)])[0]

    def grade_many(self, cases: Sequence[Case]) -> list[Grade]:
        if not cases:
            return []
        labels = [self.model.head.labels[i] for i in self.probabilities(cases).argmax(-1).tolist()]
        return [Grade(label, REWARDS[label]) for label in labels]


# --- agreement with the oracle, reported -----------------------------------------------------------
def agreement_report(grader: Grader, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy and Cohen's kappa of `grader` against the rows' labels, overall and per family, with
    counts and each family's confusion matrix (truth -> predicted -> count)."""
    start = time.perf_counter()
    grades = grader.grade_many([Case(r["messages"], r["response"], r["family"], r["category"]) for r in rows])
    seconds = time.perf_counter() - start
    predicted = [g.label for g in grades]

    def summary(picked: list[int]) -> dict[str, Any]:
        truth, pred = [rows[i]["label"] for i in picked], [predicted[i] for i in picked]
        confusion: dict[str, Counter] = defaultdict(Counter)
        for t, p in zip(truth, pred, strict=True):
            confusion[t][p] += 1
        correct = sum(t == p for t, p in zip(truth, pred, strict=True))
        return {"n": len(picked), "correct": correct, "accuracy": correct / len(picked),
                "kappa": cohen_kappa(truth, pred), "confusion": {t: dict(c) for t, c in sorted(confusion.items())}}

    report = {"all": summary(list(range(len(rows))))}
    for family in LABELS:
        picked = [i for i, r in enumerate(rows) if r["family"] == family]
        if picked:
            report[family] = summary(picked)
    return {"n": len(rows), "seconds": seconds, "per_second": len(rows) / seconds if seconds else None,
            "families": report}


def make_grader(spec: str) -> Grader:
    """oracle | model:NAME_OR_URL (zero-shot rubric; an endpoint as http://HOST:PORT/v1#MODEL) | classifier:DIR."""
    kind, _, target = spec.partition(":")
    if kind == "oracle" and not target:
        return OracleGrader()
    if kind == "model" and target:
        from opengpt4.evals.completion import make_completion_fn

        return ModelGradedRubric(make_completion_fn(target))
    if kind == "classifier" and target:
        return ClassifierGrader.load(target)
    raise ConfigError(f"--grader {spec!r}: expected oracle, model:NAME_OR_URL or classifier:DIR")


def rbrm_agreement_from_cli(args) -> None:
    grader = make_grader(args.grader)
    rows = read_labelled(args.data, args.split)
    total = len(rows)
    if args.limit and args.limit < total:  # a seeded subset, in file order
        rows = [rows[i] for i in sorted(random.Random(args.seed).sample(range(total), args.limit))]
    result = agreement_report(grader, rows)
    source = labelled_file(args.data, args.split)
    print(f"grader {args.grader} vs the oracle's labels on {source}: {len(rows):,} of {total:,} labelled responses"
          f"{f' (seed {args.seed})' if len(rows) < total else ''}, graded in {result['seconds']:.1f} s "
          f"({result['per_second']:.1f}/s)")
    print(f"{'family':<12}{'n':>7}{'accuracy':>10}{'kappa':>8}")
    for family, s in result["families"].items():
        print(f"{family:<12}{s['n']:>7,}{s['accuracy']:>10.3f}{s['kappa']:>8.3f}")
    if args.out:
        report = {"grader": args.grader, "data": str(source), "split": args.split, "total": total,
                  "limit": args.limit, "seed": args.seed, **result}
        write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
