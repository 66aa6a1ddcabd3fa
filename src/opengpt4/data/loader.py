"""Packed, sharded, resumable batches from a data dir written by `opengpt4 data build`.

The global batch of step s is a pure function of (seed, s): one generator seeded with
[seed, s] picks every row's domain by weight, and row i's content comes from its own
generator seeded with [seed, s, i]. Hence
  - resuming needs only the step number (the state dict), and continues at exactly the
    next batch;
  - rank r of W takes rows [r*B/W, (r+1)*B/W) and splits them into micro-batches in order,
    so any (world_size, micro_batches) with the same global batch sees the same rows, and
    each rank reads only its own rows' tokens.

Text rows start at a random token, moved back to its document's BOS when the document fits
in a row, and run on across the following documents, as in GPT-style pretraining. Image rows pack whole image documents, expanding each
document's single <|image|> id into the model's tokens_per_image placeholders, and pad
the rest; no loss is taken on placeholders or padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from opengpt4.config import FORMAT_VERSION, VisionConfig
from opengpt4.errors import ConfigError, OpenGPT4Error
from opengpt4.files import read_versioned_json
from opengpt4.model.transformer import IGNORE_INDEX
from opengpt4.model.vision import preprocess
from opengpt4.tokenizer import Tokenizer

IMAGES = "images"  # the weights key of the image domain


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, T) long
    targets: torch.Tensor  # (b, T) long; IGNORE_INDEX where no loss (image placeholders, padding)
    images: torch.Tensor | None  # (N, 3, S, S) preprocessed, in row-major placeholder order
    domains: list[str]  # each row's domain


@dataclass
class _Row:
    input_ids: np.ndarray
    targets: np.ndarray
    pixels: list[np.ndarray]
    domain: str


class _Shard:
    """A memory-mapped token shard, its document starts, and (image shards) its pixels."""

    def __init__(self, data_dir: Path, file: str, tokens: int, dtype: np.dtype, bos: int) -> None:
        path = data_dir / file
        if not path.is_file() or path.stat().st_size != tokens * dtype.itemsize:
            raise OpenGPT4Error(
                f"{path}: missing or not {tokens} {dtype.name} tokens as index.json says; rebuild the data dir"
            )
        self.ids = np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))
        self.starts = np.flatnonzero(self.ids == bos)  # every document begins with BOS
        self.pixels: np.ndarray | None = None

    def document(self, i: int) -> np.ndarray:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.ids)
        return self.ids[self.starts[i] : end]


def read_index(data_dir: str | Path) -> dict:
    """index.json of a data dir, checked for presence, JSON syntax and format version."""
    file = Path(data_dir) / "index.json"
    return read_versioned_json(file, FORMAT_VERSION, f"is {data_dir} a data dir from `opengpt4 data build`?")


class DataLoader:
    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        *,
        seq_len: int,
        batch_size: int,
        weights: dict[str, float],
        vision: VisionConfig | None,
        image_token_id: int | None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        micro_batches: int = 1,
    ) -> None:
        self.data_dir, self.index = Path(data_dir), read_index(data_dir)
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.vision, self.image_token_id = vision, image_token_id
        self.weights = dict(weights)
        self.step = 0
        self.tokens_per_step = batch_size * seq_len
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        if seq_len < 1 or seed < 0 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need seq_len >= 1, seed >= 0 and 0 <= rank < world_size; got {seq_len}, {seed}, {rank}, {world_size}"
            )
        if batch_size < 1 or batch_size % (world_size * micro_batches):
            raise ConfigError(
                f"batch_size {batch_size} must be a positive multiple of world_size x micro_batches "
                f"= {world_size} x {micro_batches} = {world_size * micro_batches}"
            )
        tok = Tokenizer.from_dir(self.data_dir, self.index["tokenizer"])
        self.bos, self.pad = tok.bos_id, tok.pad_id
        self._data_image_id = tok.image_id
        self._shards: dict[tuple[str, str], _Shard] = {}
        self._check_weights()
        self._domains = sorted(d for d, w in self.weights.items() if w > 0)
        total = sum(self.weights[d] for d in self._domains)
        self._probs = np.array([self.weights[d] / total for d in self._domains])
        for domain in self._domains:
            self._shard(split, domain)  # fail now on a missing or empty shard, not mid-run

    def _check_weights(self) -> None:
        available = [*self.index["domains"], IMAGES]
        unknown = sorted(set(self.weights) - set(available))
        if unknown:
            raise ConfigError(
                f"domains {', '.join(unknown)} are not in {self.data_dir} (it has {', '.join(available)})"
            )
        if any(w < 0 for w in self.weights.values()) or not any(w > 0 for w in self.weights.values()):
            raise ConfigError(f"domain weights must be >= 0 with at least one > 0, got {self.weights}")
        if self.weights.get(IMAGES, 0) > 0:
            self._check_vision()

    def _check_vision(self) -> None:
        if self.vision is None or self.image_token_id is None:
            raise ConfigError("the images domain needs a model with vision (vision config and image_token_id)")
        if self.image_token_id != self._data_image_id:
            raise ConfigError(
                f"the model's image token id {self.image_token_id} is not the data's ({self._data_image_id}): "
                f"{self.data_dir} was built with another tokenizer"
            )
        if self.seq_len < self.vision.tokens_per_image + 2:
            raise ConfigError(f"seq_len {self.seq_len} cannot hold one image ({self.vision.tokens_per_image} tokens)")

    def _shard(self, split: str, domain: str) -> _Shard:
        key = (split, domain)
        if key not in self._shards:
            if domain == IMAGES:
                entry = self.index["images"][split]
                file = entry["tokens_file"]
            else:
                entry = self.index["domains"][domain][split]
                file = entry["file"]
            if entry["tokens"] == 0:
                raise OpenGPT4Error(f"{self.data_dir}: domain {domain} has no {split} documents")
            shard = _Shard(self.data_dir, file, entry["tokens"], np.dtype(self.index["dtype"]), self.bos)
            if domain == IMAGES:
                s = self.index["image_size"]
                shape = (entry["count"], s, s, 3)
                shard.pixels = np.memmap(self.data_dir / entry["pixels_file"], np.uint8, "r", shape=shape)
            self._shards[key] = shard
        return self._shards[key]

    # --- rows ------------------------------------------------------------------------------
    def _text_row(self, shard: _Shard, start: int, domain: str) -> _Row:
        # T+1 tokens from `start`, across the following documents, wrapping at the end.
        pos = (start + np.arange(self.seq_len + 1)) % len(shard.ids)
        seq = shard.ids[pos].astype(np.int64)
        return _Row(seq[:-1], seq[1:], [], domain)

    def _image_row(self, shard: _Shard, doc: int) -> _Row:
        k, capacity = self.vision.tokens_per_image, self.seq_len + 1
        parts, pixels, used = [], [], 0
        while used < capacity:
            ids = shard.document(doc)
            expanded = np.concatenate([ids[:1], np.full(k, self.image_token_id), ids[2:]]).astype(np.int64)
            if parts and used + len(expanded) > capacity:
                break  # only whole documents, except a first one longer than the row (truncated)
            parts.append(expanded)
            pixels.append(shard.pixels[doc])
            used += len(expanded)
            doc = (doc + 1) % len(shard.starts)
        seq = np.full(capacity, self.pad, dtype=np.int64)
        real = np.concatenate(parts)[:capacity]
        seq[: len(real)] = real
        targets = seq[1:].copy()
        targets[len(real) - 1 :] = IGNORE_INDEX  # padding
        targets[targets == self.image_token_id] = IGNORE_INDEX  # placeholders are inputs, never predicted
        return _Row(seq[:-1], targets, pixels, IMAGES)

    def _row(self, split: str, domain: str, where: float) -> _Row:
        """The row at fraction `where` in [0, 1) of the domain's shard.

        Image rows start at document floor(where * documents). Text rows start at token
        floor(where * tokens), moved back to its document's BOS when that document fits in a
        row: short documents are seen whole, and long ones (source files of thousands of
        tokens) are covered everywhere, not only in their first seq_len tokens."""
        shard = self._shard(split, domain)
        if domain == IMAGES:
            return self._image_row(shard, int(where * len(shard.starts)))
        pos = int(where * len(shard.ids))
        doc = int(np.searchsorted(shard.starts, pos, side="right")) - 1
        if len(shard.document(doc)) <= self.seq_len + 1:
            pos = int(shard.starts[doc])
        return self._text_row(shard, pos, domain)

    def _collate(self, rows: list[_Row]) -> Batch:
        pixels = [p for row in rows for p in row.pixels]
        return Batch(
            input_ids=torch.from_numpy(np.stack([r.input_ids for r in rows])),
            targets=torch.from_numpy(np.stack([r.targets for r in rows])),
            images=preprocess(pixels, self.vision) if pixels else None,
            domains=[r.domain for r in rows],
        )

    # --- public ----------------------------------------------------------------------------
    def next(self) -> list[Batch]:
        """This rank's micro-batches for the next optimizer step."""
        b = self.batch_size
        choice = np.random.default_rng([self.seed, self.step]).choice(len(self._domains), size=b, p=self._probs)
        lo, hi = self.rank * b // self.world_size, (self.rank + 1) * b // self.world_size
        rows = []
        for i in range(lo, hi):
            where = np.random.default_rng([self.seed, self.step, i]).random()
            rows.append(self._row(self.split, self._domains[choice[i]], where))
        self.step += 1
        m = (hi - lo) // self.micro_batches
        return [self._collate(rows[j * m : (j + 1) * m]) for j in range(self.micro_batches)]

    def sample_rows(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, targets), each (n, seq_len): n rows of this loader's split drawn by the
        domain weights from a generator seeded with `seed` (SFT's replay rows). Text domains only."""
        if IMAGES in self._domains:
            raise ConfigError("sample_rows draws text rows only: give the images domain weight 0")
        rng = np.random.default_rng(seed)
        domains, wheres = rng.choice(len(self._domains), size=n, p=self._probs), rng.random(n)
        rows = [self._row(self.split, self._domains[d], w) for d, w in zip(domains, wheres, strict=True)]
        empty = np.zeros((0, self.seq_len), np.int64)
        return (np.stack([r.input_ids for r in rows]) if rows else empty,
                np.stack([r.targets for r in rows]) if rows else empty)

    def eval_batches(self, domain: str, n_batches: int, batch_size: int) -> list[Batch]:
        """Fixed val batches of one domain: rows start at evenly spaced documents of its val shard,
        so the set is the same for every seed, step and run (comparable val losses)."""
        if domain not in self.index["domains"] and domain != IMAGES:
            available = ", ".join([*self.index["domains"], IMAGES])
            raise ConfigError(f"domain {domain} is not in {self.data_dir} (it has {available})")
        if domain == IMAGES:
            self._check_vision()
        total = n_batches * batch_size
        rows = [self._row("val", domain, i / total) for i in range(total)]
        return [self._collate(rows[j * batch_size : (j + 1) * batch_size]) for j in range(n_batches)]

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "split": self.split, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        # Everything that decides the batches must match, or "resume" would silently train on other data.
        for key in ("seed", "split", "seq_len", "batch_size", "weights"):
            if state.get(key) != getattr(self, key):
                mine = getattr(self, key)
                raise ConfigError(f"loader state has {key}={state.get(key)!r} but this loader has {mine!r}")
        self.step = int(state["step"])
