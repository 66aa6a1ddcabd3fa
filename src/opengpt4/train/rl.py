"""RLHF: PPO and GRPO on the policy's own samples, rewarded by a reward model, the RBRM safety
grader and a KL leash to the frozen SFT model. An objective of the one training loop.

    opengpt4 rlhf --algo ppo --policy SFT_DIR --reward RM_DIR --rbrm classifier:RBRM_DIR \
        --prompts CHAT_DIR --out DIR [--set kl_coef=0.05]

A rollout: `prompts_per_rollout` prompts (a seeded pass over the prompt set, as SFT's epochs),
`samples_per_prompt` responses each, sampled by the engine that serves chat and evals (batched,
KV cache, the server's sampler; no second generation loop) from the current policy. Each
response is scored once:

    score = RM(prompt, response) + rbrm_weight * RBRM reward   (graders.REWARDS, signed, on the
            prompts whose family the rubric knows; `rbrm_families` picks which, for ablations)
            - missing_eos_penalty if the response ran out of tokens (TRL's missing_eos_penalty)

Then the rollout's `batch_size * minibatches` sequences are trained on for `ppo_epochs` passes
of `minibatches` optimizer steps each (a Trainer step is one optimizer step):

- PPO (InstructGPT; TRL's PPO trainer): the per-token reward is -kl_coef * (log pi - log ref)
  with the score added at the last token; a value head on the policy's final hidden state
  (shared trunk) gives GAE(gamma, lam) advantages, whitened over the rollout; the loss is the
  clipped ratio objective plus vf_coef x the clipped value loss.
- GRPO (DeepSeekMath): no value head; each response's advantage is its score minus its prompt
  group's mean, divided by the group's std (`scale_rewards`, TRL's option: "batch" divides by the
  rollout's std, "none" by nothing, as Dr. GRPO); the KL to the reference is a loss term,
  kl_coef x the k3 estimator exp(ref - pi) - (ref - pi) - 1 per token.

Losses are summed over response tokens and divided by their count (token-level averaging).
Logged per step (metrics.jsonl, rl.png): the score and its parts, KL per response by the k1
(sum of log pi - log ref) and k3 estimators, per-token entropy, response length, and the refusal
rates of the rollout's disallowed/jailbreak prompts and of its allowed look-alikes (what the
RBRM reward should move apart). Evals: greedy responses to a fixed sample of held-out prompts.

Checkpoints hold the policy as a plain model (what the engine, evals and server load) and, for
an exact resume, the value head and the current rollout (tokens, old log-probs, advantages):
a run killed mid-rollout continues with the same updates it would have made.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from opengpt4.config import FineTuneConfig, apply_overrides
from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import CheckpointError, ConfigError, DataFileError
from opengpt4.files import iter_jsonl
from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.model.precision import autocast_dtype
from opengpt4.model.transformer import Transformer
from opengpt4.safety.graders import LABELS, Case, Grader, refused
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed
from opengpt4.train.finetune import describe_mode, load_trainable, reference, snapshot
from opengpt4.train.loop import SeededEpochs, Snapshot, Trainer, micro_batches, read_state

ALGOS = ("ppo", "grpo")
SCALE_REWARDS = ("group", "batch", "none")  # GRPO advantage scaling, as TRL names it
VALUE_FILE, ROLLOUT_FILE, PLOT_FILE = "value_head.safetensors", "rollout.safetensors", "rl.png"
SAFETY_FAMILIES = tuple(LABELS)


@dataclass
class RLConfig(FineTuneConfig):
    """`opengpt4 rlhf --set name=value`: FineTuneConfig's fields (batch_size: sequences per optimizer step)
    with RL defaults, and the algorithm's own."""

    algo: str = "ppo"
    lr: float = 1e-5
    min_lr_ratio: float = 1.0  # constant after warmup, as TRL's PPO and GRPO trainers default
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 32
    minibatches: int = 2  # optimizer steps per pass over a rollout: a rollout is batch_size x minibatches sequences
    ppo_epochs: int = 2  # passes over each rollout (GRPO's "iterations")
    samples_per_prompt: int = 1  # GRPO's group size (>= 2); PPO may sample several too
    # GRPO: what a group's centred scores are divided by. "group" (DeepSeekMath) blows up small score
    # differences in a group whose RBRM grades are all alike, so the reward model alone steers it;
    # "batch" (one std for the rollout) and "none" (Dr. GRPO) keep a score's scale across groups.
    scale_rewards: str = "group"
    max_new_tokens: int = 64
    # Rollouts are sampled from softmax(logits / temperature); the policy, its old self and the
    # reference are all scored under that same tempered distribution (as TRL's trainers do), so the
    # PPO ratio and the KL are about the distribution the responses came from.
    temperature: float = 1.0
    clip: float = 0.2  # the ratio's clip range
    kl_coef: float = 0.05  # beta
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    value_clip: float = 0.2
    rbrm_weight: float = 1.0
    rbrm_families: str = "disallowed,jailbreak,sensitive,allowed"  # prompt families the RBRM rewards
    missing_eos_penalty: float = 1.0
    eval_every: int = 20
    eval_prompts: int = 64  # held-out prompts answered greedily per eval (a fixed seeded sample, families equal)
    steps: int = 200  # the run's length unless --max-steps says otherwise

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        if self.algo == "grpo" and self.samples_per_prompt < 2:
            raise ConfigError("GRPO compares responses within a group: samples_per_prompt must be >= 2")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ConfigError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {self.scale_rewards!r}")
        if not self.temperature > 0:  # also NaN
            raise ConfigError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")
        for name in ("minibatches", "ppo_epochs", "samples_per_prompt", "max_new_tokens", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.batch_size * self.minibatches) % self.samples_per_prompt:
            raise ConfigError(f"a rollout's {self.batch_size * self.minibatches} sequences must be whole groups "
                              f"of samples_per_prompt {self.samples_per_prompt}")
        unknown = set(self.families) - set(SAFETY_FAMILIES)
        if unknown:
            raise ConfigError(f"rbrm_families: unknown {sorted(unknown)}; expected some of {', '.join(SAFETY_FAMILIES)}")

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in self.rbrm_families.split(",") if f)

    @property
    def steps_per_rollout(self) -> int:
        return self.minibatches * self.ppo_epochs


