"""`opengpt4 data chat`: the chat data dir, generated from the seeded world.

    train.jsonl, heldout.jsonl         conversations {"messages": [...], "meta": {"kind": ..., ...}}
    pairs-train.jsonl, pairs-heldout.jsonl
                                       preference pairs {"prompt", "chosen", "rejected", "meta"} (TRL's
                                       conversational format): for every conversation, each bad reply
                                       it has (a wrong fact / answer / function, a broken constraint,
                                       and from the safety data disallowed content, a preachy or
                                       evasive refusal, an over-refusal, a non-compliant sensitive answer);
                                       and "truthful" pairs (truth chosen, myth rejected) for the world's
                                       trained myths only, which no conversation states
    constraints-heldout.jsonl          the system-constraint eval: {"messages": [system, user],
                                       "constraints": [{"id", "kwargs"}], "ideal", "meta"}
    safety-train.jsonl, safety-heldout.jsonl
                                       rubric-labelled responses {"messages", "response", "family",
                                       "category", "label"} (opengpt4.safety.data)
    manifest.json                      preset, seeds, counts per file and kind, the split rules

Same preset and seed, byte-identical files: every kind draws from its own seeded stream.
The dir is written to a temp dir and renamed into place.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from opengpt4.config import FORMAT_VERSION
from opengpt4.data.chat.constraints import CONSTRAINTS, END_PHRASES, HELDOUT_TEMPLATES, HELDOUT_VALUES, KEYWORDS
from opengpt4.data.chat.conversations import (
    HELDOUT_SUBJECT_FRACTION,
    TOKEN_BUDGET,
    ChatWorld,
    Sample,
    constraint_eval_row,
    heldout_constraint_conversations,
)
from opengpt4.data.world import World
from opengpt4.errors import OpenGPT4Error
from opengpt4.files import atomic_write_dir, iter_jsonl, write_jsonl
from opengpt4.safety.data import SafetyExample, labelled_responses, safety_examples
from opengpt4.safety.graders import POLICY_LABEL

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class ChatPreset:
    world: str  # World.generate size (the pretraining data of the same preset and seed)
    conversations: dict[str, dict[str, int]]  # split -> kind -> count ("constraint": per constraint type)


PRESETS = {
    "test": ChatPreset("test", {"train": {"fact": 40, "math": 20, "code": 10, "constraint": 6},
                                "heldout": {"fact": 10, "math": 5, "code": 5, "constraint": 3}}),
    "mini": ChatPreset("mini", {"train": {"fact": 3000, "math": 2000, "code": 1000, "constraint": 600},
                                "heldout": {"fact": 300, "math": 200, "code": 100, "constraint": 40}}),
}
SPLIT_RULES = {
    "facts": "train conversations ask only facts pretraining asked (World.qa_facts), never in the probe's "
             "held-out phrasing; held-out ones ask the facts pretraining only stated (World.seen_facts), which the "
             "world_chat eval asks too",
    "subjects": f"a seeded {HELDOUT_SUBJECT_FRACTION:.0%} of each kind's entities are named only by held-out "
                "safety prompts",
    "system_messages": f"the last {HELDOUT_TEMPLATES} phrasings of each constraint and the last generic system "
                       "prompt are held out",
    "kwarg_values": f"end phrases ({HELDOUT_VALUES['end_phrase']} of {len(END_PHRASES)}) and keywords "
                    f"({HELDOUT_VALUES['keywords']} of {len(KEYWORDS)}) have held-out values; languages, counts "
                    "and personas take all their values in both splits",
    "math_code": "arithmetic: the world's train problems vs its val problems; code: train vs val functions; the "
                 "last code request phrasings and arithmetic follow-up are held out",
    "constraint_types": "every type is in both splits: held-out compliance measures new phrasings, values and "
                        "subjects, never an unseen type",
    "safety": "opengpt4.safety.data: held-out prompt templates about the chat data's held-out subjects; train texts "
              "state no probe fact",
    "myths": "truthful preference pairs (chosen: the truth; rejected: the myth's false value) for the world's "
             "trained myths only (World.trained_myths, half of them), in pairs files only: no conversation states a "
             "myth; train pairs ask in the QA documents' phrasings, held-out ones in the probe's held-out phrasing; "
             "the held-out myths are in no file",
    "token_budget": f"conversations estimated at <= {TOKEN_BUDGET} tokens (conversations.estimate_tokens; < 200 "
                    "with the mini data's tokenizer), for 256-token training windows",
}


def _conversations(chat: ChatWorld, seed: int, split: str, counts: dict[str, int]) -> list[Sample]:
    samples = []
    for kind in ("fact", "math", "code"):
        rng = random.Random(f"chat:{seed}:{split}:{kind}")
        make = getattr(chat, kind)
        samples += [make(rng, split) for _ in range(counts[kind])]
    if split == "heldout":
        return samples + heldout_constraint_conversations(chat, counts["constraint"])
    for cid, constraint in CONSTRAINTS.items():
        rng = random.Random(f"chat:{seed}:{split}:constraint:{cid}")
        samples += [chat.constraint(rng, constraint, split) for _ in range(counts["constraint"])]
    return samples


# What the safety conversations' assistant turns demonstrate, per prompt family: the policy's answer
# (the default), or a helpful-only assistant's (the announcement's "early" model, which followed
# harmful instructions: what RLHF with the RBRM safety reward then has to correct). "early" is the
# helpful-only assistant that follows the policy on a share of the safety conversations (drawn per
# conversation): RL can only reinforce what the policy samples, and a model that never once
# refuses a disallowed request or answers a sensitive one as the policy asks gives it nothing to
# reinforce. Sensitive prompts get the larger share because the announcement's "29% more often"
# (relative) implies the early model already answered many of them by the policy. Preference
# pairs and labelled responses are the same in every mode: they always prefer the policy.
HELPFUL_ONLY = {"disallowed": "C", "jailbreak": "C", "sensitive": "noncompliant", "allowed": "helpful"}
SAFETY_DEMOS = {  # mode -> family -> share of the conversations that demonstrate the policy's answer
    "policy": dict.fromkeys(HELPFUL_ONLY, 1.0),
    "early": {"disallowed": 0.2, "jailbreak": 0.2, "sensitive": 0.5, "allowed": 1.0},
    "helpful-only": dict.fromkeys(HELPFUL_ONLY, 0.0),
}


def _demo_label(mode: str, e: SafetyExample, key: str) -> str:
    share = SAFETY_DEMOS[mode][e.family]
    follows_policy = share >= 1 or random.Random(f"demo:{key}").random() < share
    return POLICY_LABEL[e.family] if follows_policy else HELPFUL_ONLY[e.family]


def _safety(world: World, seed: int, split: str, demos: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(conversations, preference pairs, labelled responses) of the safety module's examples."""
    examples = safety_examples(world, split, seed)
    conversations, pairs = [], []
    for i, e in enumerate(examples):
        label = _demo_label(demos, e, f"{seed}:{split}:{i}")
        reply = e.ideal if label == POLICY_LABEL[e.family] else e.responses[label]
        conversations.append({"messages": [*e.messages, {"role": "assistant", "content": reply}],
                              "meta": {"kind": "safety", "split": split, "family": e.family, "category": e.category,
                                       "label": label}})
        for label, response in e.responses.items():
            if label != POLICY_LABEL[e.family]:
                pairs.append({"prompt": e.messages, "chosen": [{"role": "assistant", "content": e.ideal}],
                              "rejected": [{"role": "assistant", "content": response}],
                              "meta": {"kind": "safety", "rejected_because": label, "family": e.family,
                                       "category": e.category}})
    return conversations, pairs, labelled_responses(examples)


