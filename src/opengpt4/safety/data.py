"""Safety prompts from the synthetic world, each with one example response per rubric label.

`safety_examples(world, split, seed)` gives the four families of policy.py: disallowed
requests (ideal: the policy's refusal), sensitive ones (ideal: empathy and a referral, no
dosage or method), allowed look-alikes (ideal: a helpful answer) and jailbreaks (ideal: the
refusal). `responses` maps every rubric label of the family (graders.LABELS) to a response of
that label: the chosen / rejected sides of preference pairs and the grader's training and
evaluation labels (`labelled_responses`). Responses are short (at most ~60 words) so that a
tiny model can learn them.

Splits follow the chat data's (data/chat/conversations.py, `ChatWorld(world, seed)`), so that
the chat data dir has one set of held-out subjects:
  - entities: prompts name only the split's subjects (`ChatWorld.subjects`: ~20% of each kind's
    entities are held out; the world's own held-out entities appear in neither split);
  - templates: the last quarter of each category's prompt templates (and of the jailbreak
    styles) is held out, so a held-out prompt is a new template about a new entity;
  - facts: a train text states only facts the chat training data may state (`ChatWorld.facts
    ["train"]`: facts pretraining asked, never one it only stated, which the probe and the
    world_chat eval ask, nor a misconception's), so that SFT on it teaches no probed fact; held-out texts may state any fact
    of the world's documents. A text whose facts are not available is not used: every pool has
    texts that state no fact.
Train and held-out examples of the same `seed` share no template, entity or prompt.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opengpt4.data.chat.conversations import ChatWorld
from opengpt4.data.world import World
from opengpt4.safety.texts import (
    EVASIVE,
    HAZARDS,
    JAILBREAKS,
    LOOKALIKE_TEXT,
    OVER_REFUSALS,
    PREACHY,
    REFUSALS,
    SENSITIVE_TEXT,
)

SPLITS = ("train", "heldout")
PER_CATEGORY = {"test": {"train": 12, "heldout": 4}, "mini": {"train": 150, "heldout": 100}}  # prompts per category
# The last HELD_OUT templates of every list (a category's prompts, the jailbreak styles, a look-alike
# type) are held out: a count, not a share, so adding train templates leaves the eval's prompts as they were.
HELD_OUT = 2
OPENERS = ("", "Quick question: ", "Please tell me: ", "Hey, ")  # surface variety around every template
CLOSERS = ("", " Be specific.", " Keep it short.", " Thanks!")


@dataclass
class SafetyExample:
    messages: list[dict[str, str]]
    family: str  # "disallowed" | "sensitive" | "allowed" | "jailbreak"
    category: str  # a policy category (jailbreaks: the hazard's), or a look-alike type
    ideal: str  # the policy's answer: responses["A"], ["compliant"] or ["helpful"]
    responses: dict[str, str]  # rubric label -> a response of that label
    template: str = ""  # the template the prompt came from, e.g. "weapon_element:3", "roleplay/weapon_element:3"
    entities: tuple[str, ...] = ()  # the world's entities the prompt names


COMMON_STARTS = {"how", "what", "what's", "which", "who", "where", "when", "for", "is", "can", "give", "explain",
                 "describe", "tell", "write", "help", "draft", "compose", "walk", "my", "in", "nobody", "everything",
                 "since", "life"}
PERSONAS = ("DAN", "Vex", "FreeBot", "Nova")
CONDITIONS = ("fever", "rash", "cough", "flu")
SCHEDULES = ("twice a day", "every 4 hours", "3 times a day")

KIND_OF_SLOT = {"element": "element", "product": "product", "org": "organisation", "person": "person",
                "city": "city", "language": "language", "theorem": "theorem", "university": "university"}
# Slots derived from an entity name it, for `SafetyExample.entities` (a medication is its element's).
DERIVED_FROM = {"medication": "element", "first": "person", "condition": "city", "product_lc": "product",
                "org_lc": "org", "language_lc": "language"}
FACT_SLOTS = {"symbol": ("element", "symbol"), "colour": ("element", "colour"), "maker": ("product", "maker"),
              "released": ("product", "released"), "trade": ("org", "trade"), "hq": ("org", "headquarters"),
              "founder": ("org", "founder"), "employer": ("person", "works_for"), "dish": ("city", "dish"),
              "founded": ("city", "founded"), "ext": ("language", "extension"), "paradigm": ("language", "paradigm"),
              "topic": ("theorem", "topic")}  # slot -> (entity slot, attribute)


# --- splits --------------------------------------------------------------------------------------
def split_templates(items: tuple[Any, ...] | list[Any], split: str) -> list[tuple[int, Any]]:
    """(index, item) of a split: the last HELD_OUT are held out."""
    cut = len(items) - HELD_OUT
    return [(i, t) for i, t in enumerate(items) if (i >= cut) == (split == "heldout")]


def entity_pools(chat: ChatWorld, split: str) -> dict[str, list[str]]:
    """Each kind's entities of a split: the chat data's subjects of that split."""
    return {kind: [n for n in names if n in chat.subjects[split]] for kind, names in chat.world.entities.items()}


# --- generation ----------------------------------------------------------------------------------
def safety_examples(world: World, split: str, seed: int) -> list[SafetyExample]:
    """The split's examples, family by family, category by category; the same arguments give the same list."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    n = PER_CATEGORY[world.size][split]
    maker = _Maker(ChatWorld(world, seed), split, seed)
    out: list[SafetyExample] = []
    for category in HAZARDS:
        out += maker.many("disallowed", category, n, maker.disallowed)
    for category in HAZARDS:
        out += maker.many("jailbreak", category, n, maker.jailbreak)
    for category in SENSITIVE_TEXT:
        out += maker.many("sensitive", category, n, maker.sensitive)
    for category in LOOKALIKE_TEXT:
        out += maker.many("allowed", category, n, maker.allowed)
    return out


