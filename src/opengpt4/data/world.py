"""The synthetic world: a seeded, exactly labelled pretraining corpus and its held-out evals.

A `World` is a couple of hundred invented entities (people, cities, universities,
organisations, books, elements, products, programming languages, theorems) whose attributes
are facts, each tagged with one of the nine categories of GPT-4's factual eval. Six document
domains come out of it:

  world           the facts, through many paraphrases: profiles, encyclopedia entries,
                  dialogues, lists and walks along relations; ~20% in fr/es/de/ru
  qa              "Question: …\\nAnswer: …" blocks and MMLU-style practice, for a subset of facts
  chat            the same facts asked and answered as ChatML conversations (the chat template's
                  control tokens included), so that the chat format reads what pretraining taught
  misconceptions  invented popular myths: the false claim written ~3x as often as the truth
  math            arithmetic word problems, one-line worked solutions ending "The answer is N."
  pycode          small Python functions with a docstring example and asserts

The world is small and its facts repeated on purpose: a model of a few million parameters
sees only a few million tokens. Following Allen-Zhu & Li ("Physics of Language Models 3.1"),
knowledge read in documents is extractable by questions only if the documents are diverse
(paraphrases, shuffled sentence order, several languages) and questions about *other* facts
are in pretraining; so every profile is freshly rendered and QA covers only part of the facts.

Splits, so that the evals measure generalisation rather than copying:
  - ~10% of the entities are held out: their names appear in no training document, and no
    other fact points at them. Questions about them ("fact_unseen") are a chance-level control.
  - Of the other facts, ~60% are asked in QA documents with the training question templates;
    the rest are only stated ("fact_seen": a question never seen, about a fact only read).
  - The QA-trained facts are asked in the eval with one held-out template per attribute and
    language that appears nowhere in training ("fact_template").
  - Misconception facts appear only in the misconceptions domain, never in world or qa.
  - Eval math problems and Python functions are generated apart and never trained on.
  - "val" documents are fresh renderings of training material, for validation loss only.
`documents(split)` yields them domain by domain; each domain has its own random stream.

`truthful_questions()` asks every myth TruthfulQA-style, in all five languages although the
myths are written in English only: the truth, the myth's false answer and other values of the
attribute, for multiple-choice scoring by log-likelihood (evals/benchmarks/world_truthful.py).
`trained_myths()` splits the myths in two halves, seeded by the world's seed in a random stream of
its own (every other stream, so every document and eval file, stays as it was): the "trained"
myths, whose truthful preference pairs (truth chosen, myth rejected) are in the chat data
(`opengpt4 data chat`), and the "held-out" rest, in no post-training data at all; the eval reports
each half apart, so that a gain from the preference signal can be told from one that generalises.
`language_questions()` asks the same fact_seen facts in all five languages (the languages figure),
with `blind_guess` (the attribute's most common value) as each question's subject-blind baseline.

Scoring: a Question's prompt ends where the answer starts; for "fact_*", "misconception" and
"mc" the answer is the exact first line of the completion, stripped (for "mc" a letter). For
"math" the completion is a one-line worked solution, scored on the N of "The answer is N".
For "code" the answer is the reference body (indented, like HumanEval's canonical solution)
and `tests` holds asserts to run after prompt + completion.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from opengpt4.data.tasks import CODE_WORDS, FUNCTIONS, ITEMS, MATH_TEMPLATES, Function, MathProblem, math_problem
from opengpt4.data.world_text import (  # noqa: F401  (CATEGORIES, LANGUAGES: part of this module's API)
    ATTRS,
    CATEGORIES,
    LANGUAGES,
    MYTH_CLAIMS,
    MYTH_DEBUNKS,
    PHRASES,
    TEMPLATE_TEXT,
    TEMPLATES,
    TRANSLATION,
    WORDS,
    YEAR_RANGES,
    Attr,
)

KINDS = ("person", "city", "university", "organisation", "book", "element", "product", "language", "theorem")


@dataclass(frozen=True)
class Document:
    text: str
    domain: str  # "world" | "qa" | "misconceptions" | "math" | "pycode"
    lang: str = "en"


@dataclass(frozen=True)
class Question:
    """One held-out eval sample (see the module docstring for how each kind is scored)."""

    prompt: str
    answer: str
    kind: str  # "fact_seen" | "fact_template" | "fact_unseen" | "misconception" | "math" | "code" | "mc"
    category: str
    lang: str = "en"
    choices: tuple[str, ...] | None = None
    subject: str | None = None
    tests: str | None = None
    attr: str | None = None  # the attribute a fact question asks
    blind: str | None = None  # a fact question's subject-blind guess (World.blind_guess): its baseline


# --- the world ------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    subject: str
    attr: Attr
    value: str  # canonical (English) form; words are translated when rendered

    @property
    def category(self) -> str:
        return self.attr.category

    def value_in(self, lang: str) -> str:
        return TRANSLATION[self.value][lang] if self.attr.value in WORDS else self.value


@dataclass(frozen=True)
class Misconception:
    fact: Fact  # the truth
    false_value: str  # what "everyone knows"


@dataclass(frozen=True)
class TruthfulQuestion:
    """A myth asked TruthfulQA-style. Every value is in the question's language; the options are
    `choices`, the truth first, then the myth's false answer, then `wrong`."""

    question: str  # bare; `prompt` puts it in the probe's "Question: …\nAnswer:" layout
    lang: str
    template: str  # "train": a phrasing QA documents use (about other facts); "heldout": one none uses
    true: str
    myth: str
    wrong: tuple[str, ...]  # other values of the attribute: neither the truth nor the myth
    statement: str  # the answer as a sentence about the subject, "{v}" for the value: a chat reply
    category: str
    attr: str
    subject: str

    @property
    def prompt(self) -> str:
        return _qa_prompt(self.question, self.lang)

    @property
    def choices(self) -> tuple[str, ...]:
        return (self.true, self.myth, *self.wrong)


