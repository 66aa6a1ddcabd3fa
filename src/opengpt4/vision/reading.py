"""Training the image reader (model/reader.py) of a vision checkpoint.

    opengpt4 vision read --model DIR --data DIR --out DIR [--steps N] [--minutes M] [--set name=value]

The reader learns, on the visual data dir's training images (stage1.json's "reading" of each), to
fill its slots from the pixels; the rest of the model is frozen and copied as it is. The result is
the checkpoint with a reader: Engine writes each image's reading after its tokens, and a stage 2
run from it trains on those readings (vision/align.py). A model whose image adapters are kept apart
(smollm2-135m-vision, any rebuilt delta) keeps them so, and stage 2 goes on training them. It is an objective of the one training
loop like the alignment stages: checkpoints, resume, the loss curve, evals of held-out images.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from opengpt4.config import LoopConfig, ReaderConfig
from opengpt4.errors import ConfigError, DataFileError
from opengpt4.files import read_text
from opengpt4.model.checkpoint import (
    CONFIG_FILE,
    IMAGE_ADAPTERS_FILE,
    build_model,
    load_checkpoint,
    read_image_adapters,
    resolve_model,
    weights_state_dict,
)
from opengpt4.model.reader import ImageReader
from opengpt4.model.transformer import IGNORE_INDEX
from opengpt4.model.vision import load_resized, preprocess
from opengpt4.train import distributed
from opengpt4.train.loop import SeededEpochs, Snapshot, Trainer, micro_batches, plain_model, read_state
from opengpt4.vision.data import TASKS


@dataclass
class ReadConfig(LoopConfig):
    """The reader's run (`--set name=value`)."""

    batch_size: int = 128  # images per step
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    eval_every: int = 250
    eval_at_start: bool = True
    ckpt_every: int = 500
    hidden: int = 1024  # ReaderConfig's, for a fresh reader
    channels: str = "16,32,64,128"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden <= 0:
            raise ConfigError(f"hidden must be positive, got {self.hidden}")


@dataclass
class ReadBatch:
    pixels: torch.Tensor  # (n, 3, S, S), normalised
    targets: torch.Tensor  # (n, slots): word ids


def training_readings(data_dir: Path) -> list[tuple[str, list[str]]]:
    """(absolute image path, reading) of every training image of the data dir's stage1.json, and of
    reading.json's further images when it has them."""
    file = data_dir / "stage1.json"
    entries = json.loads(read_text(file))
    if (data_dir / "reading.json").is_file():
        entries += json.loads(read_text(data_dir / "reading.json"))
    out = [(str(data_dir / e["image"]), e["reading"]) for e in entries if isinstance(e.get("reading"), list)]
    if not out:
        raise DataFileError(f"{file}: no entry has a \"reading\" (a data dir from before the reader: build it "
                            "again with `opengpt4 vision data`)")
    return out


def heldout_readings(data_dir: Path) -> list[tuple[str, str, list[str]]]:
    """(image path, kind, reading) of each held-out eval image, once."""
    from opengpt4.vision.data import read_eval

    seen: dict[str, tuple[str, str, list[str]]] = {}
    for task in TASKS:
        for r in read_eval(data_dir, task):
            if isinstance(r.get("reading"), list):
                seen.setdefault(r["image"], (r["image"], r["kind"], r["reading"]))
    return list(seen.values())


def with_reader(model: nn.Module, reader: ReaderConfig) -> nn.Module:
    """`model` (a vision checkpoint's) with a fresh reader of `reader`'s config."""
    vision = dataclasses.replace(model.config.vision, reader=reader)
    config = dataclasses.replace(model.config, vision=vision)
    fresh = ImageReader(reader, vision.image_size)
    state = weights_state_dict(model)
    state = {k: v for k, v in state.items() if not k.startswith("reader.")}
    state |= {f"reader.{k}": v for k, v in fresh.state_dict().items()}
    return build_model(config, state, "with_reader", torch.float32)


