"""The synthetic world: determinism, coverage, the train / held-out splits, and the budgets."""

import dataclasses
import re
import time
from collections import Counter

import pytest

from opengpt4.data.world import ATTRS, CATEGORIES, LANGUAGES, PHRASES, TEMPLATES, Fact, World

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(0, "test")


@pytest.fixture(scope="module")
def train_docs(world):
    return list(world.documents("train"))


@pytest.fixture(scope="module")
def train_text(train_docs) -> str:
    return "\n\n".join(d.text for d in train_docs)


@pytest.fixture(scope="module")
def sentences(train_text) -> list[str]:
    return SENTENCE_END.split(train_text)


@pytest.fixture(scope="module")
def evals(world):
    return world.eval_sets()


@pytest.fixture(scope="module")
def fact_of(world):
    """Question text (any template, any language) -> the fact it asks about."""
    index = {}
    for f in world.facts:
        for lang in LANGUAGES:
            t = TEMPLATES[f.attr.name][lang]
            for q in (*t.questions, t.heldout):
                index[q.format(s=f.subject)] = f
    return index


def question_line(prompt: str) -> str:
    first = prompt.split("\n")[0]
    return first.split(": ", 1)[1]


def mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def test_templates_cover_every_attribute_and_language():
    assert {a.name for a in ATTRS} == set(TEMPLATES) and {a.category for a in ATTRS} == set(CATEGORIES)
    for attr, by_lang in TEMPLATES.items():
        assert set(by_lang) == set(LANGUAGES), attr
        # every language as many phrasings as English: the languages figure compares like with like
        assert len({(len(t.statements), len(t.questions)) for t in by_lang.values()}) == 1, attr
        for t in by_lang.values():
            assert len(t.statements) >= 3 and len(t.questions) >= 3 and t.heldout not in t.questions
            assert all(x.index("{s}") < x.index("{v}") for x in t.statements)  # subject first: see _statement
            assert all("{s}" in x and "{v}" in x for x in t.statements)
            assert all("{s}" in x and "{v}" not in x for x in (*t.questions, t.heldout))


def test_same_seed_same_world_other_seed_other_names(world, train_docs, evals):
    again = World.generate(0, "test")
    assert list(again.documents("train")) == train_docs
    assert list(again.documents("val")) == list(world.documents("val"))
    assert again.eval_sets() == evals
    other = World.generate(1, "test")
    assert set(other.entities["person"]).isdisjoint(world.entities["person"])
    assert list(other.documents("train"))[:50] != train_docs[:50]


def test_every_category_has_facts_and_questions(world, evals):
    assert {f.category for f in world.facts} == set(CATEGORIES)
    assert {q.category for q in evals["world_qa"]} == set(CATEGORIES)
    assert {q.category for q in evals["world_qa"] if q.kind == "fact_seen"} == set(CATEGORIES)
    assert {q.kind for q in evals["world_qa"]} == {"fact_seen", "fact_template", "fact_unseen"}


def test_five_languages_a_minority_not_english(train_docs, evals):
    world_docs = [d for d in train_docs if d.domain == "world"]
    by_lang = Counter(d.lang for d in world_docs)
    assert set(by_lang) == set(LANGUAGES)
    assert 0.15 <= 1 - by_lang["en"] / len(world_docs) <= 0.25
    assert all(re.search("[а-яё]", d.text) for d in train_docs if d.lang == "ru")
    assert {d.lang for d in train_docs if d.domain == "qa"} == set(LANGUAGES)
    assert {q.lang for q in evals["world_qa"]} == set(LANGUAGES)


def test_answers_are_short_and_prompts_end_at_the_answer(evals):
    for name, questions in evals.items():
        assert questions, name
        for q in questions:
            if q.kind == "code":
                assert q.answer.startswith("    return ") and q.prompt.startswith("def ")
                continue
            assert q.answer and q.answer == q.answer.strip() and "\n" not in q.answer, q
            assert len(q.answer) <= 30 and len(q.answer.split()) <= 3, q
            assert q.prompt.endswith(f"\n{PHRASES[q.lang].answer}:"), q.prompt
            assert q.category in CATEGORIES


