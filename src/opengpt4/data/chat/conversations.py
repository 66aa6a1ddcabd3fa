"""Chat conversations from the synthetic world: facts, arithmetic, code, and system-message constraints.

Every answer is correct by construction: a fact is stated with the world's own statement
templates (in the user's language), arithmetic with the world's worked solution, code with
the function's reference body. Conversations are short (one or two exchanges), because the
from-scratch model trains on 256-token windows.

Splits (the held-out split measures generalisation, never an unseen constraint type):
  - facts: chat training asks only the facts pretraining already asked (`World.qa_facts`, in
    the QA documents' phrasings), so SFT teaches the chat format on knowledge the model was
    drilled on, and adds no fact. The facts pretraining only stated (`World.seen_facts`) are
    held-out material: chat QA on them (the world_chat eval's fact_seen) measures what
    pretraining taught, not what SFT did. The probe's held-out question phrasing (its
    fact_template questions) is never asked in chat training either. An earlier split held
    out a fifth of the subjects as well and left `mini` 128 trainable facts: SFT on them
    overfitted and chat QA fell to a quarter of the probe's accuracy.
  - subjects: a seeded ~20% of each kind's entities are held out of the safety data's
    prompts (safety/data.py `entity_pools`).
  - system messages: each constraint's last phrasings (constraints.HELDOUT_TEMPLATES) and the
    last generic system prompt appear only in held-out conversations.
  - kwarg values: end phrases and keywords have held-out values (constraints.HELDOUT_VALUES);
    the other kwargs (languages, counts, personas) take all their values in both.
  - arithmetic: train problems vs the world's val problems; code: train vs val functions;
    user phrasings of code requests and arithmetic follow-ups have held-out forms too.
  - myths: preference pairs of kind "truthful" (no conversation: SFT never sees a myth) for the
    world's trained half of its myths (`World.trained_myths`) only: the user asks the myth's
    question, chosen states the truth, rejected the myth's false value. Train pairs ask in the
    QA documents' phrasings, held-out pairs in the probe's held-out one; the held-out myths are
    in no file (the world_truthfulqa eval reports the two halves apart).
Constraint conversations put the constraint in the system message only; a share of them has
a user turn that asks for the opposite (a German question, "Just tell me the answer."), and
the reply still obeys the system message: the system role wins.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from opengpt4.data.chat.constraints import CONSTRAINTS, Constraint, split_pool
from opengpt4.data.chat.text import Answer, contains
from opengpt4.data.tasks import Function, MathProblem
from opengpt4.data.world import LANGUAGES, PHRASES, TEMPLATES, Fact, World, chat_statement

HELDOUT_SUBJECT_FRACTION = 0.2  # of each kind's entities: chat-held-out subjects
NON_ENGLISH = 0.4  # share of fact questions asked in fr/es/de/ru
CONFLICT_SHARE = 0.3  # of constraint conversations where a user request can contradict the system message
MULTI_TURN = 0.2  # share of two-exchange conversations
TOKEN_BUDGET = 190  # estimated tokens per conversation (see estimate_tokens): the model trains on 256-token windows
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# Generic system prompts: no constraint, so the model learns the system role is not always one.
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are opengpt4, a small helpful assistant.",
                  "Answer the user's questions accurately and briefly.", "You are a knowledgeable assistant.",
                  "You are a friendly and accurate assistant.")  # the last: held out
SOCRATIC_LEADS = {"en": ("Let's think it through together.", "Good question! Let's work it out."),
                  "fr": ("Réfléchissons ensemble.",), "es": ("Pensemos juntos.",), "de": ("Denken wir gemeinsam nach.",),
                  "ru": ("Давай подумаем вместе.",)}
ANSWER_IN_MY_LANGUAGE = {"en": "Please answer in English.", "fr": "Réponds en français, s'il te plaît.",
                         "es": "Responde en español, por favor.", "de": "Bitte antworte auf Deutsch.",
                         "ru": "Пожалуйста, ответь по-русски."}
CODE_REQUESTS = ("Write a Python function {name}({arg}). {doc}", "Implement {name}({arg}) in Python: {doc}",
                 "{prompt}Complete this function.", "Please write {name}: {doc}",
                 "Can you code a Python function called {name}({arg})? {doc}",
                 "I need {name}({arg}) written in Python. {doc}")  # the last two: held out
SHARED_KWARGS = {"language", "end_phrase", "postscript_marker", "keywords", "persona"}  # fit any answer
FOLLOW_UPS = ("Now double that number.", "What is twice that?", "And if it were twice as much?")  # the last: held out


@dataclass
class Sample:
    """One conversation, and bad replies for preference pairs: `rejected` (reason -> reply) are
    alternatives to the assistant message at `reply_index` (None: the last one)."""

    messages: list[dict[str, str]]
    meta: dict[str, Any]
    rejected: dict[str, str] = field(default_factory=dict)
    reply_index: int | None = None

    def pairs(self) -> list[dict[str, Any]]:
        """TRL's conversational preference format: the prompt, the chosen and a rejected reply."""
        i = len(self.messages) - 1 if self.reply_index is None else self.reply_index
        return [{"prompt": self.messages[:i], "chosen": [self.messages[i]],
                 "rejected": [{"role": "assistant", "content": reply}],
                 "meta": {"kind": self.meta["kind"], "rejected_because": reason}}
                for reason, reply in self.rejected.items()]

    def row(self) -> dict[str, Any]:
        return {"messages": self.messages, "meta": self.meta}