def _count(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    return dict(sorted(Counter(r["meta"][key] for r in rows).items()))


def _check_out(out: Path) -> None:
    # atomic_write_dir replaces what is at `out`: only ever let it replace an older chat data dir.
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file())):
        raise OpenGPT4Error(f"{out}: exists and is not a chat data dir; refusing to replace it")


def build_chat(preset: str, out: str | Path, seed: int = 0, safety_demos: str = "policy") -> Path:
    """Build the chat data dir for `preset` at `out` (atomically) and return its path. `safety_demos`:
    what the safety conversations demonstrate (SAFETY_DEMOS)."""
    if preset not in PRESETS:
        raise OpenGPT4Error(f"unknown chat data preset {preset!r}; choose from {', '.join(PRESETS)}")
    if safety_demos not in SAFETY_DEMOS:
        raise OpenGPT4Error(f"unknown safety demos {safety_demos!r}; choose from {', '.join(SAFETY_DEMOS)}")
    p, out, t0 = PRESETS[preset], Path(out), time.perf_counter()
    _check_out(out)
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("generating the world", total=2 * len(SPLITS) + 1)
        world = World.generate(seed, p.world)
        chat = ChatWorld(world, seed)
        files: dict[str, list[dict]] = {}
        for split in SPLITS:
            progress.update(task, description=f"{split} conversations", advance=1)
            samples = _conversations(chat, seed, split, p.conversations[split])
            progress.update(task, description=f"{split} safety data", advance=1)
            safety_conversations, safety_pairs, labelled = _safety(world, seed, split, safety_demos)
            files[f"{split}.jsonl"] = [s.row() for s in samples] + safety_conversations
            files[f"pairs-{split}.jsonl"] = ([pair for s in samples for pair in s.pairs()] + safety_pairs
                                             + chat.truthful_pairs(split))
            files[f"safety-{split}.jsonl"] = labelled
            if split == "heldout":
                files["constraints-heldout.jsonl"] = [constraint_eval_row(s) for s in samples
                                                      if s.meta["kind"] == "constraint"]
        progress.update(task, description="writing", advance=1)
        manifest = {
            "format_version": FORMAT_VERSION, "preset": preset, "seed": seed, "world": {"size": p.world, "seed": seed},
            "safety_demos": safety_demos,
            "counts": {
                "conversations": {split: _count(files[f"{split}.jsonl"], "kind") for split in SPLITS},
                "pairs": {split: {f"{kind}/{reason}": n for (kind, reason), n in sorted(Counter(
                    (r["meta"]["kind"], r["meta"]["rejected_because"]) for r in files[f"pairs-{split}.jsonl"]).items())}
                    for split in SPLITS},
                "constraints_heldout": dict(sorted(Counter(r["constraints"][0]["id"]
                                                           for r in files["constraints-heldout.jsonl"]).items())),
                "safety": {split: dict(sorted(Counter(r["family"] for r in files[f"safety-{split}.jsonl"]).items()))
                           for split in SPLITS},
                "files": {name: len(rows) for name, rows in sorted(files.items())},
            },
            "constraint_types": sorted(CONSTRAINTS),
            "split_rules": SPLIT_RULES,
        }

        def write(tmp: Path) -> None:
            for name, rows in sorted(files.items()):
                write_jsonl(tmp / name, rows)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

        atomic_write_dir(out, write)
    console.print(f"built {preset} chat data in {time.perf_counter() - t0:.1f} s: {out}", highlight=False)
    return out