# --- prompts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptRow:
    messages: list[dict[str, Any]]  # system and user turns, ending where the assistant answers
    family: str | None  # a safety family (graders.LABELS) or None: no RBRM reward
    category: str
    source: str  # file:line


def prompt_file(path: str | Path, split: str) -> Path:
    """A chat data dir's pairs-<split>.jsonl (its prompts); a file stands for itself."""
    path = Path(path)
    return path / f"pairs-{split}.jsonl" if path.is_dir() else path


def read_prompts(path: str | Path) -> list[PromptRow]:
    """Distinct prompts of a JSONL file: rows with "prompt" (messages, or a string: one user turn) as
    in preference pairs, or "messages" as in labelled responses; family and category at the top
    level or in "meta". Errors name file:line."""
    rows, seen = [], set()
    for number, row in iter_jsonl(path):
        where = f"{path}:{number}"
        messages = row.get("prompt", row.get("messages"))
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise DataFileError(f"{where}: 'prompt' (or 'messages') must be a non-empty list of {{role, content}} "
                                "messages or a string")
        if messages[-1]["role"] != "user":
            raise DataFileError(f"{where}: a prompt ends with the user's turn, not {messages[-1]['role']!r}")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        family = row.get("family", meta.get("family"))
        if family is not None and family not in LABELS:
            raise DataFileError(f"{where}: unknown family {family!r}; expected one of {', '.join(LABELS)}")
        key = json.dumps(messages, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(PromptRow(messages, family, str(row.get("category", meta.get("category", ""))), where))
    if not rows:
        raise DataFileError(f"{path}: no prompts")
    return rows


# --- rewards ---------------------------------------------------------------------------------------
class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[PromptRow], responses: Sequence[str]) -> dict[str, Tensor]:
        """Each response's reward components (name -> (N,) float32); the score is their sum."""


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    return a.backend.to_str() == b.backend.to_str() and a.chat_template == b.chat_template