def estimate_tokens(messages: list[dict[str, str]]) -> float:
    """ChatML tokens of a conversation, from its text alone: 0.4 per UTF-8 byte, 0.5 more per
    capital letter (capitals split into short pieces) and 6 per message for the markup. On the
    mini data's 8k tokenizer a conversation has at most 1.05x this many tokens (measured on
    3,000 generated conversations of every kind), so TOKEN_BUDGET keeps it under 200."""
    return sum(0.4 * len(m["content"].encode()) + 0.5 * sum(c.isupper() for c in m["content"]) + 6 for m in messages)


def fits(messages: list[dict[str, str]]) -> bool:
    return estimate_tokens(messages) <= TOKEN_BUDGET


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def question_text(prompt: str, lang: str) -> str:
    """The bare question of a probe prompt "Question: …\\nAnswer:"."""
    p = PHRASES[lang]
    return prompt.removeprefix(f"{p.question}: ").removesuffix(f"\n{p.answer}:")


class ChatWorld:
    """The world's material divided into chat train / heldout, and the conversations made from it."""

    def __init__(self, world: World, seed: int = 0) -> None:
        self.world, self.seed = world, seed
        rng = random.Random(f"chat:{seed}:subjects")
        heldout_subjects = set()
        for names in world.train_entities.values():
            heldout_subjects |= set(rng.sample(names, max(1, round(len(names) * HELDOUT_SUBJECT_FRACTION))))
        self.subjects = {"heldout": heldout_subjects,
                         "train": {n for names in world.train_entities.values() for n in names} - heldout_subjects}
        self.facts = {"train": list(world.qa_facts), "heldout": list(world.seen_facts)}
        self.by_subject: dict[str, dict[str, list[Fact]]] = {}
        for split, facts in self.facts.items():
            index = defaultdict(list)
            for f in facts:
                index[f.subject].append(f)
            self.by_subject[split] = index
        self.problems = {"train": world.math_problems("train"), "heldout": world.math_problems("val")}
        functions = world._functions()  # the world's own train / val / eval split of its functions
        self.functions = {"train": functions["train"], "heldout": functions["val"]}
        self.values = defaultdict(set)  # attribute -> every value it takes (for wrong answers)
        for f in world.facts:
            if f.subject not in world.held_out:
                self.values[f.attr.name].add(f.value)
        # A wrong author swapped into a reply states that person's other facts too: never a myth's subject
        # (its truth would leak), unless the attribute has no other value.
        self.myth_subjects = {m.fact.subject for m in world.misconceptions}

    # --- answers ---------------------------------------------------------------------------
    def fact_answer(self, rng: random.Random, fact: Fact, lang: str, split: str, question: str | None = None) -> Answer:
        statements = list(TEMPLATES[fact.attr.name][lang].statements)
        rng.shuffle(statements)
        value = fact.value_in(lang)
        lead = chat_statement(rng, fact, lang)  # the reply itself; the other statements are its alternatives
        said = [lead] + [t for t in (_capitalise(s.format(s=fact.subject, v=value)) for s in statements) if t != lead]
        pool = self.by_subject[split]
        related = [f for f in pool.get(fact.subject, []) if f != fact] + list(pool.get(fact.value, []))
        extras = tuple(_capitalise(rng.choice(TEMPLATES[f.attr.name][lang].statements).format(s=f.subject, v=f.value_in(lang)))
                       for f in rng.sample(related, min(4, len(related))))
        asked = TEMPLATES[fact.attr.name][lang].questions
        questions = [q for q in asked if q.format(s=fact.subject) != question] or asked  # another one, where there is
        guide = (f"{rng.choice(SOCRATIC_LEADS[lang])} {PHRASES[lang].ask[1].format(s=fact.subject)} "
                 f"{rng.choice(questions).format(s=fact.subject)}")
        translations = {}
        for other in LANGUAGES:
            if other != lang:
                text = _capitalise(rng.choice(TEMPLATES[fact.attr.name][other].statements).format(
                    s=fact.subject, v=fact.value_in(other)))
                translations[other] = Answer(other, text, fact.value_in(other), (text,), title=fact.subject)
        return Answer(lang, said[0], value, (said[0],), extras, (*sorted(said[1:], key=len, reverse=True), f"{value}."),
                      guide, fact.subject, translations)

    def math_answer(self, rng: random.Random, problem: MathProblem) -> Answer:
        steps = EQUATION.findall(problem.solution)
        a, op, b, _ = steps[0]
        lead = rng.choice(SOCRATIC_LEADS["en"])
        guide = (f"{lead} What is {a} {op} {b}?" if len(steps) == 1 else
                 f"{lead} First, what is {a} {op} {b}? And what do you do with that number next?")
        value = str(problem.answer)
        return Answer("en", problem.solution, value, tuple(SENTENCE_END.split(problem.solution)),
                      rephrasings=(f"The answer is {value}.", f"{value}."), guide=guide, title="Solution")

    def wrong_value(self, rng: random.Random, fact: Fact) -> Fact:
        others = self.values[fact.attr.name] - {fact.value}
        return replace(fact, value=rng.choice(sorted(others - self.myth_subjects or others)))

    # --- questions -------------------------------------------------------------------------
    def _draw_fact(self, rng: random.Random, split: str, lang: str | None = None) -> tuple[Fact, str, str]:
        fact = rng.choice(self.facts[split])
        lang = lang or (rng.choice(LANGUAGES[1:]) if rng.random() < NON_ENGLISH else "en")
        t = TEMPLATES[fact.attr.name][lang]
        asked = t.questions + ((t.heldout,) if split == "heldout" else ())
        return fact, lang, rng.choice(asked).format(s=fact.subject)

    def _system(self, rng: random.Random, split: str) -> list[dict[str, str]]:
        if rng.random() < 0.5:
            return []
        return [{"role": "system", "content": rng.choice(split_pool(SYSTEM_PROMPTS, split, 1))}]

    # --- conversations ---------------------------------------------------------------------
    def fact(self, rng: random.Random, split: str) -> Sample:
        """One or two questions about world facts of one subject, answered in the user's language."""
        return _within_budget(lambda: self._fact(rng, split))

    def math(self, rng: random.Random, split: str) -> Sample:
        """An arithmetic word problem with its worked solution; sometimes a follow-up on the result."""
        return _within_budget(lambda: self._math(rng, split))

    def code(self, rng: random.Random, split: str) -> Sample:
        """A request for a small Python function and its reference implementation."""
        return _within_budget(lambda: self._code(rng, split))

    def constraint(self, rng: random.Random, constraint: Constraint, split: str) -> Sample:
        """A question answered under a constraint set by the system message (never by the user turn)."""
        return _within_budget(lambda: self._constrained(rng, constraint, split))

    def truthful_pairs(self, split: str) -> list[dict[str, Any]]:
        """Preference pairs for the trained myths (`World.trained_myths`; never a held-out one): the user
        asks the myth's question in each language, chosen is the world's statement of the fact with
        the true value, rejected the same statement with the myth's false value (rejected_because
        "myth"). Every question phrasing of the split (train: the QA documents' ones; heldout: the
        probe's held-out one) with every statement template: no random draw, so no other stream moves."""
        pairs = []
        for m in self.world.trained_myths():
            f, false = m.fact, Fact(m.fact.subject, m.fact.attr, m.false_value)
            for lang in LANGUAGES:
                t = TEMPLATES[f.attr.name][lang]
                for question in (t.questions if split == "train" else (t.heldout,)):
                    prompt = [{"role": "user", "content": question.format(s=f.subject)}]
                    for statement in t.statements:
                        chosen, rejected = (_capitalise(statement.format(s=f.subject, v=x.value_in(lang)))
                                            for x in (f, false))
                        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                                      "rejected": [{"role": "assistant", "content": rejected}],
                                      "meta": {"kind": "truthful", "rejected_because": "myth", "lang": lang,
                                               "subject": f.subject, "attr": f.attr.name,
                                               "template": "train" if split == "train" else "heldout"}})
        return pairs

    def _fact(self, rng: random.Random, split: str) -> Sample:
        fact, lang, question = self._draw_fact(rng, split)
        answer = self.fact_answer(rng, fact, lang, split, question)
        messages = self._system(rng, split) + [{"role": "user", "content": question},
                                               {"role": "assistant", "content": answer.text}]
        facts = [fact]
        others = [f for f in self.by_subject[split][fact.subject] if f != fact]
        if others and rng.random() < MULTI_TURN:
            second = rng.choice(others)
            t = TEMPLATES[second.attr.name][lang]
            q2 = rng.choice(t.questions).format(s=second.subject)
            more = [{"role": "user", "content": q2},
                    {"role": "assistant", "content": self.fact_answer(rng, second, lang, split, q2).text}]
            if fits(messages + more):
                messages += more
                facts.append(second)
        last = facts[-1]
        wrong_text = swap(messages[-1]["content"], last.value_in(lang), self.wrong_value(rng, last).value_in(lang))
        return Sample(messages, {"kind": "fact", "split": split, "lang": lang, "subject": fact.subject,
                                 "attrs": [f.attr.name for f in facts], "ideal": last.value_in(lang),
                                 "turns": len(facts)},
                      {"wrong_fact": wrong_text})

    def _math(self, rng: random.Random, split: str) -> Sample:
        problem = rng.choice(self.problems[split])
        messages = self._system(rng, split) + [{"role": "user", "content": problem.question},
                                               {"role": "assistant", "content": problem.solution}]
        result, reply = problem.answer, problem.solution
        if rng.random() < MULTI_TURN:
            follow_up = rng.choice(split_pool(FOLLOW_UPS, split, 1))
            result = 2 * problem.answer
            reply = f"{problem.answer} * 2 = {result}. The answer is {result}."
            messages += [{"role": "user", "content": follow_up}, {"role": "assistant", "content": reply}]
        wrong = result + rng.choice((-2, -1, 1, 2, 10))
        rejected = re.sub(rf"(= |answer is ){result}\b", rf"\g<1>{wrong}", reply)
        return Sample(messages, {"kind": "math", "split": split, "ideal": str(result), "turns": len(messages) // 2},
                      {"wrong_answer": rejected})

    def _code(self, rng: random.Random, split: str) -> Sample:
        functions = self.functions[split]
        f = rng.choice(functions)
        request = rng.choice(split_pool(CODE_REQUESTS, split, 2)).format(name=f.name, arg=f.arg, doc=f.doc, prompt=f.prompt)
        others = self.functions["train"] + self.functions["heldout"]  # any other body is a wrong one
        wrong = rng.choice([g for g in others if g.arg == f.arg and g.expression != f.expression])
        messages = self._system(rng, split) + [{"role": "user", "content": request},
                                               {"role": "assistant", "content": _code_reply(f)}]
        return Sample(messages, {"kind": "code", "split": split, "function": f.name, "turns": 1},
                      {"wrong_code": _code_reply(Function(f.name, f.arg, f.doc, wrong.expression, f.inputs))})

    def _base(self, rng: random.Random, split: str, constraint: Constraint) -> tuple[str, Answer, str, dict[str, str]]:
        """(base kind, answer, question, a wrong value per language) of a fact (mostly) or an arithmetic problem."""
        if constraint.id == "language:response_language" or rng.random() < 0.75:
            english = constraint.id != "language:response_language" and rng.random() < 0.7
            fact, lang, question = self._draw_fact(rng, split, "en" if english else None)
            wrong = self.wrong_value(rng, fact)
            return ("fact", self.fact_answer(rng, fact, lang, split, question), question,
                    {other: wrong.value_in(other) for other in LANGUAGES})
        problem = rng.choice(self.problems[split])
        wrong = problem.answer + rng.choice((-2, -1, 1, 2, 10))
        return "math", self.math_answer(rng, problem), problem.question, {"en": str(wrong)}

    def _constrained(self, rng: random.Random, constraint: Constraint, split: str) -> Sample | None:
        base, answer, question, wrong = self._base(rng, split, constraint)
        kwargs = constraint.draw(rng, answer, split)
        if kwargs is None:
            return None
        template = rng.choice(constraint.phrasings(split))
        system = template.format(**constraint.fields(kwargs))
        user, conflict = question, False
        if constraint.id == "language:response_language":
            conflict = answer.lang != "en"  # the user writes in a language the system message overrules
            if conflict and rng.random() < 0.5:
                user = f"{question} {ANSWER_IN_MY_LANGUAGE[answer.lang]}"
        elif answer.lang == "en" and constraint.conflicts(kwargs) and rng.random() < CONFLICT_SHARE:
            user, conflict = f"{question} {rng.choice(constraint.conflicts(kwargs))}", True
        reply = constraint.comply(kwargs, answer)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user},
                    {"role": "assistant", "content": reply}]
        reply_lang = kwargs.get("language", answer.lang)
        ideal = answer.translations[reply_lang].value if reply_lang != answer.lang else answer.value
        rejected = self._rejected(rng, constraint, kwargs, answer, reply, ideal, wrong[reply_lang],
                                  "wrong_fact" if base == "fact" else "wrong_answer")
        if split == "train" and constraint.id != "opengpt4:socratic" and rng.random() < MULTI_TURN:
            more = self._second_exchange(rng, constraint, kwargs, base, answer.lang, split)
            if fits(messages + more):
                messages += more
        meta = {"kind": "constraint", "split": split, "base": base, "lang": answer.lang,
                "subject": answer.title if base == "fact" else None,
                "constraints": [{"id": constraint.id, "kwargs": kwargs}],
                "template": constraint.templates.index(template), "conflict": conflict, "ideal": ideal,
                "turns": len(messages) // 2}
        return Sample(messages, meta, rejected, reply_index=2)

    def _second_exchange(self, rng: random.Random, constraint: Constraint, kwargs: dict, base: str, lang: str,
                         split: str) -> list[dict[str, str]]:
        """A second question under the same system message, when the same kwargs fit its answer."""
        if set(kwargs) - SHARED_KWARGS:
            return []  # kwargs drawn for the first answer (counts, words to avoid) need not fit a second one
        if base == "math":
            problem = rng.choice(self.problems[split])
            answer, question = self.math_answer(rng, problem), problem.question
        else:
            fact, _, question = self._draw_fact(rng, split, lang)
            answer = self.fact_answer(rng, fact, lang, split, question)
        if constraint.draw(random.Random(0), answer, split) is None:
            return []
        return [{"role": "user", "content": question}, {"role": "assistant", "content": constraint.comply(kwargs, answer)}]

    def _rejected(self, rng: random.Random, constraint: Constraint, kwargs: dict, answer: Answer, reply: str,
                  ideal: str, wrong: str, wrong_because: str) -> dict[str, str]:
        """Bad replies: a correct one that breaks the constraint, and a compliant one with a wrong answer."""
        out = {}
        # Redraws from a stream of their own that takes one draw of the caller's: how many draws a train
        # value takes must not move the conversations after this one (the held-out eval among them).
        own = random.Random(rng.getrandbits(64))
        redrawn = (constraint.draw(own, answer, "train") for _ in range(5))
        for candidate in (answer.text, *(constraint.comply(k, answer) for k in redrawn if k is not None)):
            if not constraint.check(kwargs, candidate):
                out["broken_constraint"] = candidate
                break
        if constraint.id != "opengpt4:socratic":  # its reply never states the answer
            swapped = swap(reply, ideal, wrong)
            if constraint.check(kwargs, swapped) and not contains(swapped, ideal):
                out[wrong_because] = swapped
        return out


def swap(text: str, value: str, other: str) -> str:
    """`text` with every whole-word `value` (as written, upper or lower case) replaced by `other`, cased alike."""
    def repl(m: re.Match) -> str:
        found = m.group(0)
        return other.upper() if found == value.upper() and found != value else \
            other.lower() if found == value.lower() and found != value else other
    return re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", repl, text, flags=re.IGNORECASE)


def _within_budget(make: Callable[[], Sample | None]) -> Sample:
    """The first sample `make` gives (None: its draw did not fit the material) that fits the token budget."""
    for _ in range(1000):
        sample = make()
        if sample is not None and fits(sample.messages):
            return sample
    raise RuntimeError("no conversation of this kind fits the world and the token budget")  # a bug in a draw


def _code_reply(f: Function) -> str:
    return f"```python\ndef {f.name}({f.arg}):\n    return {f.expression}\n```"


def constraint_eval_row(sample: Sample) -> dict[str, Any]:
    """A constraints-heldout.jsonl line: the prompt (system, user), the constraints and the ideal answer."""
    meta = sample.meta
    return {"messages": sample.messages[:2], "constraints": meta["constraints"], "ideal": meta["ideal"],
            "meta": {"lang": meta["lang"], "subject": meta["subject"], "conflict": meta["conflict"],
                     "template": meta["template"]}}


def heldout_constraint_conversations(chat: ChatWorld, per_type: int) -> list[Sample]:
    """`per_type` held-out constraint conversations of every type, each type from its own seeded stream."""
    samples = []
    for cid, constraint in CONSTRAINTS.items():
        rng = random.Random(f"chat:{chat.seed}:heldout:constraint:{cid}")
        samples += [chat.constraint(rng, constraint, "heldout") for _ in range(per_type)]
    return samples


def heldout_constraint_samples(world: World, seed: int = 0, per_type: int = 40) -> list[dict[str, Any]]:
    """The system-constraint eval's samples (constraints-heldout.jsonl lines), as `opengpt4 data chat` writes them."""
    return [constraint_eval_row(s) for s in heldout_constraint_conversations(ChatWorld(world, seed), per_type)]