class ReaderTraining:
    """The reader's objective (loop.Objective): cross-entropy of every slot's word."""

    name = "read"

    def __init__(self, model: str, data_dir: Path, out: Path, cfg: ReadConfig, d: distributed.Dist,
                 state: dict | None) -> None:
        if d.world_size > 1:  # its loss calls the reader itself, past DDP's wrapper: one process
            raise ConfigError("the image reader trains in one process (it takes minutes on 2 cores), not under torchrun")
        self.cfg, self.dist = cfg, d
        resumed = state["vision_read"] if state is not None else None
        torch.manual_seed(cfg.seed)
        self.base = resolve_model(model)
        train = training_readings(data_dir)
        self.heldout = heldout_readings(data_dir)
        # Image adapters kept apart (a rebuilt delta's) stay apart, as they were: stage 2 goes on training them.
        source = out if resumed else self.base
        loaded, self.tokenizer = load_checkpoint(source, image_adapters_apart=True)
        self.image_adapters = read_image_adapters(source)
        if loaded.config.vision is None:
            raise ConfigError(f"{self.base} has no vision tower: the reader reads for a vision model")
        if resumed:
            self.model = loaded
        else:
            words = sorted({w for _, reading in train for w in reading} | {""})
            slots = max(len(reading) for _, reading in train)
            channels = tuple(int(c) for c in self.cfg.channels.split(","))
            self.model = with_reader(loaded, ReaderConfig(tuple(words), slots, channels, cfg.hidden))
        self.model.requires_grad_(False)
        self.model.reader.requires_grad_(True)
        self.model.train()
        self.model_config = self.model.config
        reader = self.reader_config = self.model_config.vision.reader
        index = {w: i for i, w in enumerate(reader.words)}
        self.train_targets = self._targets([r for _, r in train], index)
        self.heldout_targets = self._targets([r for *_, r in self.heldout], index)
        size = self.model_config.vision.image_size
        self.train_pixels = load_resized([p for p, _ in train], size)
        self.heldout_pixels = load_resized([p for p, *_ in self.heldout], size)
        self.n_micro = micro_batches(cfg, d)
        self.per_micro = cfg.batch_size // d.world_size // self.n_micro
        self.step = resumed["step"] if resumed is not None else 0
        self.epochs = SeededEpochs(len(train), cfg.batch_size, cfg.seed)
        with FlopCounterMode(display=False) as counter:
            self.model.reader(torch.zeros(1, 3, size, size))
        self.image_flops = 3 * counter.get_total_flops()  # forward + backward

    def _targets(self, readings: list[list[str]], index: dict[str, int]) -> torch.Tensor:
        """Word ids, (n, slots): a reading shorter than the slots is padded with the empty word; a word
        the reader has no id for (a held-out one) is left out of the loss."""
        slots = self.reader_config.slots
        if any(len(r) > slots for r in readings):
            raise DataFileError(f"a reading is longer than the reader's {slots} slots")
        return torch.tensor([[index.get(w, IGNORE_INDEX) for w in r] + [index[""]] * (slots - len(r)) for r in readings])

    def describe(self) -> str:
        r = self.reader_config
        trained = sum(p.numel() for p in self.model.reader.parameters())
        return (f"image reader for {self.base.name}: {trained / 1e6:.2f}M parameters, {r.slots} slots of "
                f"{len(r.words)} words; {len(self.train_pixels):,} training images, "
                f"{len(self.heldout_pixels):,} held-out; {self.cfg.batch_size} images/step, "
                f"{self.steps_for(1.0):,} steps/epoch")

    def steps_for(self, epochs: float) -> int:
        return self.epochs.steps_for(epochs)

    def default_steps(self) -> int:
        return self.steps_for(20.0)

    def _batch(self, pixels: np.ndarray, targets: torch.Tensor, rows: list[int]) -> ReadBatch:
        return ReadBatch(preprocess(list(pixels[rows]), self.model_config.vision), targets[rows])

    def next_batches(self) -> list[ReadBatch]:
        rows = self.epochs.rows(self.step, self.dist)
        self.step += 1
        m = self.per_micro
        return [self._batch(self.train_pixels, self.train_targets, rows[j * m:(j + 1) * m])
                for j in range(self.n_micro)]

    def count(self, batch: ReadBatch) -> int:
        return int((batch.targets != IGNORE_INDEX).sum())

    def tokens(self, batch: ReadBatch) -> int:
        return len(batch.pixels)

    def flops(self, batch: ReadBatch) -> float:
        return self.image_flops * len(batch.pixels)

    def loss(self, model: nn.Module, batch: ReadBatch) -> torch.Tensor:
        reader = distributed.unwrap(model).reader
        logits = reader(batch.pixels.to(next(reader.parameters()).device))
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten().to(logits.device),
                               reduction="sum", ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """Held-out loss, and the share of held-out images read exactly right, by kind."""
        reader = distributed.unwrap(model).reader
        reader.eval()
        total, count, right = 0.0, 0, defaultdict(list)
        for lo in range(0, len(self.heldout_pixels), 256):
            rows = list(range(lo, min(lo + 256, len(self.heldout_pixels))))
            batch = self._batch(self.heldout_pixels, self.heldout_targets, rows)
            with autocast:
                logits = reader(batch.pixels)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="sum",
                                           ignore_index=IGNORE_INDEX))
            count += self.count(batch)
            exact = (logits.argmax(-1) == batch.targets).all(-1).tolist()
            for i, ok in zip(rows, exact, strict=True):
                right[self.heldout[i][1]].append(ok)
        reader.train()
        return {"val": {"heldout": total / max(count, 1)},
                "exact": {kind: float(np.mean(v)) for kind, v in sorted(right.items())}}

    def format_eval(self, result: dict[str, Any]) -> str:
        exact = " ".join(f"{kind} {v:.3f}" for kind, v in result.get("exact", {}).items())
        return f"step {result['step']}: held-out loss {result['val']['heldout']:.4f} | read exactly: {exact}"

    def snapshot(self, model: nn.Module) -> Snapshot:
        if self.image_adapters is None:
            return Snapshot(plain_model(model, self.model_config))
        rank, alpha, tensors = self.image_adapters

        def name_them(tmp: Path) -> None:  # config.json says the adapters are there, as bundle.build_from_delta does
            config = json.loads((tmp / CONFIG_FILE).read_text())
            (tmp / CONFIG_FILE).write_text(json.dumps({**config, "image_adapters": {"rank": rank, "alpha": alpha}},
                                                      indent=2) + "\n")

        return Snapshot(plain_model(model, self.model_config), {IMAGE_ADAPTERS_FILE: tensors}, name_them)

    def state_dict(self) -> dict[str, Any]:
        return {"vision_read": {"step": self.step, "base": str(self.base)}}


def build_reader_trainer(model: str, data_dir: Path, out: Path, cfg: ReadConfig, *, max_steps: int | None = None,
                         max_minutes: float | None = None, resume: bool = False) -> Trainer:
    d = distributed.init()
    state = read_state(out) if resume else None
    if state is not None:
        cfg = ReadConfig(**state["train_config"])
    return Trainer(ReaderTraining(model, data_dir, out, cfg, d, state), cfg, out, d, state,
                   max_steps=max_steps, max_minutes=max_minutes, fsdp=False)
