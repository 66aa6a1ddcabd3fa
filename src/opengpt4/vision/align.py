"""Giving a pretrained language model eyes, LLaVA's way (Liu et al., 2023; LLaVA-1.5's recipe).

    opengpt4 vision align --lm smollm2-135m-instruct --out DIR [--vision CKPT] [--data DIR]
                          [--stage 0|1|read|2|all] [--steps0 N] [--steps1 N] [--steps-read N] [--steps2 N] [--lora R]

    DIR/stage0   stage 0: our ViT (with a convolutional stem) learns to caption, with a fresh projector
                 and a small decoder trained from scratch alongside it (CapPa: captioning pretrains
                 vision encoders as well as contrastive learning does); skipped when --vision gives a ViT
    DIR/stage1   stage 1: the projector alone learns to caption (the LM frozen, the ViT frozen)
    DIR/reader   stage 1's model with an image reader trained on the data's readings (vision/reading.py;
                 skipped for a data dir without readings)
    DIR/stage2   stage 2: projector + LM (LoRA, merged when saved, or full) on visual instruction
                 chats with text-only chats mixed in (`--set2 self_replay=N`: N of their questions
                 answered by the LM itself instead): the model, a normal checkpoint with a vision
                 config that Engine, `opengpt4 eval` and the server load; from DIR/reader when there
                 is one, each image's reading written after it in the chats, as Engine writes it

LLaVA freezes a contrastively pretrained encoder (CLIP). No pretrained encoder ships with weights
inside a PyPI package that fits here (torchvision, timm, open_clip and the CLIP packages fetch
theirs from a hub at run time, which is not reachable), so stage 0 pretrains ours on the caption
data. Stage 1 trains the projector from scratch again, on stage 0's frozen ViT. The LM is too
expensive to teach seeing from scratch: 250 SmolLM2 steps on a fresh or weakly pretrained ViT left
held-out digits at chance. `--vision CKPT` takes the tower of another checkpoint instead (the
from-scratch mini model's); without either, stage 1 trains a fresh ViT (`train_vision`).

The LM's tokenizer gets an <|image|> token (a new id, its embedding row the mean of the others:
the placeholders are overwritten by image features, and Engine never samples it). The stages
are objectives of the one loop (train/loop.py) and reuse SFT's packing: whole conversations
best-fit into rows, the assistant-only loss, attention kept within each conversation; each
row also carries its conversations' images, in placeholder order.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tokenizers import AddedToken
from torch import nn

from opengpt4.config import LoopConfig, SFTConfig, VisionConfig, depth_config
from opengpt4.data.chat_io import Conversation, parse_conversation
from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import ConfigError
from opengpt4.evals.benchmarks.visual_qa import score
from opengpt4.files import iter_jsonl, write_jsonl
from opengpt4.model import lora
from opengpt4.model.checkpoint import (
    IMAGE_ADAPTERS_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    build_model,
    load_checkpoint,
    load_model_config,
    load_tokenizer,
    read_image_adapters,
    read_safetensors,
    resolve_model,
    weights_state_dict,
)
from opengpt4.model.multimodal import Projector
from opengpt4.model.precision import autocast_dtype
from opengpt4.model.reader import ImageReader
from opengpt4.model.transformer import Transformer
from opengpt4.model.vision import VisionEncoder, load_resized, preprocess
from opengpt4.tokenizer import Tokenizer, read_backend
from opengpt4.train import distributed
from opengpt4.train.finetune import ADAPTER_FILE
from opengpt4.train.loop import SeededEpochs, Snapshot, Trainer, micro_batches, read_state
from opengpt4.train.sft import SFT, ChatBatch, PackedChats
from opengpt4.vision.data import DIGIT_CAPTION, iter_images, read_eval, read_visual_chats
from opengpt4.vision.templates import CAPTION_REQUESTS, TASKS

IMAGE_TOKEN = "<|image|>"
REPLAY_FILE = "replay.jsonl"  # in stage 2's checkpoints: its text-only chats as the LM answered them (self_replay)
REPLAY_MAX_TOKENS = 160  # longer answers are dropped rather than taught cut off
HELDOUT_CONVERSATIONS = 256  # held-out questions packed for the held-out loss (eval_rows rows of them are used)


@dataclass
class AlignConfig(LoopConfig):
    """One stage's settings (`--set1 name=value`, `--set2 name=value`); `stage_config` gives each stage's defaults."""

    batch_size: int = 16  # packed rows per step
    micro_batch_size: int = 4
    lr: float = 1e-3  # stage 1: LLaVA-1.5's projector rate
    vision_lr_scale: float = 1.0  # the projector (and a trained ViT) at lr x this
    min_lr_ratio: float = 0.0
    # Stages 1 and 2 get ~20 and ~90 steps in their minutes on 2 cores: with 10 of stage 1's 22 steps
    # warming up, its training loss stayed ~0.1 higher at every step than with 3.
    warmup_steps: int = 3
    weight_decay: float = 0.0
    eval_every: int = 50
    eval_at_start: bool = True
    ckpt_every: int = 50
    seq_len: int = 512
    epochs: float = 1.0
    eval_rows: int = 8
    lora_rank: int = 0  # stage 2: 0 trains the whole LM, r > 0 LoRA adapters of rank r
    lora_alpha: float = 32.0
    train_vision: bool = False  # train the ViT too (stage 1: on when there is no pretrained one)
    probe_size: int = 16  # stage 2: held-out questions per eval task answered greedily at each eval; 0: none
    decoder_depth: int = 2  # stage 0: the captioner's decoder, trained from scratch with the ViT (depth_config)
    # Stage 2: this many of the text-only chats' first questions, answered by the LM itself (self-distillation),
    # replace them all; 0: the chats with the data's own answers. The data's are the synthetic world's (invented
    # names, its languages) and taught SmolLM2 their style ("What is the capital of France?" -> "La France est le
    # pays."); 600 replayed questions brought back English ("The" 0.89 as the first word) but their ~6.5 minutes
    # of generation came out of stage 2's 44: 140 steps instead of 191, digits 0.754 instead of 0.838. Off until
    # both fit.
    self_replay: int = 0
    # Stages 0 and 1: s x s neighbouring patches per image token of the fresh projector; 0 keeps the ViT's
    # config (2: 16 tokens for a 64-pixel image); stage 2 keeps stage 1's. 4 gives one token per quarter of
    # the image, the cell a scene puts each shape in; with 2 each shape is split over four tokens, and the
    # scene-only stage 2 of the README's "What led here" counted shapes at 0.26 instead of 0.91.
    pixel_shuffle: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("probe_size", "self_replay", "pixel_shuffle"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("seq_len", "epochs", "eval_rows", "decoder_depth"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def stage_config(stage: int, lora_rank: int = 16, train_vision: bool = False) -> AlignConfig:
    """Stage `stage`'s defaults. `train_vision` is stage 1's: stage 2 starts with the ViT frozen
    (LLaVA's stage 2 tunes projector and LM; `--set2 train_vision=true` overrides)."""
    if stage == 0:  # everything from scratch, at a small model's rate; the ViT and projector at a third of it,
        # as in pretraining (LoopConfig.vision_lr_scale: a ViT from scratch is unstable at 3e-3; this rate was
        # measured together with the conv stem, not apart from it)
        return AlignConfig(lr=3e-3, vision_lr_scale=0.33, train_vision=True, warmup_steps=20)
    if stage == 1:
        return AlignConfig(train_vision=train_vision)
    if lora_rank:  # the projector keeps a tenth of the adapters' rate, as LLaVA-1.5's LoRA run (2e-4, 2e-5).
        # Half stage 1's batch (4,096 tokens), at ~LORA_LR (1e-3) x sqrt(1/2), Adam's square-root rule: ~190 steps in
        # 44 minutes on 2 cores instead of 90. With the same minutes and data, held-out digits went from 0.788
        # to 0.838 and shapes from blind level (0.276 vs 0.289) to 0.366 (vs 0.305). Evals and checkpoints
        # every 100 of these steps cost what every 50 of the larger ones did.
        return AlignConfig(lr=7e-4, vision_lr_scale=0.1, lora_rank=lora_rank, batch_size=8,
                           eval_every=100, ckpt_every=100)
    return AlignConfig(lr=SFTConfig.lr)  # full fine-tuning: SFT's rate, projector included


def read_tower(vision_from: str | Path | None) -> tuple[VisionConfig, dict[str, torch.Tensor]]:
    """The ViT of `vision_from`'s checkpoint (its config and `vision.*` weights), or a fresh one
    (from the torch generator's current state)."""
    if vision_from is None:
        cfg = VisionConfig()
        return cfg, {f"vision.{k}": v for k, v in VisionEncoder(cfg).state_dict().items()}
    vision_dir = resolve_model(vision_from)
    cfg = load_model_config(vision_dir).vision
    if cfg is None:
        raise ConfigError(f"--vision {vision_from}: that checkpoint has no vision tower")
    # The ViT alone: a reader that checkpoint has is not taken (this run's `--stage read` trains its own)
    tower = {k: v for k, v in read_safetensors(vision_dir / WEIGHTS_FILE).items() if k.startswith("vision.")}
    return dataclasses.replace(cfg, reader=None), tower


def _with_image_token(lm_dir: Path, tokenizer: Tokenizer, vision: VisionConfig) -> Tokenizer:
    """`lm_dir`'s tokenizer with an <|image|> token added (a special token: never split, never merged)."""
    backend = read_backend(lm_dir / TOKENIZER_FILE)
    if backend.token_to_id(IMAGE_TOKEN) is None:
        backend.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    return Tokenizer(backend, **{**tokenizer.metadata(), "image_token": IMAGE_TOKEN,
                                 "tokens_per_image": vision.tokens_per_image})


def regrouped(vision: VisionConfig, pixel_shuffle: int) -> VisionConfig:
    """`vision` with its projector grouping `pixel_shuffle` x `pixel_shuffle` patches per token (0: as it is).
    The ViT is the same; only how the projector merges its patches into tokens changes."""
    return dataclasses.replace(vision, pixel_shuffle=pixel_shuffle) if pixel_shuffle else vision


def captioner(lm_dir: Path, depth: int, seed: int, pixel_shuffle: int = 0) -> tuple[Transformer, Tokenizer]:
    """Stage 0's model: a fresh ViT and projector (`pixel_shuffle`: 0, the default grouping) in front of a
    small decoder trained from scratch with them (the one-knob family at `depth`, on `lm_dir`'s tokenizer
    with <|image|>)."""
    lm_config = load_model_config(lm_dir)
    vision = regrouped(VisionConfig(conv_stem=True), pixel_shuffle)
    tokenizer = _with_image_token(lm_dir, load_tokenizer(lm_dir), vision)
    config = dataclasses.replace(depth_config(depth, vocab_size=max(lm_config.vocab_size, tokenizer.vocab_size)),
                                 vision=vision, image_token_id=tokenizer.image_id, name=f"captioner-d{depth}")
    torch.manual_seed(seed)
    model = Transformer(config)
    model.init_weights()
    return model, tokenizer


def attach_vision(lm_dir: Path, vision_from: str | Path | None, seed: int = 0, *, pixel_shuffle: int = 0,
                  towers: tuple[VisionConfig, dict[str, torch.Tensor]] | None = None) -> tuple[Transformer, Tokenizer]:
    """The LM at `lm_dir` with a ViT (from `vision_from`'s checkpoint, or fresh) and a fresh projector
    merging `pixel_shuffle` x `pixel_shuffle` patches per token (0: the ViT config's), and its tokenizer
    with an <|image|> token. `towers`: a vision config and trained `vision.*` / `projector.*` weights to
    use instead (a shipped delta, vision/bundle.py)."""
    config = load_model_config(lm_dir)
    if config.vision is not None:
        raise ConfigError(f"{lm_dir} already has a vision tower: stage 1 starts from a text-only LM")
    lm, tokenizer = load_checkpoint(lm_dir)
    torch.manual_seed(seed)
    vision_cfg, tower = towers if towers is not None else read_tower(vision_from)
    vision_cfg = regrouped(vision_cfg, pixel_shuffle)
    projector = {f"projector.{k}": v for k, v in Projector(vision_cfg, config.n_embd).state_dict().items()}
    tokenizer = _with_image_token(lm_dir, tokenizer, vision_cfg)
    vocab = max(config.vocab_size, tokenizer.vocab_size)
    config = dataclasses.replace(config, vocab_size=vocab, vision=vision_cfg, image_token_id=tokenizer.image_id)
    state = weights_state_dict(lm)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state and len(state[name]) < vocab:  # new rows: the mean, a typical embedding (HF's choice too)
            w = state[name]
            state[name] = torch.cat([w, w.mean(0, keepdim=True).expand(vocab - len(w), -1)])
    # A shipped delta's `towers` carry the trained projector too, so they go last.
    return build_model(config, {**state, **projector, **tower}, str(lm_dir), torch.float32), tokenizer


# --- data ----------------------------------------------------------------------------------


@dataclass
class VisualBatch(ChatBatch):
    images: torch.Tensor | None = None  # (N, 3, S, S): the rows' images, row by row, in placeholder order


class PackedVisualChats(PackedChats):
    """SFT's packed rows, each with the images of its conversations (kept as uint8 pixels at the
    model's image size, normalised per batch by the one `preprocess`)."""

    def __init__(self, conversations: list[Conversation], tokenizer: Tokenizer, seq_len: int, seed: int | None,
                 vision: VisionConfig, reader: ImageReader | None = None) -> None:
        """`reader`: the model's image reader; each image's reading is written after it, as Engine does."""
        self.vision = vision
        images = {c.source: list(iter_images([c])) for c in conversations}
        paths = sorted({p for found in images.values() for p in found})
        index = {p: i for i, p in enumerate(paths)}
        self.pixels = load_resized(paths, vision.image_size)
        readings = [text for lo in range(0, len(paths), 256)
                    for text in reader.read(preprocess(list(self.pixels[lo:lo + 256]), vision))] if reader else []
        super().__init__(conversations, tokenizer, seq_len, seed, tokenizer.pad_id,
                         (lambda source: readings[index[source]]) if reader else None)
        self.row_images = [[index[p] for source in row for p in images[source]] for row in self.sources]

    def batch(self, rows: list[int]) -> VisualBatch:
        b = super().batch(rows)
        images = [self.pixels[i] for r in rows for i in self.row_images[r]]
        return VisualBatch(b.input_ids, b.targets, b.segments, preprocess(images, self.vision) if images else None)


def heldout_conversations(data_dir: Path, stage: int) -> list[Conversation]:
    """Stages 0 and 1: captions of held-out images; stage 2: the evals' held-out questions."""
    rows = [r for task in TASKS for r in read_eval(data_dir, task)]
    rows = rows[:: max(len(rows) // HELDOUT_CONVERSATIONS, 1)]
    captions = stage < 2
    if captions:
        rows = list({r["image"]: {**r, "caption": r["caption"] or DIGIT_CAPTION.format(r["answer"])}
                     for r in rows if r["caption"] or r["task"] == "digits"}.values())
    return [Conversation([{"role": "user", "content": [{"type": "image", "image": r["image"]},
                                                        {"type": "text", "text": CAPTION_REQUESTS[0] if captions
                                                         else r["question"]}]},
                          {"role": "assistant", "content": r["caption"] if captions else r["answer"]}],
                         f"{data_dir}/eval/{r['task']}.jsonl: {r['id']}") for r in rows]


@torch.no_grad()
def visual_probe(model: Transformer, tokenizer: Tokenizer, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Greedy answers to held-out eval questions, scored by the evals' own metrics, by task: how
    the run is doing on what `opengpt4 eval run visual_*` will measure."""
    was_training = model.training
    engine = Engine(model, tokenizer, pack=False)
    prompts = [engine.chat_prompt([{"role": "user", "content": [{"type": "image", "image": r["image"]},
                                                                {"type": "text", "text": r["question"]}]}])
               for r in rows]
    replies = [c[0].text for c in engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0))]
    model.train(was_training)
    scores: dict[str, list[float]] = {}
    for r, reply in zip(rows, replies, strict=True):
        scores.setdefault(r["task"], []).append(score(r["task"], reply, r["answer"])[1])
    return {task: float(np.mean(v)) for task, v in scores.items()}


def self_replay(model: Transformer | None, tokenizer: Tokenizer, text_chats: list[Conversation], n: int,
                cached: Path, batch: int = 64) -> list[Conversation]:
    """The first `n` of `text_chats`' first questions (with the system message) answered greedily by
    `model` itself, those answers that end within REPLAY_MAX_TOKENS. Replaying the LM's own answers keeps
    its text behaviour as it was (self-distillation, as in Yang et al. 2024's SDFT) whatever the chats' own
    answers would teach. Generated in training's `auto` dtype for the model's device (bfloat16 where it
    is multiplied natively, 2x faster on such a CPU; float32 elsewhere, where bfloat16 runs at ~1% of its
    speed): this is training data, not a measurement. A resumed run reads them from its checkpoint
    (`cached`, written with each one by VisualAlign.snapshot) instead, so it trains on the same answers."""
    if cached.is_file():  # may hold none: an LM that never finishes an answer in time
        return [parse_conversation(row, f"{cached}:{number}") for number, row in iter_jsonl(cached)]
    dtype = autocast_dtype("auto", next(model.parameters()).device)
    engine = Engine(copy.deepcopy(model).to(dtype).eval(), tokenizer, pack=False)
    questions = [c.messages[: [m["role"] for m in c.messages].index("user") + 1] for c in text_chats[:n]]
    replayed = []
    params = SamplingParams(max_tokens=REPLAY_MAX_TOKENS, temperature=0.0)
    with Progress(TextColumn("[bold]self-replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("", total=len(questions))
        for start in range(0, len(questions), batch):
            chunk = questions[start: start + batch]
            for question, (answer,) in zip(chunk, engine.generate([engine.chat_prompt(q) for q in chunk], params),
                                           strict=True):
                if answer.finish_reason == "stop" and answer.text.strip():
                    replayed.append(Conversation(question + [{"role": "assistant", "content": answer.text}],
                                                 f"{cached}:{len(replayed) + 1}"))
            bar.advance(task, len(chunk))
    return replayed


# --- the objective ---------------------------------------------------------------------------


class VisualAlign(SFT):
    """One stage (see the module docstring): SFT's batches, evals and checkpoints, with images."""

    def __init__(self, stage: int, lm: str, vision: str | None, data_dir: Path, out: Path, cfg: AlignConfig,
                 d: distributed.Dist, state: dict | None) -> None:
        self.stage, self.cfg, self.dist, self.name = stage, cfg, d, f"vision stage {stage}"
        resumed = state["vision_align"] if state is not None else None
        torch.manual_seed(cfg.seed)
        self.data_file = Path(data_dir) / f"stage{max(stage, 1)}.json"  # stage 0 learns from the captions too
        conversations = read_visual_chats(self.data_file)
        self.replayed: list[Conversation] | None = None  # stage 2's self-replay chats
        if stage == 0:
            self.base = resolve_model(lm)  # its tokenizer
            self.model, self.tokenizer = load_checkpoint(out) if resumed else captioner(
                self.base, cfg.decoder_depth, cfg.seed, cfg.pixel_shuffle)
            self.model.requires_grad_(True)
        elif stage == 1:
            self.base = resolve_model(lm)
            self.model, self.tokenizer = load_checkpoint(out) if resumed else attach_vision(
                self.base, vision, cfg.seed, pixel_shuffle=cfg.pixel_shuffle)
            self.model.requires_grad_(False)
        else:
            if cfg.pixel_shuffle:
                raise ConfigError("pixel_shuffle is set when a projector is made (stages 0 and 1); stage 2 keeps "
                                  "stage 1's")
            self.base = resolve_model(lm)
            if load_model_config(self.base).vision is None:
                raise ConfigError(f"{self.base} has no vision tower: stage 2 starts from a stage-1 checkpoint")
            # A start with image adapters kept apart (a rebuilt delta such as smollm2-135m-vision, or `vision read`
            # on one): LoRA goes on training them (PEFT's is_trainable load) instead of folding them in.
            apart = read_image_adapters(self.base) if cfg.lora_rank else None
            self.model, self.tokenizer = load_checkpoint(out if resumed and not cfg.lora_rank else self.base,
                                                         image_adapters_apart=apart is not None)
            if cfg.self_replay:
                visual, text_chats = [], []
                for c in conversations:
                    (visual if any(iter_images([c])) else text_chats).append(c)
                self.replayed = self_replay(self.model, self.tokenizer, text_chats, cfg.self_replay,
                                            out / REPLAY_FILE)
                conversations = visual + self.replayed
                print(f"self-replay: {len(self.replayed):,} of {min(cfg.self_replay, len(text_chats)):,} text-only "
                      f"questions answered by the LM itself, instead of {len(text_chats):,} chats' own answers",
                      flush=True)
            if cfg.lora_rank:
                lora.apply_lora(self.model, cfg.lora_rank, cfg.lora_alpha)  # freezes the rest
                if apart is not None and not resumed:
                    rank, alpha, tensors = apart
                    if (rank, alpha) != (cfg.lora_rank, cfg.lora_alpha):
                        raise ConfigError(f"{self.base} has image adapters of rank {rank} (alpha {alpha:g}): stage 2 "
                                          f"goes on training them with --lora {rank} --set2 lora_alpha={alpha:g}")
                    lora.load_adapters(self.model, tensors, str(self.base / IMAGE_ADAPTERS_FILE))
                if resumed:
                    lora.load_adapters(self.model, read_safetensors(out / ADAPTER_FILE), str(out / ADAPTER_FILE))
                    towers = {k: v for k, v in read_safetensors(out / WEIGHTS_FILE).items()
                              if k.startswith(("projector.", "vision."))}
                    self.model.load_state_dict(towers, strict=False)
            else:
                self.model.requires_grad_(True)
        self.model.projector.requires_grad_(True)
        self.model.vision.requires_grad_(cfg.train_vision)
        if hasattr(self.model, "reader"):  # trained by `vision read`, on its own objective
            self.model.reader.requires_grad_(False)
        self.model.train()
        config = self.model_config = self.model.config
        if cfg.seq_len > config.max_seq_len:
            raise ConfigError(f"seq_len {cfg.seq_len} is longer than {self.base}'s context ({config.max_seq_len})")

        reader = getattr(self.model, "reader", None)  # its readings of the images go into the chats
        self.train = PackedVisualChats(conversations, self.tokenizer, cfg.seq_len, cfg.seed, config.vision, reader)
        self.heldout = PackedVisualChats(heldout_conversations(Path(data_dir), stage), self.tokenizer, cfg.seq_len,
                                         None, config.vision, reader)
        # Stage 1 only captions: its model cannot answer questions yet.
        self.probe_rows = [r for task in TASKS for r in read_eval(data_dir, task)[: cfg.probe_size]] \
            if stage == 2 else []
        self.n_micro = micro_batches(cfg, d)
        self.rows_per_micro = cfg.batch_size // d.world_size // self.n_micro
        self.step = resumed["step"] if resumed is not None else 0
        self.epochs = SeededEpochs(len(self.train), cfg.batch_size, cfg.seed)
        # The LM's frozen weights get no weight gradients: 4 FLOPs per weight and token, not 6.
        self.flops_per_weight = 4.0 if stage == 1 or (stage == 2 and cfg.lora_rank) else 6.0

    def describe(self) -> str:
        trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        parts = ["projector"] + (["ViT"] if self.cfg.train_vision else [])
        if self.stage == 0:
            parts.append(f"a {self.model_config.n_layer}-layer decoder from scratch")
        if self.stage == 2:
            parts.append(f"LoRA rank {self.cfg.lora_rank}" if self.cfg.lora_rank else "the whole LM")
        return (f"vision stage {self.stage} from {self.base.name}: {' + '.join(parts)} trained "
                f"({trained / 1e6:.2f}M parameters); train ({self.data_file.name}): "
                f"{self.train.stats.describe(self.cfg.seq_len)}, {len(self.train.pixels):,} images; "
                f"{self.cfg.batch_size} rows/step, {self.steps_for(1.0):,} steps/epoch; "
                f"held-out: {self.heldout.stats.describe(self.cfg.seq_len)}")

    def loss(self, model: nn.Module, batch: VisualBatch) -> torch.Tensor:
        device = next(model.parameters()).device
        images = batch.images.to(device) if batch.images is not None else None
        return model(batch.input_ids.to(device), images, targets=batch.targets.to(device),
                     segments=batch.segments.to(device), reduction="sum")

    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """The held-out loss, and the probe in float32 (outside autocast, as generation runs)."""
        result = super().evaluate(model, autocast)
        if self.probe_rows:
            result["probe"] = visual_probe(distributed.unwrap(model), self.tokenizer, self.probe_rows)
        return result

    def format_eval(self, result: dict[str, Any]) -> str:
        probe = " ".join(f"{task} {value:.2f}" for task, value in result.get("probe", {}).items())
        return super().format_eval(result) + (f" | probe {probe}" if probe else "")

    def snapshot(self, model: nn.Module) -> Snapshot:
        """SFT's, with the self-replay chats in the checkpoint too (a resume reads them back)."""
        snap = super().snapshot(model)
        if self.replayed is None:
            return snap
        write_more, replayed = snap.write_extra, self.replayed

        def write_extra(tmp: Path) -> None:
            if write_more is not None:
                write_more(tmp)
            write_jsonl(tmp / REPLAY_FILE, [{"messages": c.messages} for c in replayed])

        return dataclasses.replace(snap, write_extra=write_extra)

    def state_dict(self) -> dict[str, Any]:
        return {"vision_align": {"stage": self.stage, "step": self.step, "base": str(self.base),
                                 "data": str(self.data_file), "train": vars(self.train.stats),
                                 "heldout": vars(self.heldout.stats)}}


def build_trainer(stage: int, lm: str, data_dir: Path, out: Path, cfg: AlignConfig, *, vision: str | None = None,
                  max_steps: int | None = None, epochs: float | None = None, max_minutes: float | None = None,
                  resume: bool = False) -> Trainer:
    d = distributed.init()
    state = read_state(out) if resume else None
    if state is not None:
        cfg = AlignConfig(**state["train_config"])
    objective = VisualAlign(stage, lm, vision, data_dir, out, cfg, d, state)
    if epochs is not None:
        max_steps = objective.steps_for(epochs)
    return Trainer(objective, cfg, out, d, state, max_steps=max_steps, max_minutes=max_minutes, fsdp=False)