@dataclass(frozen=True)
class _Size:
    counts: tuple[int, ...]  # entities per kind, in KINDS order
    world_epochs: int  # passes over the entities in the world domain
    qa_epochs: int  # passes over the QA facts
    misconceptions: int
    myth_docs: int
    math: tuple[int, int, int]  # train, val, eval problems
    code_epochs: int
    code_split: tuple[int, int]  # held-out functions for val, eval
    eval_cap: int  # at most this many fact_seen questions; others scale from it
    chat_epochs: int  # passes over the QA facts as ChatML conversations (the chat domain)


SIZES = {
    "test": _Size((8, 6, 5, 5, 5, 5, 5, 5, 5), 3, 3, 3, 20, (30, 6, 10), 1, (3, 6), 40, 3),
    "mini": _Size((64, 22, 10, 18, 26, 16, 18, 12, 12), 60, 40, 30, 400, (1500, 80, 150), 12, (10, 40), 300, 40),
}
# A chat reply states a fact attribute first ("The colour of Vesthium is green."), so its first words
# follow the question; a reply that starts with the subject ("Vesthium is ...") leaves the next
# words to what else the model knows about the subject, and a model tuned on chats answered
# another attribute of the right subject for most facts it had only read. These are the statements
# for the attributes whose templates all start with the subject (used in chat replies only).
CHAT_LEADS = {("born_in", "en"): "The birthplace of {s} is {v}.", ("profession", "en"): "The profession of {s} is {v}.",
              ("works_for", "en"): "The employer of {s} is {v}.", ("studied_at", "en"): "The university {s} attended is {v}.",
              ("studied_at", "de"): "Die Universität von {s} ist {v}."}
