"""A vision alignment run as a small delta on its text-only LM, and back.

    opengpt4 vision export --model runs/vision/stage2 --out vision.safetensors
    opengpt4 vision import --delta vision.safetensors --lm smollm2-135m-instruct --out DIR

Stage 2's checkpoint holds the whole LM (540 MB in float32 for SmolLM2-135M); what alignment
changed is much smaller: the ViT, the projector, the image reader if it has one, and the LoRA
adapters (~7M parameters, 15 MB in float16; the reader ~10M more), so that is what to share. Import rebuilds the model: the LM, <|image|> added as stage 1
adds it (`attach_vision`), the adapters kept apart: the engine runs them only for sequences that
hold an image, so a text-only chat is SmolLM2's own (loaded for fine-tuning, they are folded in).

One delta ships inside the package (vision/weights/): the README's alignment run on SmolLM2-135M-
Instruct. `ensure_vision_model` builds it into $OPENGPT4_HOME/models/smollm2-135m-vision on first
use (and again when the shipped file changes), so `make run`, the registry and `--model` reach a
model that sees without anyone training one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from opengpt4.config import VisionConfig
from opengpt4.errors import CheckpointError
from opengpt4.files import opengpt4_home
from opengpt4.model.checkpoint import (
    CONFIG_FILE,
    IMAGE_ADAPTERS_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    read_config,
    read_safetensors,
    save_checkpoint,
)
from opengpt4.train.finetune import ADAPTER_FILE
from opengpt4.train.loop import read_state
from opengpt4.vision.align import attach_vision

FORMAT = "opengpt4-vision-delta/1"
TOWERS = ("vision.", "projector.", "reader.")  # the reader only where the run has one (`vision read`)
VISION_MODEL_NAME = "smollm2-135m-vision"
SHIPPED_DELTA = Path(__file__).parent / "weights" / f"{VISION_MODEL_NAME}.safetensors"


def write_delta(stage2: str | Path, out: str | Path) -> Path:
    """The ViT, projector and LoRA adapters of a stage-2 run (trained with --lora > 0), in float16,
    with what rebuilding needs in the metadata. Written to a temp file, then renamed."""
    stage2, out = Path(stage2), Path(out)
    if not (stage2 / ADAPTER_FILE).is_file():
        raise CheckpointError(f"{stage2}: no {ADAPTER_FILE}: export needs a stage-2 run with LoRA (--lora > 0)")
    vision = read_config(stage2)["model"]["vision"]
    train = read_state(stage2)["train_config"]
    tensors = {k: v for k, v in read_safetensors(stage2 / WEIGHTS_FILE).items() if k.startswith(TOWERS)}
    tensors |= read_safetensors(stage2 / ADAPTER_FILE)
    metadata = {"format": FORMAT, "vision": json.dumps(vision), "lora_rank": str(train["lora_rank"]),
                "lora_alpha": str(train["lora_alpha"]), "source": stage2.resolve().name}
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_delta(file: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not an opengpt4 vision delta (format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    return metadata, tensors


def build_from_delta(lm_dir: Path, delta: Path, out: Path) -> Path:
    """`lm_dir` + the delta -> a checkpoint with a vision config at `out` (atomically): the LM's own
    weights, the towers, and the adapters apart (IMAGE_ADAPTERS_FILE), so that the engine runs them
    only for sequences with an image (lora.route_to_images) and text-only chats get the LM itself;
    loaded for fine-tuning, the adapters are folded in."""
    metadata, tensors = read_delta(delta)
    towers = {k: v.float() for k, v in tensors.items() if k.startswith(TOWERS)}
    adapters = {k: v.float().contiguous() for k, v in tensors.items() if k.endswith((".lora_A", ".lora_B"))}
    vision_cfg = VisionConfig(**json.loads(metadata["vision"]))
    model, tokenizer = attach_vision(lm_dir, None, towers=(vision_cfg, towers))
    extra = {"vision_delta": {"file": delta.name, "sha256": _sha256(delta)},
             "image_adapters": {"rank": int(metadata["lora_rank"]), "alpha": float(metadata["lora_alpha"])}}

    def write_adapters(tmp: Path) -> None:
        save_file(adapters, str(tmp / IMAGE_ADAPTERS_FILE), metadata={"format": "pt"})
        load_checkpoint(tmp, route_image_adapters=True)  # names and shapes checked before the rename

    return save_checkpoint(out, model, tokenizer, extra=extra, write_extra=write_adapters)


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def ensure_vision_model(home: str | Path | None = None) -> Path:
    """The shipped vision model's checkpoint dir under `home`/models (default $OPENGPT4_HOME): built
    from SmolLM2 (imported first if need be) and the shipped delta when it is missing or was built
    from another delta (a newer package's)."""
    from opengpt4.model.convert import ensure_smollm2

    target = Path(home or opengpt4_home()) / "models" / VISION_MODEL_NAME
    if (target / CONFIG_FILE).is_file():
        built = read_config(target)
        # Builds before the adapters were kept apart have them merged into the LM: rebuilt too.
        if built.get("vision_delta", {}).get("sha256") == _sha256(SHIPPED_DELTA) and "image_adapters" in built:
            return target
    print(f"building {VISION_MODEL_NAME} into {target} from SmolLM2 and {SHIPPED_DELTA.name} (once)", file=sys.stderr)
    return build_from_delta(ensure_smollm2(home), SHIPPED_DELTA, target)