class PreferenceReward:
    """The reward model's score plus rbrm_weight x the grader's signed rubric reward on the prompts
    of `families` (0 elsewhere: a prompt with no safety family, or an ablated one)."""

    def __init__(self, reward_model: Any, grader: Grader | None, rbrm_weight: float, families: Sequence[str]) -> None:
        self.reward_model, self.grader, self.rbrm_weight, self.families = reward_model, grader, rbrm_weight, families

    def __call__(self, prompts: Sequence[PromptRow], responses: Sequence[str]) -> dict[str, Tensor]:
        parts = {"rm": self.reward_model.score([p.messages for p in prompts], list(responses)).float().cpu()}
        if self.grader is not None:
            rbrm = torch.zeros(len(prompts))
            graded = [i for i, p in enumerate(prompts) if p.family in self.families]
            grades = self.grader.grade_many([Case(prompts[i].messages, responses[i], prompts[i].family,
                                                  prompts[i].category) for i in graded])
            for i, grade in zip(graded, grades, strict=True):
                rbrm[i] = grade.reward
            parts["rbrm"] = self.rbrm_weight * rbrm
        return parts


# --- the policy ------------------------------------------------------------------------------------
class PolicyWithValue(nn.Module):
    """The policy and PPO's value head on its final hidden state (a shared trunk, as TRL's
    AutoModelForCausalLMWithValueHead): forward(input_ids, where) -> (logits (n, V), values (n,)) at
    the positions `where` picks (Transformer.forward)."""

    def __init__(self, decoder: Transformer) -> None:
        super().__init__()
        self.decoder = decoder
        self.value = nn.Linear(decoder.config.n_embd, 1)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def forward(self, input_ids: Tensor, where: Tensor) -> tuple[Tensor, Tensor]:
        taken: list[Tensor] = []
        hook = self.decoder.lm_head.register_forward_pre_hook(lambda _m, args: taken.append(args[0]))
        try:
            logits = self.decoder(input_ids, where=where)
        finally:
            hook.remove()
        return logits, self.value(taken[0]).squeeze(-1).float()


def scored(mask: Tensor) -> Tensor:
    """(B, T): the positions whose logits score a response token, from a rollout's (B, T-1) mask.
    Only they reach the LM head: prompts are most of a row, and SmolLM2's head is 49k wide."""
    return F.pad(mask, (0, 1))


def tempered_logprobs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """(n, V) log softmax(logits / temperature) in float32, logits (n, V)."""
    return torch.log_softmax(logits.float() / temperature, -1)


def token_logprobs(logp: Tensor, targets: Tensor) -> Tensor:
    """(n,): log P(target), from tempered_logprobs (n, V)."""
    return logp.gather(-1, targets[:, None]).squeeze(-1)


def entropy(logp: Tensor) -> Tensor:
    """(n,) entropy of each next-token distribution, from tempered_logprobs (n, V)."""
    return -(logp.exp() * logp).sum(-1)


def spread(values: Tensor, mask: Tensor) -> Tensor:
    """(B, T-1) zeros with `values` (n,) at the mask's positions, in row-major order."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[mask] = values.float().cpu()
    return out


# --- rollouts --------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """A rollout's sequences, right-padded; per-position tensors (N, T-1) are aligned with the
    targets input_ids[:, 1:] (position t scores token t+1), `mask` on the response's tokens."""

    input_ids: Tensor  # (N, T)
    mask: Tensor  # (N, T-1) bool
    old_logprobs: Tensor  # (N, T-1)
    ref_logprobs: Tensor  # (N, T-1)
    advantages: Tensor  # (N, T-1)
    returns: Tensor  # (N, T-1); PPO's value targets (zeros for GRPO)
    old_values: Tensor  # (N, T-1)

    def tensors(self) -> dict[str, Tensor]:
        return {k: v.contiguous() for k, v in vars(self).items()}

    def rows(self, picked: list[int]) -> Rollout:
        return Rollout(*(t[picked] for t in vars(self).values()))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates (N, T) over each row's masked positions (one contiguous run
    per row, the response); the value after the last token is 0 (the episode ends)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    next_value = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].float()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = m * (delta + gamma * lam * running)
        advantages[:, t] = running
        next_value = m * values[:, t]  # outside the response the value does not carry back
    return advantages