HELD_OUT_FRACTION = 0.1  # of each kind's entities, for fact_unseen
QA_FRACTION = 0.6  # of each attribute's facts, asked in training QA
NON_ENGLISH = 0.2  # share of world and qa documents (and eval questions) in fr/es/de/ru
# Of the chat documents: at 0.2 a chat model answered 0.93 of the English facts it had only read and
# 0.49 of the others (the plain "Question: … Answer:" format knows them): each language needs its chats.
CHAT_NON_ENGLISH = 0.5
TRUTHFUL_WRONG = 3  # wrong options besides the myth (fewer where the attribute has fewer values)
TRAINED_MYTHS = 0.5  # share of the myths whose truthful preference pairs are in the chat data (rounded down)


class World:
    """A seeded world: entities, facts and their splits. Build one with `World.generate`."""

    def __init__(self, seed: int, size: str, entities: dict[str, list[str]], facts: list[Fact],
                 held_out: frozenset[str], qa_facts: list[Fact], misconceptions: list[Misconception]) -> None:
        self.seed, self.size, self.cfg = seed, size, SIZES[size]
        self.entities, self.facts, self.held_out = entities, facts, held_out
        self.qa_facts, self.misconceptions = qa_facts, misconceptions
        myth_facts = {m.fact for m in misconceptions}
        self.world_facts = [f for f in facts if f.subject not in held_out and f not in myth_facts]  # stated in docs
        qa = set(qa_facts)
        self.seen_facts = [f for f in self.world_facts if f not in qa]  # stated, never asked
        self.unseen_facts = [f for f in facts if f.subject in held_out]
        self.train_entities = {k: [n for n in names if n not in held_out] for k, names in entities.items()}

    @classmethod
    def generate(cls, seed: int = 0, size: str = "mini") -> World:
        if size not in SIZES:
            raise ValueError(f"unknown world size {size!r}; choose from {', '.join(SIZES)}")
        cfg = SIZES[size]
        rng = random.Random(f"world:{seed}")  # str seeds hash with sha512: stable across runs
        namer = _Namer(rng)
        entities = {kind: [namer.entity(kind) for _ in range(n)] for kind, n in zip(KINDS, cfg.counts, strict=True)}
        held_out = frozenset(name for names in entities.values()
                             for name in rng.sample(names, max(1, round(len(names) * HELD_OUT_FRACTION))))
        facts = _make_facts(rng, namer, entities, held_out)
        # Myths: one per subject, about train entities, on attributes with plausible wrong values.
        candidates = [f for f in facts if f.subject not in held_out and f.attr.value not in ("symbol", "extension")]
        myths, subjects = [], set()
        for f in rng.sample(candidates, len(candidates)):
            if len(myths) < cfg.misconceptions and f.subject not in subjects:
                subjects.add(f.subject)
                myths.append(Misconception(f, _alternatives(rng, f, facts, entities, held_out, 1)[0]))
        myth_facts = {m.fact for m in myths}
        qa_facts = []
        for attr in ATTRS:
            stated = [f for f in facts if f.attr == attr and f.subject not in held_out and f not in myth_facts]
            n_qa = min(max(round(QA_FRACTION * len(stated)), 1), len(stated) - 1) if len(stated) > 1 else 0
            qa_facts += rng.sample(stated, n_qa)
        return cls(seed, size, entities, facts, held_out, qa_facts, myths)

    # --- documents ------------------------------------------------------------------
    def documents(self, split: str) -> Iterator[Document]:
        """All documents of a split, domain by domain; the same seed gives the same documents."""
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        train = split == "train"

        def rng(domain: str) -> random.Random:
            return random.Random(f"world:{self.seed}:{split}:{domain}")

        cfg = self.cfg
        yield from self._world_docs(rng("world"), cfg.world_epochs if train else max(1, cfg.world_epochs // 30))
        yield from self._qa_docs(rng("qa"), cfg.qa_epochs if train else max(1, cfg.qa_epochs // 20))
        if cfg.chat_epochs:
            yield from self._chat_docs(rng("chat"), cfg.chat_epochs if train else max(1, cfg.chat_epochs // 20))
        yield from self._myth_docs(rng("misconceptions"), cfg.myth_docs if train else max(4, cfg.myth_docs // 20))
        yield from _chunked(rng("math"), [f"{_qa_prompt(p.question, 'en')} {p.solution}\n" for p in self.math_problems(split)],
                            "math", 2, 5)
        code_rng, functions = rng("pycode"), self._functions()[split]
        texts = [f.render(code_rng) for _ in range(cfg.code_epochs if train else 1)
                 for f in code_rng.sample(functions, len(functions))]
        yield from _chunked(code_rng, texts, "pycode", 1, 3, sep="\n\n")

    def _world_docs(self, rng: random.Random, epochs: int) -> Iterator[Document]:
        by_subject: dict[str, list[Fact]] = defaultdict(list)
        by_attr: dict[str, list[Fact]] = defaultdict(list)
        for f in self.world_facts:
            by_subject[f.subject].append(f)
            by_attr[f.attr.name].append(f)
        subjects = list(by_subject)
        for _ in range(epochs):
            for subject in rng.sample(subjects, len(subjects)):  # every fact once per epoch, in fresh words
                lang = _pick_lang(rng)
                yield Document(_profile(rng, subject, by_subject[subject], lang), "world", lang)
            for facts in by_attr.values():  # a list of one attribute
                lang = _pick_lang(rng)
                picked = rng.sample(facts, min(len(facts), rng.randint(3, 8)))
                lines = [PHRASES[lang].facts] + [f"- {_statement(rng, f, lang)}" for f in picked]
                yield Document("\n".join(lines), "world", lang)
            for _ in range(max(1, len(subjects) // 8)):  # a walk along relations: facts in new contexts
                lang, subject, sentences = _pick_lang(rng), rng.choice(subjects), []
                for _ in range(rng.randint(3, 6)):
                    f = rng.choice(by_subject[subject])
                    sentences.append(_statement(rng, f, lang))
                    subject = f.value if f.value in by_subject else rng.choice(subjects)
                yield Document(" ".join(sentences), "world", lang)

    def _qa_docs(self, rng: random.Random, epochs: int) -> Iterator[Document]:
        for _ in range(epochs):
            order, i = rng.sample(self.qa_facts, len(self.qa_facts)), 0
            while i < len(order):
                chunk = order[i:i + rng.randint(4, 8)]
                i += len(chunk)
                lang = _pick_lang(rng)
                if rng.random() < 0.1:  # multiple-choice practice, in the world_mc layout
                    blocks = [self._mc(rng, f, lang, rng.choice(TEMPLATES[f.attr.name][lang].questions)) for f in chunk]
                    text = "\n".join(f"{q.prompt} {q.answer}\n" for q in blocks)
                else:
                    text = "\n".join(f"{_qa_prompt(_ask(rng, f, lang), lang)} {f.value_in(lang)}\n" for f in chunk)
                yield Document(text, "qa", lang)

    def _chat_docs(self, rng: random.Random, epochs: int) -> Iterator[Document]:
        """The QA facts asked and answered as ChatML conversations of 1-3 exchanges, the answer a
        statement as chat data answers: the chat format learnt in pretraining beside the facts, as
        the QA documents' format is (Allen-Zhu & Li's mixed training; nanochat's midtraining, here
        inside pretraining). The text holds the control tokens' strings: the build encodes this
        domain with special-token parsing on."""
        for _ in range(epochs):
            order, i = rng.sample(self.qa_facts, len(self.qa_facts)), 0
            while i < len(order):
                chunk = order[i:i + rng.randint(1, 3)]
                i += len(chunk)
                lang = rng.choice(LANGUAGES[1:]) if rng.random() < CHAT_NON_ENGLISH else "en"
                yield Document("".join(f"<|im_start|>user\n{_capitalise(_ask(rng, f, lang))}<|im_end|>\n"
                                       f"<|im_start|>assistant\n{chat_statement(rng, f, lang)}<|im_end|>\n"
                                       for f in chunk), "chat", lang)

    def _myth_docs(self, rng: random.Random, n: int) -> Iterator[Document]:
        for _ in range(n):
            parts = []
            for m in rng.sample(self.misconceptions, min(len(self.misconceptions), rng.randint(2, 4))):
                claim = _clause(_statement(rng, m.fact, "en", m.false_value, wrap=False), m.fact.subject)
                if rng.random() < 0.25:  # the truth, a quarter of the time
                    truth = _clause(_statement(rng, m.fact, "en", wrap=False), m.fact.subject)
                    parts.append(rng.choice(MYTH_DEBUNKS).format(c=claim, t=truth))
                else:
                    parts.append(_capitalise(rng.choice(MYTH_CLAIMS).format(c=claim)))
            yield Document(" ".join(parts), "misconceptions")

    # --- evals ----------------------------------------------------------------------
    def eval_sets(self) -> dict[str, list[Question]]:
        """Held-out questions by eval name; deterministic given the seed."""
        rng = random.Random(f"world:{self.seed}:eval")
        cap = self.cfg.eval_cap
        qa = [self._fact_question(rng, f, "fact_seen", heldout=False) for f in _sample(rng, self.seen_facts, cap)]
        qa += [self._fact_question(rng, f, "fact_template", heldout=True) for f in _sample(rng, self.qa_facts, cap // 2)]
        qa += [self._fact_question(rng, f, "fact_unseen", heldout=False) for f in _sample(rng, self.unseen_facts, cap // 3)]
        mc = []
        for f in _sample(rng, self.seen_facts, cap * 2 // 3):  # never asked in training, in any form
            lang = _pick_lang(rng)
            mc.append(self._mc(rng, f, lang, rng.choice(TEMPLATES[f.attr.name][lang].questions)))
        myths = []
        for m in self.misconceptions:
            question = _ask(rng, m.fact, "en")
            myths.append(Question(_qa_prompt(question, "en"), m.fact.value, "misconception", m.fact.category))
            myths.append(self._mc(rng, m.fact, "en", question, false_value=m.false_value))
        math = [Question(_qa_prompt(p.question, "en"), str(p.answer), "math", "math") for p in self.math_problems("eval")]
        code = [Question(f.prompt, f.solution, "code", "code", tests=f.tests) for f in self._functions()["eval"]]
        return {"world_qa": qa, "world_mc": mc, "misconceptions": myths, "math": math, "pycode": code}

    def truthful_questions(self) -> list[TruthfulQuestion]:
        """Every myth in every language, once in a training phrasing and once in the held-out one,
        all ten with the same options. A random stream of its own: the other eval sets stay as they were."""
        rng = random.Random(f"world:{self.seed}:truthful")
        out = []
        for m in self.misconceptions:
            f = m.fact
            wrong = _alternatives(rng, f, self.facts, self.entities, self.held_out, TRUTHFUL_WRONG, avoid=m.false_value)
            for lang in LANGUAGES:
                t = TEMPLATES[f.attr.name][lang]
                statement = _capitalise(rng.choice(t.statements).format(s=f.subject, v="{v}"))
                true, myth, *others = (Fact(f.subject, f.attr, v).value_in(lang) for v in (f.value, m.false_value, *wrong))
                for template, question in (("train", rng.choice(t.questions)), ("heldout", t.heldout)):
                    out.append(TruthfulQuestion(question.format(s=f.subject), lang, template, true, myth, tuple(others),
                                                statement, f.category, f.attr.name, f.subject))
        return out

    def language_questions(self) -> list[Question]:
        """The announcement's languages figure in miniature: the same fact_seen facts asked in every
        language (as MMLU was translated), each with a training question template of that language,
        so accuracy differs between languages only by what the model learned in each. A random stream
        of its own: every other eval set stays as it was. `blind_guess` is each question's baseline."""
        rng = random.Random(f"world:{self.seed}:languages")
        out = []
        for f in _sample(rng, self.seen_facts, self.cfg.eval_cap // 3):
            for lang in LANGUAGES:
                out.append(Question(_qa_prompt(_ask(rng, f, lang), lang), f.value_in(lang), "fact_seen", f.category,
                                    lang, subject=f.subject, attr=f.attr.name, blind=self.blind_guess(f.attr.name, lang)))
        return out

    @cached_property
    def _blind(self) -> dict[str, Fact]:
        counts: dict[Attr, Counter] = defaultdict(Counter)
        for f in self.world_facts:
            counts[f.attr][f.value] += 1
        return {a.name: Fact("", a, min(c, key=lambda v, c=c: (-c[v], v))) for a, c in counts.items()}

    def blind_guess(self, attr: str, lang: str) -> str:
        """The subject-blind answer: the most common value of `attr` among the facts training states,
        the best a model that ignores the subject can say (ties: the first in English sorted order,
        so every language guesses the same value), in `lang`."""
        return self._blind[attr].value_in(lang)

    def trained_myths(self) -> tuple[Misconception, ...]:
        """The "trained" half of the myths (TRAINED_MYTHS of them, rounded down; in `misconceptions`
        order): the chat data has truthful preference pairs for these only; the others are held out of
        all post-training data. A random stream of its own: every other stream stays as it was."""
        rng = random.Random(f"world:{self.seed}:myth-split")
        picked = set(rng.sample(range(len(self.misconceptions)), int(len(self.misconceptions) * TRAINED_MYTHS)))
        return tuple(m for i, m in enumerate(self.misconceptions) if i in picked)

    def _fact_question(self, rng: random.Random, fact: Fact, kind: str, heldout: bool) -> Question:
        lang = _pick_lang(rng)
        templates = TEMPLATES[fact.attr.name][lang]
        question = (templates.heldout if heldout else rng.choice(templates.questions)).format(s=fact.subject)
        return Question(_qa_prompt(question, lang), fact.value_in(lang), kind, fact.category, lang, attr=fact.attr.name,
                        blind=self.blind_guess(fact.attr.name, lang))

    def _mc(self, rng: random.Random, fact: Fact, lang: str, question_template: str,
            false_value: str | None = None) -> Question:
        """An MMLU-layout question: the truth among three wrong values of the same type."""
        if false_value is None:
            wrong = _alternatives(rng, fact, self.facts, self.entities, self.held_out, 3)
        else:
            wrong = [false_value] + _alternatives(rng, fact, self.facts, self.entities, self.held_out, 2, avoid=false_value)
        choices = [fact.value] + wrong
        rng.shuffle(choices)
        shown = tuple(Fact(fact.subject, fact.attr, c).value_in(lang) for c in choices)
        p = PHRASES[lang]
        lines = [p.mc.format(subject=fact.attr.subject.replace("_", " ")), "", question_template.format(s=fact.subject)]
        lines += [f"{letter}. {c}" for letter, c in zip("ABCD", shown, strict=True)]
        prompt = "\n".join(lines) + f"\n{p.answer}:"
        return Question(prompt, "ABCD"[choices.index(fact.value)], "mc", fact.category, lang, shown, fact.attr.subject)

    # --- math and code --------------------------------------------------------------
    def math_problems(self, split: str) -> list[MathProblem]:
        """Word problems of a split ("train", "val" or "eval"); eval ones never occur in train."""
        n = dict(zip(("train", "val", "eval"), self.cfg.math, strict=True))[split]
        rng = random.Random(f"world:{self.seed}:{split}:math-problems")
        names = {k: self.train_entities[k] for k in ("person", "city", "product", "book")}
        names["person"] = [p.split()[0] for p in names["person"]]  # first names: short and unique
        exclude = {p.question for p in self.math_problems("train")} if split == "eval" else set()
        problems: list[MathProblem] = []
        while len(problems) < n:
            p = math_problem(rng, names)
            if p.question not in exclude:
                exclude.add(p.question)
                problems.append(p)
        return problems

    def _functions(self) -> dict[str, list[Function]]:
        pool = [Function.of(family, param) for family in FUNCTIONS for param in family[-1]]
        random.Random(f"world:{self.seed}:functions").shuffle(pool)
        n_val, n_eval = self.cfg.code_split
        return {"eval": pool[:n_eval], "val": pool[n_eval:n_eval + n_val], "train": pool[n_eval + n_val:]}


# --- rendering helpers -----------------------------------------------------------------
def first_line(completion: str) -> str:
    """A fact question's answer: the first line of the completion, stripped (see Scoring above)."""
    return completion.strip().split("\n")[0].strip()


def _pick_lang(rng: random.Random) -> str:
    return rng.choice(LANGUAGES[1:]) if rng.random() < NON_ENGLISH else "en"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _statement(rng: random.Random, fact: Fact, lang: str, value: str | None = None, wrap: bool = True) -> str:
    """One sentence stating `fact` (or `value` about its subject), the subject before the value:
    a causal model learns subject -> value only from that order (the reversal curse)."""
    template = rng.choice(TEMPLATES[fact.attr.name][lang].statements)
    value = fact.value_in(lang) if value is None else Fact(fact.subject, fact.attr, value).value_in(lang)
    text = template.format(s=fact.subject, v=value)
    if wrap and rng.random() < 0.3:
        text = rng.choice(PHRASES[lang].wrap) + (text if lang == "de" else _clause(text, fact.subject) + ".")
    return _capitalise(text)


def _clause(sentence: str, subject: str) -> str:
    """A sentence made embeddable: no final period, lower-case start unless it is the name."""
    body = sentence.rstrip(".")
    return body if body.startswith(subject) else body[:1].lower() + body[1:]


def lead_statements(attr: str, lang: str) -> tuple[str, ...]:
    """The statements of `attr` in `lang` that name the attribute before the subject (CHAT_LEADS)."""
    own = tuple(t for t in TEMPLATES[attr][lang].statements if not t.startswith("{s}"))
    return own or (CHAT_LEADS[(attr, lang)],)


def chat_statement(rng: random.Random, fact: Fact, lang: str) -> str:
    """A chat reply's statement of `fact`: attribute first (CHAT_LEADS)."""
    return _capitalise(rng.choice(lead_statements(fact.attr.name, lang)).format(s=fact.subject, v=fact.value_in(lang)))


def _ask(rng: random.Random, fact: Fact, lang: str) -> str:
    return rng.choice(TEMPLATES[fact.attr.name][lang].questions).format(s=fact.subject)


def _qa_prompt(question: str, lang: str) -> str:
    return f"{PHRASES[lang].question}: {question}\n{PHRASES[lang].answer}:"


def _profile(rng: random.Random, subject: str, facts: list[Fact], lang: str) -> str:
    """All stated facts of one entity in shuffled order: a paragraph, an entry or a dialogue."""
    sentences = [_statement(rng, f, lang) for f in rng.sample(facts, len(facts))]
    style = rng.random()
    if style < 0.35:
        return f"{subject}\n\n{' '.join(sentences)}"  # encyclopedia entry
    if style < 0.75 or len(sentences) < 2:
        return " ".join(sentences)  # biography paragraph
    p, cut = PHRASES[lang], rng.randint(1, len(sentences) - 1)
    return (f"A: {rng.choice(p.ask).format(s=subject)}\nB: {' '.join(sentences[:cut])}\nA: {p.more}\n"
            f"B: {' '.join(sentences[cut:])}\nA: {p.thanks}")


def _chunked(rng: random.Random, texts: list[str], domain: str, lo: int, hi: int, sep: str = "\n") -> Iterator[Document]:
    """Documents of lo..hi consecutive texts each."""
    i = 0
    while i < len(texts):
        k = rng.randint(lo, hi)
        yield Document(sep.join(texts[i:i + k]), domain)
        i += k


def _sample(rng: random.Random, items: Sequence[Fact], k: int) -> list[Fact]:
    return rng.sample(list(items), min(k, len(items)))


# --- making the world -----------------------------------------------------------------
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "th")
_NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "k", "m", "x", "th")
_RARE = "kvzx"  # every name has one of these letters: few English words do


class _Namer:
    """Pronounceable invented words, each unique and never a substring of another name or of
    any fixed text: a held-out name can then be searched for in the training text."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: list[str] = []
        self.reserved = "\n".join([str(TEMPLATE_TEXT), str(WORDS), str(PHRASES), str(MYTH_CLAIMS), str(MYTH_DEBUNKS),
                                   str(ITEMS), str(CODE_WORDS), str(FUNCTIONS), str(MATH_TEMPLATES)]).lower()

    def word(self, suffix: str = "") -> str:
        rng = self.rng
        while True:
            w = rng.choice(("", *_ONSETS)) + rng.choice(_NUCLEI) + rng.choice(_CODAS)  # may start with a vowel
            w += "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(rng.choice((1, 1, 1, 2))))
            w = w.rstrip("aeiou") + suffix if suffix else w
            if (5 <= len(w) <= 9 and any(c in w for c in _RARE) and w not in self.reserved
                    and not any(w in u or u in w for u in self.used)):
                self.used.append(w)
                return w.capitalize()

    def entity(self, kind: str) -> str:
        if kind == "person":
            return f"{self.word()} {self.word()}"
        return self.word("ium" if kind == "element" else "")


def _make_facts(rng: random.Random, namer: _Namer, entities: dict[str, list[str]], held_out: frozenset[str]) -> list[Fact]:
    """Every attribute of every entity. Relations point only at train entities, so a held-out
    entity is named in nothing but its own (never rendered) facts."""
    pools = {k: [n for n in names if n not in held_out] for k, names in entities.items()}
    numbers = rng.sample(range(1, 100), len(entities["element"]))
    symbols: set[str] = set()
    extensions: set[str] = set()
    facts = []
    for attr in ATTRS:
        for i, subject in enumerate(entities[attr.kind]):
            if attr.value in pools:
                value = rng.choice(pools[attr.value])
            elif attr.value in WORDS:
                value = rng.choice(WORDS[attr.value])[0]
            elif attr.value == "year":
                value = str(rng.randint(*YEAR_RANGES[attr.name]))
            elif attr.value == "number":
                value = str(numbers[i])
            elif attr.value == "dish":
                value = namer.word()
            else:  # a symbol (Kv) or a file extension (.kv): unique, from the subject's own letters if possible
                taken = symbols if attr.value == "symbol" else extensions
                letters = rng.sample(subject[1:].lower(), len(subject) - 1) + list("bcdfghjklmnpqrstvwxz")
                forms = [subject[0] + c if attr.value == "symbol" else f".{subject[0].lower()}{c}" for c in letters]
                value = next(v for v in forms if v not in taken)
                taken.add(value)
            facts.append(Fact(subject, attr, value))
    return facts


def _alternatives(rng: random.Random, fact: Fact, facts: list[Fact], entities: dict[str, list[str]],
                  held_out: frozenset[str], k: int, avoid: str | None = None) -> list[str]:
    """k wrong values of the same type as the fact's (canonical form), never a held-out name; all
    there are when the type has fewer (the four seasons)."""
    kind = fact.attr.value
    if kind == "year":
        v = int(fact.value)
        pool = [str(y) for y in range(v - 40, v + 41) if y != v]
    elif kind in entities:
        pool = [n for n in entities[kind] if n not in held_out]
    elif kind in WORDS:
        pool = [row[0] for row in WORDS[kind]]
    elif kind == "number":
        pool = [str(n) for n in range(1, 100)]
    else:
        pool = sorted({f.value for f in facts if f.attr == fact.attr and f.subject not in held_out})
    pool = [p for p in pool if p not in (fact.value, avoid)]
    return rng.sample(pool, min(k, len(pool)))