PROMPT_GROUPS = ("disallowed", "jailbreak", "sensitive", "allowed", "fact", "math", "code", "constraint", "truthful",
                 "other")
RL_MIX = {"disallowed": 300, "jailbreak": 300, "sensitive": 300, "allowed": 600, "truthful": None, "other": 1500}


def rl_prompts(chat_dir: str | Path, mix: dict[str, int | None] = RL_MIX, seed: int = 0) -> list[dict[str, Any]]:
    """RLHF prompts from a chat data dir's pairs-train.jsonl: its distinct prompts, at most mix[group] of
    each group (a safety family, else the pair's kind: fact, math, code, constraint, truthful; "other": every
    kind the mix does not name; None: all), seeded. Taken whole, the constraint prompts alone would be 40%
    of the rollouts; the safety families need a share each to be learned."""
    unknown = set(mix) - set(PROMPT_GROUPS)
    if unknown:
        raise OpenGPT4Error(f"unknown prompt groups {sorted(unknown)}; expected some of {', '.join(PROMPT_GROUPS)}")
    path, rows, seen = Path(chat_dir) / "pairs-train.jsonl", [], set()
    if not path.is_file():
        raise OpenGPT4Error(f"{path}: not found; give a chat data dir from `opengpt4 data chat`")
    for _, pair in iter_jsonl(path):  # errors name the file and line
        key = json.dumps(pair["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            meta = pair["meta"]
            rows.append({"prompt": pair["prompt"], "family": meta.get("family"),
                         "category": meta.get("category", meta["kind"]), "kind": meta["kind"]})
    rng = random.Random(seed)
    rng.shuffle(rows)

    def group(row: dict[str, Any]) -> str:
        name = row["family"] or row["kind"]
        return name if name in mix else "other"

    picked = []
    for name in mix:
        members = [r for r in rows if group(r) == name]
        picked += members if mix[name] is None else members[: mix[name]]
    rng.shuffle(picked)
    return picked

