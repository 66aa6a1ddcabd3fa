"""What pretraining measures as it goes: validation loss per domain, and two greedy probes.

The probes ask held-out questions and score exact match of the first line the model writes:
world facts (by kind: facts seen in documents but never asked, facts asked only with other
question templates, and facts of entities never seen — the chance-level control), the same
seen facts in each of the five languages (`lang_<code>`), each beside its subject-blind
baseline (`_blind`: always the attribute's most common value), and questions about held-out
images, against the majority-class baselines.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from opengpt4.data.world import first_line
from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
from opengpt4.files import read_jsonl
from opengpt4.model.vision import preprocess
from opengpt4.tokenizer import Tokenizer
from opengpt4.train.loop import next_token_loss, target_count

ANSWER_PARAMS = SamplingParams(max_tokens=12, temperature=0.0, stop=["\n"])


@torch.no_grad()
def val_losses(model: nn.Module, batches: dict[str, list], autocast: AbstractContextManager) -> dict[str, float]:
    """Mean next-token loss per domain over fixed validation batches."""
    was_training = model.training
    model.eval()
    out = {}
    for domain, domain_batches in batches.items():
        total, count = 0.0, 0
        for b in domain_batches:
            with autocast:  # the training loss itself, so it moves the batch to the model's device too
                total += float(next_token_loss(model, b))
            count += target_count(b)
        out[domain] = total / max(count, 1)
    model.train(was_training)
    return out


def _exact(text: str, ideal: str) -> bool:
    return first_line(text) == str(ideal).strip()


def world_probe(model: nn.Module, tokenizer: Tokenizer, samples: list[dict], group: str) -> dict[str, float]:
    """Exact-match accuracy per `group` ("kind" or "lang"), and as `<group>_blind` the accuracy of
    each question's subject-blind guess (its attribute's most common value) where the data has it."""
    engine = Engine(model, tokenizer, pack=False)
    prompts = [Prompt([tokenizer.bos_id] + tokenizer.encode(s["prompt"])) for s in samples]
    replies = [c[0].text for c in engine.generate(prompts, ANSWER_PARAMS)]
    hits: dict[str, list[bool]] = {}
    for s, reply in zip(samples, replies, strict=True):
        hits.setdefault(s[group], []).append(_exact(reply, s["ideal"]))
        if "blind" in s:
            hits.setdefault(f"{s[group]}_blind", []).append(s["blind"] == s["ideal"])
    return {key: float(np.mean(h)) for key, h in sorted(hits.items())}


def image_probe(model: nn.Module, tokenizer: Tokenizer, samples: list[dict], pixels: np.ndarray) -> dict[str, float]:
    """Accuracy on held-out image questions, next to two baselines: always the most common
    answer overall, and the most common answer of each question's kind (a text-only prior)."""
    vision = model.config.vision
    engine = Engine(model, tokenizer, pack=False)
    placeholders = [tokenizer.image_id] * vision.tokens_per_image
    prompts = [Prompt([tokenizer.bos_id, *placeholders] + tokenizer.encode(s["prompt"]),
                      preprocess([pixels[s["image"]]], vision)) for s in samples]
    replies = [c[0].text for c in engine.generate(prompts, ANSWER_PARAMS)]
    accuracy = float(np.mean([_exact(r, s["ideal"]) for r, s in zip(replies, samples, strict=True)]))
    answers = Counter(str(s["ideal"]) for s in samples)
    by_kind: dict[str, Counter] = {}
    for s in samples:
        by_kind.setdefault(s.get("kind", ""), Counter())[str(s["ideal"])] += 1
    kind_majority = sum(c.most_common(1)[0][1] for c in by_kind.values()) / len(samples)
    return {"accuracy": accuracy, "majority_baseline": answers.most_common(1)[0][1] / len(samples),
            "kind_majority_baseline": kind_majority}


class Probes:
    """The probe questions of a data dir, a fixed deterministic subset of each."""

    def __init__(self, data_dir: Path, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        index = json.loads((data_dir / "index.json").read_text())
        evals = index.get("evals", {})
        self.world: list[dict] = []
        if "world_qa" in evals:
            samples = read_jsonl(data_dir / evals["world_qa"])
            for kind in sorted({s["kind"] for s in samples}):  # `size` per kind, English first
                of_kind = [s for s in samples if s["kind"] == kind]
                of_kind.sort(key=lambda s: s.get("lang", "en") != "en")
                self.world += of_kind[:size]
        # The same facts in every language (data dirs built before it existed have none).
        self.languages: list[dict] = []
        if "world_languages" in evals:
            samples = read_jsonl(data_dir / evals["world_languages"])
            for lang in sorted({s["lang"] for s in samples}):
                self.languages += [s for s in samples if s["lang"] == lang][:size]
        self.images: list[dict] = []
        self.pixels = None
        if "image_qa" in evals and "val" in index.get("images", {}):
            samples = read_jsonl(data_dir / evals["image_qa"])
            order = rng.permutation(len(samples))[: 3 * size]  # one pool for all kinds: more, for a steadier number
            self.images = [samples[i] for i in sorted(order)]
            meta = index["images"]["val"]
            side = index["image_size"]
            self.pixels = np.memmap(data_dir / meta["pixels_file"], dtype=np.uint8, mode="r",
                                    shape=(meta["count"], side, side, 3))

    def run(self, model: nn.Module, tokenizer: Tokenizer) -> dict[str, float]:
        was_training = model.training
        out: dict[str, float] = {}
        if self.world:
            out.update({f"world_{k}": v for k, v in world_probe(model, tokenizer, self.world, "kind").items()})
        if self.languages:
            out.update({f"lang_{k}": v for k, v in world_probe(model, tokenizer, self.languages, "lang").items()})
        if self.images and getattr(model.config, "vision", None) is not None:
            out.update({f"image_{k}": v for k, v in image_probe(model, tokenizer, self.images, self.pixels).items()})
        model.train(was_training)
        return out