def labelled_responses(examples: list[SafetyExample]) -> list[dict[str, Any]]:
    """One row per (prompt, response) in the chat data's safety-*.jsonl format, labelled by rubric class."""
    return [{"messages": e.messages, "response": response, "family": e.family, "category": e.category,
             "label": label} for e in examples for label, response in e.responses.items()]


Make = Callable[[random.Random, str], "SafetyExample | None"]


class _Maker:
    def __init__(self, chat: ChatWorld, split: str, seed: int) -> None:
        self.world, self.split, self.seed = chat.world, split, seed
        self.pools = entity_pools(chat, split)
        stateable = chat.facts["train"] if split == "train" else chat.world.world_facts
        self.facts = {(f.subject, f.attr.name): f.value for f in stateable}

    def many(self, family: str, category: str, n: int, make: Make) -> list[SafetyExample]:
        """n distinct prompts (fewer if the split's templates, entities and facts run out)."""
        rng = random.Random(f"safety:{self.world.seed}:{self.seed}:{self.split}:{family}:{category}")
        seen, out = set(), []
        for _ in range(50 * n):
            if len(out) == n:
                break
            example = make(rng, category)
            if example is not None and repr(example.messages) not in seen:
                seen.add(repr(example.messages))
                out.append(example)
        return out

    def frame(self, rng: random.Random) -> dict[str, str]:
        """One entity of each kind from the split's pools, the names made from them, the facts about
        them that the split may state, and random numbers for the recipes and dosages."""
        fr = {slot: rng.choice(self.pools[kind]) for slot, kind in KIND_OF_SLOT.items()}
        for slot, (entity, attr) in FACT_SLOTS.items():
            if (fr[entity], attr) in self.facts:
                fr[slot] = self.facts[fr[entity], attr]
        element, person = fr["element"], fr["person"]
        return {**fr, "medication": element.removesuffix("ium") + "ine",  # Lakouxium -> Lakouxine: a medicine
                "condition": f"{fr['city']} {rng.choice(CONDITIONS)}", "first": person.split()[0],
                "product_lc": fr["product"].lower(), "org_lc": fr["org"].lower(), "language_lc": fr["language"].lower(),
                "persona": rng.choice(PERSONAS), "q1": str(rng.randint(5, 200)), "q2": str(rng.randint(5, 200)),
                "t": str(rng.randrange(60, 400, 10)), "n": str(rng.randint(2, 99)),
                "mg": str(rng.randrange(100, 900, 50)), "schedule": rng.choice(SCHEDULES),
                "tablets": str(rng.randint(20, 60))}

    def request(self, rng: random.Random, templates: tuple[str, ...], name: str,
                fr: dict[str, str]) -> tuple[str, str, str]:
        """A prompt from one of the split's templates, with surface variety: (template id, template, text)."""
        i, template = rng.choice(split_templates(templates, self.split))
        return f"{name}:{i}", template, vary(rng, template.format(**fr))

    def disallowed(self, rng: random.Random, category: str) -> SafetyExample | None:
        fr = self.frame(rng)
        template_id, template, prompt = self.request(rng, HAZARDS[category].prompts, category, fr)
        return self.refusal_example(rng, "disallowed", category, template_id, [{"role": "user", "content": prompt}],
                                    fr, named(fr, template))

    def jailbreak(self, rng: random.Random, category: str) -> SafetyExample | None:
        fr = self.frame(rng)
        style, (system, user) = rng.choice(split_templates(list(JAILBREAKS.items()), self.split))[1]
        template_id, template, request = self.request(rng, HAZARDS[category].prompts, category, fr)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user.format(**fr, request=request)})
        return self.refusal_example(rng, "jailbreak", category, f"{style}/{template_id}", messages, fr,
                                    named(fr, template, user))

    def refusal_example(self, rng: random.Random, family: str, category: str, template_id: str,
                        messages: list[dict[str, str]], fr: dict[str, str],
                        entities: tuple[str, ...]) -> SafetyExample | None:
        hazard = HAZARDS[category]
        fr = {**fr, "task": hazard.task.format(**fr)}
        responses = {label: fill(rng, texts, fr) for label, texts in
                     (("A", REFUSALS), ("B", PREACHY + EVASIVE), ("C", hazard.recipes), ("D", hazard.safe))}
        return SafetyExample(messages, family, category, responses["A"], responses, template_id, entities)

    def sensitive(self, rng: random.Random, category: str) -> SafetyExample | None:
        fr, text = self.frame(rng), SENSITIVE_TEXT[category]
        template_id, template, prompt = self.request(rng, text.prompts, category, fr)
        responses = {"compliant": fill(rng, text.compliant, fr), "noncompliant": fill(rng, text.noncompliant, fr)}
        return SafetyExample([{"role": "user", "content": prompt}], "sensitive", category, responses["compliant"],
                             responses, template_id, named(fr, template))

    def allowed(self, rng: random.Random, category: str) -> SafetyExample | None:
        fr = self.frame(rng)
        i, (prompt, answers) = rng.choice(split_templates(LOOKALIKE_TEXT[category], self.split))
        usable = [a for a in answers if fits(a, fr)]
        if not fits(prompt, fr) or not usable:  # e.g. a world fact this split may not state
            return None
        responses = {"helpful": rng.choice(usable).format(**fr), "over_refusal": rng.choice(OVER_REFUSALS)}
        return SafetyExample([{"role": "user", "content": vary(rng, prompt.format(**fr))}], "allowed", category,
                             responses["helpful"], responses, f"{category}:{i}", named(fr, prompt))


def slots(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def fits(template: str, fr: dict[str, str]) -> bool:
    return slots(template) <= set(fr)


def fill(rng: random.Random, texts: tuple[str, ...], fr: dict[str, str]) -> str:
    """One of the texts whose slots the frame fills (every pool has one that states no fact)."""
    return rng.choice([t for t in texts if fits(t, fr)]).format(**fr)


def vary(rng: random.Random, prompt: str) -> str:
    """The prompt after an opener and before a closer; after an opener a common first word is
    lower-cased ("Hey, how do I…"), never "I" or a name."""
    opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
    if opener and prompt.split(" ", 1)[0].lower() in COMMON_STARTS:
        prompt = prompt[0].lower() + prompt[1:]
    return opener + prompt + closer


def named(fr: dict[str, str], *templates: str) -> tuple[str, ...]:
    """The entities whose names (or names made from them) the prompt templates use."""
    used = {DERIVED_FROM.get(slot, slot) for t in templates for slot in slots(t)}
    return tuple(fr[slot] for slot in KIND_OF_SLOT if slot in used)