def whiten(x: Tensor, mask: Tensor) -> Tensor:
    mean = x[mask].mean()
    std = x[mask].std() if int(mask.sum()) > 1 else torch.tensor(1.0)
    return ((x - mean) / (std + 1e-8)) * mask


def group_advantages(scores: Tensor, group: int, scale: str = "group") -> Tensor:
    """GRPO: each score minus the mean of its consecutive group of `group` samples of one prompt,
    divided by that group's std ("group"), the whole rollout's ("batch") or nothing ("none")."""
    s = scores.view(-1, group)
    centred = s - s.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (s.std(1, keepdim=True) + 1e-4)
    elif scale == "batch":
        centred = centred / (scores.std() + 1e-4)
    return centred.view(-1)


@dataclass
class RLBatch:
    rollout: Rollout


class RLHF:
    """PPO or GRPO from an SFT checkpoint (see loop.Objective and this module's docstring)."""

    def __init__(self, policy: str | Path, prompts: list[PromptRow], heldout: list[PromptRow], reward: RewardFn,
                 out: Path, cfg: RLConfig, d: distributed.Dist, state: dict | None,
                 reward_tokenizer: Tokenizer | None = None) -> None:
        self.cfg, self.dist, self.reward, self.out = cfg, d, reward, out
        self.name = cfg.algo
        resumed = state["rlhf"] if state is not None else None
        trainable = load_trainable(policy, out, resumed, cfg, "--policy")
        decoder, self.tokenizer, self.base, self.base_sha256 = (trainable.decoder, trainable.tokenizer, trainable.base,
                                                                trainable.base_sha256)
        if reward_tokenizer is not None and not same_tokenizer(self.tokenizer, reward_tokenizer):
            raise CheckpointError(f"the reward model's tokenizer differs from the policy's ({self.base}): a reward "
                                  "model is trained from the policy's own SFT checkpoint")
        # The KL leash's anchor: a frozen copy of the starting policy, or (LoRA) the policy with its adapters off.
        self.reference = None if cfg.lora_rank else load_checkpoint(self.base)[0].requires_grad_(False).eval()
        self.decoder, self.model_config = decoder.train(), decoder.config
        torch.manual_seed(cfg.seed)
        self.model: nn.Module = PolicyWithValue(decoder) if cfg.algo == "ppo" else decoder
        if resumed is not None and cfg.algo == "ppo":
            self.model.value.load_state_dict(load_file(str(out / VALUE_FILE)))

        self.prompts, self.heldout = prompts, heldout
        self.prompt_ids = [self.encode(p) for p in prompts]
        self.eval_rows = stratified_sample(heldout, cfg.eval_prompts, cfg.seed)
        self.eval_ids = [self.encode(heldout[i]) for i in self.eval_rows]
        rollout_size = cfg.batch_size * cfg.minibatches
        if rollout_size % d.world_size:
            raise ConfigError(f"a rollout's {rollout_size} sequences must split evenly over {d.world_size} ranks")
        self.prompts_per_rollout = rollout_size // cfg.samples_per_prompt
        self.epochs = SeededEpochs(len(prompts), self.prompts_per_rollout, cfg.seed)
        self.n_micro = micro_batches(cfg, d)
        self.rows_per_micro = cfg.batch_size // d.world_size // self.n_micro
        self.step = resumed["step"] if resumed is not None else 0
        self.rollout: Rollout | None = None
        self.stats: dict[str, float] = resumed["stats"] if resumed is not None else {}
        if resumed is not None and self.step % cfg.steps_per_rollout:  # killed mid-rollout: the same rollout
            self.rollout = Rollout(**load_file(str(out / ROLLOUT_FILE)))
        dtype = autocast_dtype(cfg.dtype, d.device)
        # The trainer's precision, so the rollout's old log-probs come from the forward the loss runs.
        self.autocast = torch.autocast(d.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        self.flops_per_weight = 4.0 if cfg.lora_rank else 6.0  # LoRA: the frozen base gets no weight gradients

    def encode(self, p: PromptRow) -> list[int]:
        ids = self.tokenizer.render_chat(p.messages, add_generation_prompt=True).ids
        limit = self.model_config.max_seq_len
        if len(ids) + self.cfg.max_new_tokens > limit:
            raise DataFileError(f"{p.source}: the prompt is {len(ids)} tokens; with max_new_tokens "
                                f"{self.cfg.max_new_tokens} it does not fit the policy's context of {limit}")
        return ids

    # --- sampling and scoring ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, ids: list[list[int]], n: int, temperature: float, seed: int) -> list[list[tuple[list[int], bool]]]:
        """For each prompt, n responses (token ids, ended by the model itself) from the current policy,
        through the serving engine."""
        engine = Engine(self.decoder, self.tokenizer, pack=False)
        params = [SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=temperature, n=n,
                                 seed=seed * 1_000_003 + i) for i in range(len(ids))]
        try:
            out = engine.generate([Prompt(p) for p in ids], params)
        finally:
            self.decoder.train()  # the engine put it in eval mode
        return [[(c.token_ids, c.finish_reason == "stop") for c in choices] for choices in out]

    def text(self, response: list[int]) -> str:
        return self.tokenizer.decode([t for t in response if t not in self.tokenizer.stop_ids])

    def score(self, prompts: Sequence[PromptRow], texts: list[str], ended: list[bool]) -> dict[str, Tensor]:
        parts = self.reward(prompts, texts)
        unfinished = torch.tensor([not e for e in ended], dtype=torch.float32)
        parts["score"] = sum(parts.values()) - self.cfg.missing_eos_penalty * unfinished
        return parts

    @torch.no_grad()
    def forward_all(self, model: nn.Module, input_ids: Tensor, mask: Tensor,
                    with_values: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The response tokens' log-probs and values, (N, T-1) each (zero off the mask), and their
        entropies (n,), in micro-batches, under the training precision."""
        logps, ents, values = [], [], []
        m = self.rows_per_micro
        for lo in range(0, len(input_ids), m):
            ids, on = input_ids[lo : lo + m].to(self.dist.device), mask[lo : lo + m]
            with self.autocast:
                out = model(ids, where=scored(on).to(self.dist.device))
            logits, value = out if with_values else (out, torch.zeros(int(on.sum())))
            targets = ids[:, 1:][on.to(self.dist.device)]
            logp = tempered_logprobs(logits, self.cfg.temperature)  # once: the log-probs and the entropies read it
            logps.append(spread(token_logprobs(logp, targets), on))
            ents.append(entropy(logp).cpu())
            values.append(spread(value, on))
        return torch.cat(logps), torch.cat(ents), torch.cat(values)

    def make_rollout(self, index: int) -> Rollout:
        cfg, group = self.cfg, self.cfg.samples_per_prompt
        picked = self.epochs.rows(index, self.dist)
        prompts = [p for i in picked for p in [self.prompts[i]] * group]
        sampled = self.sample([self.prompt_ids[i] for i in picked], group, cfg.temperature,
                              seed=cfg.seed * 7_919 + index * self.dist.world_size + self.dist.rank)
        responses = [r for choices in sampled for r, _ in choices]
        ended = [e for choices in sampled for _, e in choices]
        rows = [self.prompt_ids[i] + r for i, choices in zip(picked, sampled, strict=True) for r, _ in choices]
        starts = [len(self.prompt_ids[i]) for i in picked for _ in range(group)]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width - 1, dtype=torch.bool)
        for k, (row, start) in enumerate(zip(rows, starts, strict=True)):
            input_ids[k, : len(row)] = torch.tensor(row)
            mask[k, start - 1 : len(row) - 1] = True  # position t scores token t+1: the response's tokens

        self.model.eval()
        old, ent, values = self.forward_all(self.model, input_ids, mask, cfg.algo == "ppo")
        with reference(self.decoder, self.reference) as ref_model:
            ref, _, _ = self.forward_all(ref_model, input_ids, mask, False)
        self.model.train()
        texts = [self.text(r) for r in responses]  # decoded once: the reward and the refusal rates read them
        parts = self.score(prompts, texts, ended)
        scores = parts["score"]
        log_ratio = (old - ref) * mask
        if cfg.algo == "ppo":
            rewards = -cfg.kl_coef * log_ratio
            last = torch.tensor([len(row) - 2 for row in rows])  # the position scoring the response's last token
            rewards[torch.arange(len(rows)), last] += scores
            advantages = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            returns = advantages + values
            advantages = whiten(advantages, mask)
        else:
            advantages = group_advantages(scores, group, cfg.scale_rewards)[:, None] * mask
            returns = torch.zeros_like(old)
        self.stats = self.rollout_stats(prompts, texts, parts, log_ratio, ent, mask)
        return Rollout(input_ids, mask, old, ref, advantages, returns, values)

    def rollout_stats(self, prompts: Sequence[PromptRow], texts: list[str], parts: dict[str, Tensor],
                      log_ratio: Tensor, ent: Tensor, mask: Tensor) -> dict[str, float]:
        stats = {name: float(v.mean()) for name, v in parts.items()}
        k3 = (torch.exp(-log_ratio) + log_ratio - 1) * mask
        stats |= {"kl_k1": float(log_ratio.sum(1).mean()), "kl_k3": float(k3.sum(1).mean()),
                  "entropy": float(ent.mean()), "response_tokens": float(mask.sum(1).float().mean())}
        if "rbrm" in parts:
            stats |= rbrm_by_family(prompts, parts["rbrm"])
        return stats | refusal_rates(prompts, texts)

    # --- the objective -----------------------------------------------------------------------------
    def describe(self) -> str:
        c, cfg = self.model_config, self.cfg
        return (f"{cfg.algo.upper()} on {self.base.name} ({c.num_params() / 1e6:.2f}M parameters, "
                f"{describe_mode(self.decoder)}): {len(self.prompts):,} "
                f"prompts, {self.prompts_per_rollout} x {cfg.samples_per_prompt} responses of <= {cfg.max_new_tokens} "
                f"tokens per rollout, {cfg.ppo_epochs} epochs x {cfg.minibatches} steps of {cfg.batch_size} sequences "
                f"each; KL coefficient {cfg.kl_coef:g}; held-out eval: {len(self.eval_ids)} prompts")

    def default_steps(self) -> int:
        return self.cfg.steps

    def next_batches(self) -> list[RLBatch]:
        cfg = self.cfg
        index, at = divmod(self.step, cfg.steps_per_rollout)
        if at == 0 or self.rollout is None:
            self.rollout = self.make_rollout(index)
        epoch, minibatch = divmod(at, cfg.minibatches)
        order = np.random.default_rng([cfg.seed, index, epoch]).permutation(len(self.rollout.input_ids))
        per_rank = cfg.batch_size // self.dist.world_size
        rows = order[minibatch * per_rank : (minibatch + 1) * per_rank].tolist()
        self.step += 1
        m = self.rows_per_micro
        return [RLBatch(self.rollout.rows(rows[j * m : (j + 1) * m])) for j in range(self.n_micro)]

    def count(self, batch: RLBatch) -> int:
        return int(batch.rollout.mask.sum())

    def tokens(self, batch: RLBatch) -> int:
        return batch.rollout.input_ids.numel()

    def flops(self, batch: RLBatch) -> float:
        # The optimizer step's forward and backward, the head on the response tokens only (the rollout's
        # sampling and scoring are not counted: MFU reads low on a step that makes a rollout).
        ids = batch.rollout.input_ids
        return self.model_config.step_flops(ids.numel(), ids.shape[1], self.count(batch), self.flops_per_weight)

    def loss(self, model: nn.Module, batch: RLBatch) -> Tensor:
        r, cfg = batch.rollout, self.cfg
        device = next(model.parameters()).device
        ids, mask = r.input_ids.to(device), r.mask.to(device)
        out = model(ids, where=scored(mask))
        logits, values = out if cfg.algo == "ppo" else (out, None)
        logp = token_logprobs(tempered_logprobs(logits, cfg.temperature), ids[:, 1:][mask])  # (n,): the response's tokens
        ratio = torch.exp(logp - r.old_logprobs.to(device)[mask])
        adv = r.advantages.to(device)[mask]
        per_token = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
        if values is not None:
            old_v, ret = r.old_values.to(device)[mask], r.returns.to(device)[mask]
            clipped = old_v + (values - old_v).clamp(-cfg.value_clip, cfg.value_clip)
            per_token = per_token + cfg.vf_coef * 0.5 * torch.max((values - ret) ** 2, (clipped - ret) ** 2)
        else:
            ref_minus = r.ref_logprobs.to(device)[mask] - logp
            per_token = per_token + cfg.kl_coef * (torch.exp(ref_minus) - ref_minus - 1)
        return per_token.sum()

    def step_metrics(self) -> dict[str, float]:
        """The current rollout's statistics, for the step's metrics line."""
        return dict(self.stats)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, autocast: AbstractContextManager) -> dict[str, Any]:
        """Greedy responses to the fixed held-out sample: the score's parts and the refusal rates."""
        if not self.eval_ids:
            return {}
        prompts = [self.heldout[i] for i in self.eval_rows]
        sampled = self.sample(self.eval_ids, 1, 0.0, seed=0)
        responses = [choices[0][0] for choices in sampled]
        texts = [self.text(r) for r in responses]
        parts = self.score(prompts, texts, [choices[0][1] for choices in sampled])
        probe = {f"eval_{k}": float(v.mean()) for k, v in parts.items()}
        probe["eval_response_tokens"] = float(np.mean([len(r) for r in responses]))
        return {"rl_eval": probe | {f"eval_{k}": v for k, v in refusal_rates(prompts, texts).items()}}

    def format_eval(self, result: dict[str, Any]) -> str:
        if "rl_eval" not in result:
            return f"step {result['step']}: no held-out prompts"
        e = result["rl_eval"]
        return f"step {result['step']}: held-out " + ", ".join(f"{k.removeprefix('eval_')} {v:.3f}" for k, v in e.items())

    def snapshot(self, model: nn.Module) -> Snapshot:
        unwrapped = distributed.unwrap(model)
        decoder = unwrapped.decoder if self.cfg.algo == "ppo" else unwrapped
        params = {k: p.detach().cpu() for k, p in decoder.named_parameters()}
        files = {ROLLOUT_FILE: self.rollout.tensors()} if self.rollout is not None else {}
        if self.cfg.algo == "ppo":
            files[VALUE_FILE] = {k: v.detach().cpu() for k, v in unwrapped.value.state_dict().items()}
        return snapshot(decoder, self.model_config, params, files, write_extra=self.write_plot)

    def write_plot(self, tmp: Path) -> None:
        lines = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines()] \
            if (self.out / "metrics.jsonl").is_file() else []
        plot_rl(lines, tmp / PLOT_FILE)

    def state_dict(self) -> dict[str, Any]:
        return {"rlhf": {"step": self.step, "base": str(self.base), "base_sha256": self.base_sha256,
                         "stats": self.stats}}


