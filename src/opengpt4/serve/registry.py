"""The served-model registry: which checkpoints answer to which model names, at what context and price.

A registry file is YAML:

    models:
      - snapshot: opengpt4-mini-20261129      # the pinned name responses report
        path: smollm2-135m-instruct            # a checkpoint dir or an imported model's name
        aliases: [opengpt4-mini]               # moving names: point them at a newer snapshot later
        context_length: 8192                   # at most the model's own context
        pricing: {prompt: 0.03, completion: 0.06}   # USD per 1k tokens (optional)
        accepts_images: false                  # default: whether the model has a vision tower
        max_batch: 64                          # rows decoding at once (KV memory is paged: taken per token)

Two entries may share a `path` (an 8k and a 2k variant of the same weights): the weights are
loaded once, each entry gets its own scheduler and KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opengpt4.errors import ConfigError

ENTRY_KEYS = {"snapshot", "path", "aliases", "context_length", "pricing", "accepts_images", "max_batch"}


@dataclass(frozen=True)
class ServedModel:
    snapshot: str
    path: str
    aliases: tuple[str, ...] = ()
    context_length: int | None = None  # None: the model's own
    prompt_price: float | None = None  # USD per 1k tokens
    completion_price: float | None = None
    accepts_images: bool | None = None  # None: whether the model has a vision tower
    max_batch: int = 64

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return ((self.prompt_price or 0.0) * prompt_tokens + (self.completion_price or 0.0) * completion_tokens) / 1000


@dataclass
class Registry:
    models: list[ServedModel] = field(default_factory=list)

    def names(self) -> dict[str, ServedModel]:
        """Every name a client may send (snapshots and aliases) -> its entry."""
        out: dict[str, ServedModel] = {}
        for m in self.models:
            for name in (m.snapshot, *m.aliases):
                if name in out:
                    raise ConfigError(f"model name {name!r} is used twice in the registry")
                out[name] = m
        return out


def _entry(i: int, raw: Any, where: str) -> ServedModel:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: models[{i}] must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}: models[{i}] has unknown keys {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    for key in ("snapshot", "path"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}: models[{i}].{key} must be a non-empty string")
    aliases = raw.get("aliases") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    if not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where}: models[{i}].aliases must be a list of names")
    pricing = raw.get("pricing") or {}
    if not isinstance(pricing, dict) or set(pricing) - {"prompt", "completion"}:
        raise ConfigError(f"{where}: models[{i}].pricing must be {{prompt: USD/1k, completion: USD/1k}}")
    context = raw.get("context_length")
    if context is not None and (not isinstance(context, int) or context < 2):
        raise ConfigError(f"{where}: models[{i}].context_length must be an integer >= 2, got {context!r}")
    max_batch = raw.get("max_batch", 64)
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"{where}: models[{i}].max_batch must be a positive integer, got {max_batch!r}")
    try:
        prices = {k: float(v) for k, v in pricing.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: models[{i}].pricing values must be numbers") from None
    return ServedModel(raw["snapshot"], raw["path"], tuple(aliases), context, prices.get("prompt"),
                       prices.get("completion"), raw.get("accepts_images"), max_batch)


def load_registry(path: str | Path) -> Registry:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the model registry {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list) or not raw["models"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'models' list")
    registry = Registry([_entry(i, m, str(path)) for i, m in enumerate(raw["models"])])
    registry.names()  # duplicate names are an error now, not a surprise at request time
    return registry


def registry_from_paths(paths: list[str]) -> Registry:
    """`serve --model M`: each model is its own snapshot, named after its directory."""
    from opengpt4.model.checkpoint import resolve_model

    return Registry([ServedModel(Path(resolve_model(p)).name, p) for p in paths])