def test_fact_seen_was_read_but_never_asked(world, evals, train_text, sentences, fact_of):
    seen = [q for q in evals["world_qa"] if q.kind == "fact_seen"]
    qa = set(world.qa_facts)
    for q in seen:
        f = fact_of[question_line(q.prompt)]
        assert f not in qa and f.value_in(q.lang) == q.answer
        assert question_line(q.prompt) not in train_text and q.prompt not in train_text
        assert any(f.subject in s and mentions(s, f.value) for s in sentences), f  # stated in some training sentence


def test_language_questions_ask_the_same_seen_facts_in_every_language(world, train_text, fact_of):
    questions = world.language_questions()
    assert questions == World.generate(0, "test").language_questions()  # seeded
    assert Counter(q.lang for q in questions) == {lang: len(questions) // len(LANGUAGES) for lang in LANGUAGES}
    facts_by_lang = {lang: [fact_of[question_line(q.prompt)] for q in questions if q.lang == lang]
                     for lang in LANGUAGES}
    assert len({tuple(fs) for fs in facts_by_lang.values()}) == 1  # the same facts, in the same order
    seen = set(world.seen_facts)
    for q in questions:
        f = fact_of[question_line(q.prompt)]
        assert f in seen and q.kind == "fact_seen" and q.attr == f.attr.name and q.answer == f.value_in(q.lang)
        assert question_line(q.prompt) in {t.format(s=f.subject) for t in TEMPLATES[f.attr.name][q.lang].questions}
        assert question_line(q.prompt) not in train_text  # never asked: seen facts are only stated


def test_the_blind_guess_is_the_attributes_most_common_value(world):
    for attr in ATTRS:
        counts = Counter(f.value for f in world.world_facts if f.attr == attr)
        guess = world.blind_guess(attr.name, "en")
        assert counts[guess] == max(counts.values())
        assert world.blind_guess(attr.name, "de") == Fact("x", attr, guess).value_in("de")  # translated, same value


def test_fact_template_asks_trained_facts_in_new_words(world, evals, train_text, fact_of):
    qa = set(world.qa_facts)
    for q in (q for q in evals["world_qa"] if q.kind == "fact_template"):
        f = fact_of[question_line(q.prompt)]
        assert f in qa and question_line(q.prompt) not in train_text
        asked = [t.format(s=f.subject) for lang in LANGUAGES for t in TEMPLATES[f.attr.name][lang].questions]
        assert any(a in train_text for a in asked), f
    for f in world.facts:  # held-out templates appear nowhere in training, for any entity
        for lang in LANGUAGES:
            assert TEMPLATES[f.attr.name][lang].heldout.format(s=f.subject) not in train_text


def test_fact_unseen_entities_never_named_in_training(world, evals, train_text, fact_of):
    assert world.held_out and all(kind for kind in world.entities)
    lowered = train_text.lower()
    for name in world.held_out:
        assert name not in train_text and name.lower() not in lowered
    unseen = [q for q in evals["world_qa"] if q.kind == "fact_unseen"]
    assert unseen and all(fact_of[question_line(q.prompt)].subject in world.held_out for q in unseen)


def test_multiple_choice_answer_is_the_true_value(evals, fact_of, world, train_text):
    myths = {m.fact: m.false_value for m in world.misconceptions}
    mc = evals["world_mc"] + [q for q in evals["misconceptions"] if q.kind == "mc"]
    assert len(mc) > len(world.misconceptions)
    for q in mc:
        lines = q.prompt.split("\n")
        f = fact_of[lines[2]]
        assert q.answer in "ABCD" and len(q.answer) == 1
        assert len(set(q.choices)) == 4 and q.choices["ABCD".index(q.answer)] == f.value_in(q.lang)
        assert lines[3:7] == [f"{letter}. {c}" for letter, c in zip("ABCD", q.choices, strict=True)]
        assert q.subject and q.subject.replace("_", " ") in lines[0]
        assert lines[2] not in train_text  # asked in no training document, in any form
        if f in myths:
            assert myths[f] in q.choices


def test_misconceptions_are_stated_more_often_than_the_truth(world, evals, sentences):
    for m in world.misconceptions:
        about = [s for s in sentences if m.fact.subject in s]
        false, true = sum(mentions(s, m.false_value) for s in about), sum(mentions(s, m.fact.value) for s in about)
        assert false > true >= 1, (m, false, true)
    generative = [q for q in evals["misconceptions"] if q.kind == "misconception"]
    assert [q.answer for q in generative] == [m.fact.value for m in world.misconceptions]


def test_truthful_questions_ask_every_myth_in_five_languages_with_its_false_answer(world, train_text):
    questions = world.truthful_questions()
    assert questions == World.generate(0, "test").truthful_questions()  # seeded
    assert Counter(q.lang for q in questions) == {lang: 2 * len(world.misconceptions) for lang in LANGUAGES}
    assert Counter(q.template for q in questions) == {"train": 5 * len(world.misconceptions),
                                                       "heldout": 5 * len(world.misconceptions)}
    myths = {m.fact.subject: m for m in world.misconceptions}
    canonical = {}  # a myth's options, in English, must be the same in every language and phrasing
    for q in questions:
        m = myths[q.subject]
        t = TEMPLATES[q.attr][q.lang]
        assert q.attr == m.fact.attr.name and q.category == m.fact.category
        assert q.true == m.fact.value_in(q.lang) and q.myth == Fact(q.subject, m.fact.attr, m.false_value).value_in(q.lang)
        assert len(set(q.choices)) == len(q.choices) >= 3 and q.choices[:2] == (q.true, q.myth)
        assert q.question in ([s.format(s=q.subject) for s in t.questions] if q.template == "train"
                              else [t.heldout.format(s=q.subject)])
        assert q.question not in train_text  # no document asks about a myth, in any language or phrasing
        statements = [s.format(s=q.subject, v="{v}") for s in t.statements]
        assert q.statement in [s[:1].upper() + s[1:] for s in statements]  # the chat reply, "{v}" for the value
        if q.lang == "en":
            canonical.setdefault(q.subject, q.choices)
    for q in questions:  # translated words aside, every language offers the same values
        english = [Fact(q.subject, myths[q.subject].fact.attr, v).value_in(q.lang) for v in canonical[q.subject]]
        assert list(q.choices) == english
    mini = World.generate(0, "mini")
    assert len(mini.truthful_questions()) == 30 * 5 * 2 and len(mini.misconceptions) == 30


def test_math_solutions_are_correct_and_held_out(world, evals, train_text):
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    for split in ("train", "eval"):
        for p in world.math_problems(split):
            steps = EQUATION.findall(p.solution)
            assert steps and p.solution.endswith(f"The answer is {p.answer}.")
            for a, op, b, c in steps:
                assert ops[op](int(a), int(b)) == int(c) and (op != "/" or int(a) % int(b) == 0), p
            assert int(steps[-1][3]) == p.answer
    problems = world.math_problems("eval")
    assert [q.answer for q in evals["math"]] == [str(p.answer) for p in problems]
    assert all(p.question not in train_text for p in problems)


def test_pycode_tests_pass_on_the_reference_and_fail_on_an_empty_body(evals, train_text):
    for q in evals["pycode"]:
        assert q.kind == "code" and q.tests.count("assert ") >= 3
        exec(q.prompt + q.answer + "\n" + q.tests, {})  # our own generated code
        with pytest.raises(AssertionError):
            exec(q.prompt + "    pass\n\n" + q.tests, {})
        assert q.prompt.split("\n")[0] not in train_text  # the function itself is never trained on


def test_pycode_training_functions_run(train_docs):
    docs = [d.text for d in train_docs if d.domain == "pycode"]
    assert docs
    for text in docs:
        exec(text, {})  # every training document is a valid program whose asserts hold


def test_val_split_is_fresh_rendering_of_train_material(world, train_docs):
    val = list(world.documents("val"))
    assert {d.domain for d in val} == {d.domain for d in train_docs} == {"world", "qa", "chat", "misconceptions", "math", "pycode"}
    val_text = "\n".join(d.text for d in val if d.domain == "world")
    assert all(name not in val_text for name in world.held_out)
    with pytest.raises(ValueError, match="split"):
        next(world.documents("test"))
    with pytest.raises(ValueError, match="size"):
        World.generate(0, "huge")


def test_test_size_is_tiny_and_fast():
    t0 = time.perf_counter()
    w = World.generate(3, "test")
    n_bytes = sum(len(d.text.encode()) for split in ("train", "val") for d in w.documents(split))
    w.eval_sets()
    assert time.perf_counter() - t0 < 1.0
    assert n_bytes < 300_000


def test_mini_fits_the_training_budget():
    """The default corpus: small world, facts repeated, generated in seconds. Prints its statistics."""
    t0 = time.perf_counter()
    w = World.generate(0, "mini")
    mb: Counter = Counter()
    world_sentences = []
    for d in w.documents("train"):
        mb[d.domain] += len(d.text.encode()) / 1e6
        if d.domain == "world":
            world_sentences += SENTENCE_END.split(d.text)
    seconds = time.perf_counter() - t0
    n_entities = sum(len(v) for v in w.entities.values())
    print(f"\nmini: {n_entities} entities, {len(w.facts)} facts, {seconds:.1f} s,",
          ", ".join(f"{k} {v:.2f} MB" for k, v in sorted(mb.items())))
    assert seconds < 30
    assert 150 <= n_entities <= 250 and 600 <= len(w.facts) <= 1200
    assert 2.0 <= mb["world"] <= 4.0 and 0.6 <= mb["qa"] <= 1.5
    assert mb["misconceptions"] + mb["math"] + mb["pycode"] <= 1.5
    for f in w.world_facts[::25]:  # every fact is stated many times over
        assert sum(f.subject in s and mentions(s, f.value_in("en")) for s in world_sentences) >= 50, f


def test_chat_documents_ask_only_qa_facts_in_the_chat_templates_layout(world, train_docs, fact_of, tiny_tokenizer):
    """The chat domain: conversations whose questions ask QA-trained facts in their training phrasings
    and whose answers state them attribute first; encoded with special tokens on (as the build does),
    each is the very ids the tokenizer's chat template renders for its messages."""
    docs = [d for d in train_docs if d.domain == "chat"]
    quiet = World.generate(0, "test")
    quiet.cfg = dataclasses.replace(quiet.cfg, chat_epochs=0)
    assert [d.text for d in train_docs if d.domain != "chat"] == \
        [d.text for d in quiet.documents("train")]  # its own random stream: the other domains unchanged
    qa, asked = set(world.qa_facts), set()
    turn = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>\n<\|im_start\|>assistant\n(.*?)<\|im_end\|>\n", re.S)
    for doc in docs:
        pairs = turn.findall(doc.text)
        assert 1 <= len(pairs) <= 3 and "".join(turn.sub("", doc.text)) == ""
        messages = []
        for question, answer in pairs:
            fact = fact_of[question]
            assert fact in qa and mentions(answer, fact.value_in(doc.lang)) and not answer.startswith(fact.subject)
            assert question not in {TEMPLATES[fact.attr.name][doc.lang].heldout.format(s=fact.subject)}
            asked.add(fact)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        assert tiny_tokenizer.encode(doc.text, allow_special=True) == tiny_tokenizer.render_chat(messages).ids
    assert asked == qa  # every epoch asks every QA fact