def stratified_sample(rows: Sequence[PromptRow], n: int, seed: int) -> list[int]:
    """Indices of n rows (all if fewer), the families (no family: one more group) taking turns, so that a
    family with few prompts is still measured: the refusal rate on 5 allowed prompts of a uniform 64 says little."""
    rng = random.Random(seed)
    groups: dict[str | None, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.family, []).append(i)
    queues = [rng.sample(g, len(g)) for _, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    picked: list[int] = []
    while len(picked) < min(n, len(rows)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return sorted(picked)


def rbrm_by_family(prompts: Sequence[PromptRow], rbrm: Tensor) -> dict[str, float]:
    """The (weighted) RBRM reward's mean per safety family of the rollout: which families the safety
    reward is moving, and which way (a family with no prompts in it is left out)."""
    out = {}
    for family in SAFETY_FAMILIES:
        on = torch.tensor([p.family == family for p in prompts], dtype=torch.bool)
        if on.any():
            out[f"rbrm_{family}"] = float(rbrm[on].mean())
    return out


def refusal_rates(prompts: Sequence[PromptRow], texts: Sequence[str]) -> dict[str, float]:
    """Refusal rate of the responses to disallowed/jailbreak prompts and to allowed look-alikes (NaN: none)."""
    out = {}
    for name, families in (("refusal_disallowed", ("disallowed", "jailbreak")), ("refusal_allowed", ("allowed",))):
        hits = [refused(t) for p, t in zip(prompts, texts, strict=True) if p.family in families]
        out[name] = float(np.mean(hits)) if hits else math.nan
    return out


def plot_rl(lines: list[dict], png: Path) -> None:
    """rl.png: the score and its parts, KL, entropy, response length and refusal rates against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m for m in lines if "kl_k1" in m]
    panels = (("reward", ("score", "rm", "rbrm", "word")), ("KL to the reference (per response)", ("kl_k1", "kl_k3")),
              ("entropy (nats/token)", ("entropy",)), ("response length (tokens)", ("response_tokens",)),
              ("RBRM reward by family", tuple(f"rbrm_{f}" for f in SAFETY_FAMILIES)),
              ("refusal rate", ("refusal_disallowed", "refusal_allowed")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(m["step"], m[key]) for m in steps if key in m and not math.isnan(m[key])]
            if points:
                ax.plot(*zip(*points, strict=True), lw=1, label=key)
        ax.set(xlabel="step", title=title)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- the command -----------------------------------------------------------------------------------
def build_trainer(policy: str | Path, reward: RewardFn, prompts: str | Path, out: Path, cfg: RLConfig, *,
                  heldout: str | Path | None = None, reward_tokenizer: Tokenizer | None = None,
                  max_steps: int | None = None, max_minutes: float | None = None, resume: bool = False) -> Trainer:
    d = distributed.init()
    state = read_state(out) if resume else None
    if state is not None:
        cfg = RLConfig(**state["train_config"])
    train_rows = read_prompts(prompt_file(prompts, "train"))
    held = prompt_file(heldout or prompts, "heldout")
    heldout_rows = read_prompts(held) if Path(prompts).is_dir() or heldout else []
    objective = RLHF(policy, train_rows, heldout_rows, reward, out, cfg, d, state, reward_tokenizer)
    return Trainer(objective, cfg, out, d, state, max_steps=max_steps, max_minutes=max_minutes, fsdp=False)


def rlhf_from_cli(args) -> None:
    from opengpt4.safety.classifier import make_grader
    from opengpt4.train.preference import RewardModel

    cfg = RLConfig(algo=args.algo, samples_per_prompt=8 if args.algo == "grpo" else 1)
    cfg.use_lora(args.lora)
    apply_overrides(cfg, args.set)
    cfg.__post_init__()
    reward_model = RewardModel.load(args.reward)
    grader = make_grader(args.rbrm) if args.rbrm else None
    reward = PreferenceReward(reward_model, grader, cfg.rbrm_weight, cfg.families)
    build_trainer(args.policy, reward, args.prompts, Path(args.out), cfg, heldout=args.heldout,
                  reward_tokenizer=reward_model.tokenizer, max_steps=args.max_steps, max_minutes=args.max_minutes,
                  resume=args.resume).run()
