"""Chat data from the world: correct answers, disjoint splits, the token budget, preference pairs,
the `opengpt4 data chat` dir end to end (CLI included), and the system_constraints and
world_chat evals on the tiny model."""

import dataclasses
import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from opengpt4.data.chat.constraints import (
    CONSTRAINTS,
    END_PHRASES,
    HELDOUT_TEMPLATES,
    HELDOUT_VALUES,
    KEYWORDS,
    check,
)
from opengpt4.data.chat.conversations import (
    SYSTEM_PROMPTS,
    TOKEN_BUDGET,
    ChatWorld,
    estimate_tokens,
    heldout_constraint_samples,
    question_text,
)
from opengpt4.data.chat.text import contains
from opengpt4.data.world import LANGUAGES, World
from opengpt4.engine.generate import Engine
from opengpt4.errors import DataFileError, InvalidEvalArgument
from opengpt4.evals.api import CompletionResult
from opengpt4.evals.benchmarks.system_constraints import SystemConstraints
from opengpt4.evals.benchmarks.world_qa import WorldQA, extract, value_patterns
from opengpt4.evals.completion import EngineCompletionFn
from opengpt4.evals.runner import run_eval
from opengpt4.model.transformer import Transformer
from opengpt4.safety.graders import POLICY_LABEL, oracle_label


@pytest.fixture(scope="module")
def world():
    return World.generate(0, "test")


@pytest.fixture(scope="module")
def chat(world):
    return ChatWorld(world, 0)


@pytest.fixture(scope="module")
def samples(chat):
    """Plenty of every kind in both splits: (split, sample)."""
    out = []
    for split in ("train", "heldout"):
        rng = random.Random(split)
        for kind in ("fact", "math", "code"):
            out += [(split, getattr(chat, kind)(rng, split)) for _ in range(80)]
        for constraint in CONSTRAINTS.values():
            out += [(split, chat.constraint(rng, constraint, split)) for _ in range(25)]
    return out


def of_kind(samples, kind, split=None):
    return [s for sp, s in samples if s.meta["kind"] == kind and split in (None, sp)]


# --- answers are right ---------------------------------------------------------------------
def test_fact_answers_state_the_worlds_value_in_the_users_language(samples, world):
    values = {(f.subject, f.attr.name): f for f in world.facts}
    for s in of_kind(samples, "fact"):
        facts = [values[(s.meta["subject"], a)] for a in s.meta["attrs"]]
        for fact, reply in zip(facts, [m["content"] for m in s.messages if m["role"] == "assistant"], strict=True):
            assert contains(reply, fact.value_in(s.meta["lang"]), ignore_case=False), (reply, fact)


def test_math_solutions_compute_and_code_replies_pass_their_tests(samples, chat):
    problems = {p.question: p for split in ("train", "heldout") for p in chat.problems[split]}
    for s in of_kind(samples, "math"):
        user = next(m["content"] for m in s.messages if m["role"] == "user")
        assert s.messages[-1]["content"].endswith(f"The answer is {s.meta['ideal']}.")
        if s.meta["turns"] == 1:
            assert s.meta["ideal"] == str(problems[user].answer)
    functions = {f.name: f for split in ("train", "heldout") for f in chat.functions[split]}
    for s in of_kind(samples, "code"):
        code = s.messages[-1]["content"].removeprefix("```python\n").removesuffix("\n```")
        exec(code + "\n" + functions[s.meta["function"]].tests, {})  # noqa: S102 (our own generated code)


def test_every_constraint_reply_obeys_its_system_message_and_states_the_answer(samples):
    for s in of_kind(samples, "constraint"):
        (c,) = s.meta["constraints"]
        assert s.messages[0]["role"] == "system" and s.messages[1]["role"] == "user"
        for reply in [m["content"] for m in s.messages[2::2]]:
            assert check(c["id"], c["kwargs"], reply), (c, reply)
        if c["id"] != "opengpt4:socratic":
            assert contains(s.messages[2]["content"], s.meta["ideal"]), s.messages


def test_the_system_message_wins_when_the_user_asks_otherwise(samples):
    conflicts = [s for s in of_kind(samples, "constraint") if s.meta["conflict"]]
    kinds = {s.meta["constraints"][0]["id"] for s in conflicts}
    assert {"language:response_language", "opengpt4:socratic", "detectable_format:json_format"} <= kinds
    german_user_french_answer = [s for s in conflicts if s.meta["lang"] == "de"
                                 and s.meta["constraints"][0]["kwargs"].get("language") == "fr"]
    assert german_user_french_answer
    for s in german_user_french_answer:
        assert check("language:response_language", {"language": "fr"}, s.messages[2]["content"])


# --- splits ----------------------------------------------------------------------------------
def test_train_asks_only_facts_pretraining_asked_and_never_a_probe_question(chat, world, samples):
    assert set(chat.facts["train"]) == set(world.qa_facts)
    assert not set(chat.facts["train"]) & set(world.seen_facts)  # stated only: the probe's fact_seen
    trained = {(f.subject, f.attr.name) for f in chat.facts["train"]}
    for split, s in samples:
        if s.meta["kind"] == "fact":
            assert ((s.meta["subject"], s.meta["attrs"][0]) in trained) == (split == "train"), (split, s.meta)
    probe_questions = {question_text(q.prompt, q.lang) for q in world.eval_sets()["world_qa"]}
    asked = {m["content"] for sp, s in samples if sp == "train" for m in s.messages if m["role"] == "user"}
    assert not asked & probe_questions
    assert not chat.subjects["train"] & chat.subjects["heldout"]


def test_heldout_phrasings_and_values_never_in_train(samples):
    held_out_ends = END_PHRASES[-HELDOUT_VALUES["end_phrase"]:]
    held_out_keywords = KEYWORDS[-HELDOUT_VALUES["keywords"]:]
    for split, s in samples:
        if s.meta["kind"] == "constraint":
            (c,) = s.meta["constraints"]
            heldout = s.meta["template"] >= len(CONSTRAINTS[c["id"]].templates) - HELDOUT_TEMPLATES
            assert heldout == (split == "heldout"), (split, s.meta)
            if "end_phrase" in c["kwargs"]:
                assert (c["kwargs"]["end_phrase"] in held_out_ends) == (split == "heldout")
            for keyword in c["kwargs"].get("keywords", []):
                assert (keyword in held_out_keywords) == (split == "heldout")
        elif s.messages[0]["role"] == "system":
            assert (s.messages[0]["content"] == SYSTEM_PROMPTS[-1]) == (split == "heldout")
    problems = {split: {s.messages[-2]["content"] for sp, s in samples if sp == split and s.meta["kind"] == "math"
                        and s.meta["turns"] == 1} for split in ("train", "heldout")}
    assert not problems["train"] & problems["heldout"]


def test_every_constraint_type_is_trained_and_held_out(samples):
    for split in ("train", "heldout"):
        assert {s.meta["constraints"][0]["id"] for s in of_kind(samples, "constraint", split)} == set(CONSTRAINTS)


# --- size and pairs --------------------------------------------------------------------------
def test_conversations_fit_the_token_budget(samples, tiny_tokenizer):
    for _, s in samples:
        assert estimate_tokens(s.messages) <= TOKEN_BUDGET
    # the estimate grows with the text like a real tokenizer's count does
    short, long = of_kind(samples, "fact")[0].messages, of_kind(samples, "math")[0].messages
    assert (estimate_tokens(short) < estimate_tokens(long)) == (
        len(tiny_tokenizer.render_chat(short).ids) < len(tiny_tokenizer.render_chat(long).ids))


def test_preference_pairs_reject_what_they_say(samples):
    reasons = set()
    for _, s in samples:
        for pair in s.pairs():
            chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
            reason = pair["meta"]["rejected_because"]
            reasons.add((s.meta["kind"], reason))
            assert chosen != rejected and pair["prompt"][-1]["role"] == "user"
            if s.meta["kind"] == "constraint":
                (c,) = s.meta["constraints"]
                assert check(c["id"], c["kwargs"], rejected) == (reason != "broken_constraint")
            if reason == "wrong_fact":
                assert not contains(rejected, s.meta["ideal"]) and contains(chosen, s.meta["ideal"])
            if reason == "wrong_answer":  # the result (the last number) changes; an operand may equal it
                assert re.findall(r"\d+", chosen)[-1] == s.meta["ideal"] != re.findall(r"\d+", rejected)[-1]
    assert reasons >= {("fact", "wrong_fact"), ("math", "wrong_answer"), ("code", "wrong_code"),
                       ("constraint", "broken_constraint"), ("constraint", "wrong_fact")}


def test_same_seed_same_conversations(world):
    a, b = ChatWorld(world, 0), ChatWorld(world, 0)
    for kind in ("fact", "math", "code"):
        assert getattr(a, kind)(random.Random(1), "train").row() == getattr(b, kind)(random.Random(1), "train").row()
    assert heldout_constraint_samples(world, 0, 2) == heldout_constraint_samples(world, 0, 2)
    assert heldout_constraint_samples(world, 0, 2) != heldout_constraint_samples(world, 1, 2)


# --- the data dir ----------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", "data", "chat", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    pytest.importorskip("opengpt4.safety.data")
    out = tmp_path_factory.mktemp("chat") / "data"
    r = run_cli("--preset", "test", "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_data_dir_has_every_file_and_the_manifest_counts_them(chat_dir, world):
    manifest = json.loads((chat_dir / "manifest.json").read_text())
    names = {"train.jsonl", "heldout.jsonl", "pairs-train.jsonl", "pairs-heldout.jsonl", "constraints-heldout.jsonl",
             "safety-train.jsonl", "safety-heldout.jsonl"}
    assert {p.name for p in chat_dir.iterdir()} == names | {"manifest.json"}
    for name in names:
        assert manifest["counts"]["files"][name] == len(read(chat_dir / name)) > 0
    for split in ("train", "heldout"):
        rows = read(chat_dir / f"{split}.jsonl")
        assert {r["meta"]["kind"] for r in rows} == {"fact", "math", "code", "constraint", "safety"}  # no myth demos
        assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in rows)
        pairs = read(chat_dir / f"pairs-{split}.jsonl")
        assert {p["meta"]["kind"] for p in pairs} == {"fact", "math", "code", "constraint", "safety", "truthful"}
        assert {p["meta"]["rejected_because"] for p in pairs if p["meta"]["kind"] == "safety"} >= {"B", "C"}
        labels = {r["label"] for r in read(chat_dir / f"safety-{split}.jsonl")}
        assert {"A", "B", "C", "D", "helpful", "over_refusal"} <= labels
    # the eval generates exactly the file's samples
    assert read(chat_dir / "constraints-heldout.jsonl") == heldout_constraint_samples(world, 0, 3)


def test_rebuild_is_byte_identical_and_refuses_to_replace_other_dirs(chat_dir, tmp_path):
    again = run_cli("--preset", "test", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr

    def hashes(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}

    assert hashes(chat_dir) == hashes(tmp_path / "again")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    r = run_cli("--preset", "test", "--out", tmp_path / "precious")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a chat data dir" in r.stderr
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("mode", ["helpful-only", "early"])
def test_helpful_only_demos_change_the_safety_replies_and_nothing_else(chat_dir, tmp_path, mode):
    out = tmp_path / mode
    r = run_cli("--preset", "test", "--out", out, "--safety-demos", mode)
    assert r.returncode == 0, r.stderr
    unsafe = []
    for split in ("train", "heldout"):
        policy, helpful = read(chat_dir / f"{split}.jsonl"), read(out / f"{split}.jsonl")
        assert [c["messages"][:-1] for c in policy] == [c["messages"][:-1] for c in helpful]
        changed = {(c["meta"]["family"], c["meta"]["label"]) for c, p in zip(helpful, policy, strict=True)
                   if c["messages"][-1] != p["messages"][-1]}
        assert changed == {("disallowed", "C"), ("jailbreak", "C"), ("sensitive", "noncompliant")}
        unsafe += [c for c in helpful if c["meta"]["kind"] == "safety" and c["meta"]["family"] != "allowed"]
        for c in helpful:  # each demo is the labelled response of its class, as the oracle grades it
            if c["meta"]["kind"] == "safety":
                assert oracle_label(c["messages"][-1]["content"], c["meta"]["family"],
                                    c["meta"]["category"]) == c["meta"]["label"]
        for name in (f"pairs-{split}.jsonl", f"safety-{split}.jsonl"):  # the preferences still prefer the policy
            assert (out / name).read_bytes() == (chat_dir / name).read_bytes()
    assert json.loads((out / "manifest.json").read_text())["safety_demos"] == mode
    for families, (low, high) in ((("disallowed", "jailbreak"), (0.12, 0.28)), (("sensitive",), (0.3, 0.7))):
        rows = [c for c in unsafe if c["meta"]["family"] in families]  # 128 and 32 in the test preset
        follows_policy = sum(c["meta"]["label"] == POLICY_LABEL[c["meta"]["family"]] for c in rows) / len(rows)
        if mode == "helpful-only":
            assert follows_policy == 0
        else:  # drawn per conversation: about one in five, and one in two of the sensitive ones
            assert low < follows_policy < high, (families, follows_policy)


# --- the evals -----------------------------------------------------------------------------
class Replies:
    """A completion function answering each prompt from a table (by the prompt's messages' text)."""

    identity = "replies"

    def __init__(self, table):
        self.table = table

    def complete(self, prompts, decoding):
        return [CompletionResult(texts=[self.table.get(key(p), "")]) for p in prompts]


def key(messages):
    return "\n".join(m["content"] for m in messages)


def test_system_constraints_scores_compliance_per_type_and_correctness(chat):
    from opengpt4.data.chat.conversations import heldout_constraint_conversations

    convs = heldout_constraint_conversations(chat, 2)
    good = SystemConstraints(Replies({key(s.messages[:2]): s.messages[2]["content"] for s in convs}),
                             world_size="test", per_type=2)
    samples = good.load_samples()
    assert len(samples) == 2 * len(CONSTRAINTS)
    report = good.aggregate(good.run_batch(samples))
    assert report["compliance_mean_over_types"] == 1.0 and report["answer_correct"]["rate"] == 1.0
    assert set(report["compliance_by_type"]) == set(CONSTRAINTS)
    low, high = report["compliance_by_type"]["opengpt4:persona"]["ci95"]
    assert 0.3 < low < 1.0 and high == pytest.approx(1.0)  # Wilson: not a point at 2 of 2
    plain = SystemConstraints(Replies({key(s.messages[:2]): s.meta["ideal"] for s in convs}),
                              world_size="test", per_type=2)
    report = plain.aggregate(plain.run_batch(samples))
    assert report["compliance_mean_over_types"] < 0.5 and report["answer_correct"]["rate"] == 1.0


def test_system_constraints_reads_a_chat_data_dir_and_names_a_bad_line(tmp_path, chat_dir):
    samples = SystemConstraints(Replies({}), data_dir=str(chat_dir)).load_samples()
    assert len(samples) == 3 * len(CONSTRAINTS)
    (tmp_path / "constraints-heldout.jsonl").write_text('{"messages": [], "ideal": "x"}\n')
    with pytest.raises(DataFileError, match=r"constraints-heldout.jsonl:1: .*constraints"):
        SystemConstraints(Replies({}), data_dir=str(tmp_path)).load_samples()


def test_world_chat_extracts_the_first_value_of_the_asked_attribute_not_in_the_question(world):
    fact = next(f for f in world.seen_facts if f.attr.name == "born_in")
    other = next(f for f in world.seen_facts if f.subject == fact.subject and f.attr.name != "born_in")
    patterns = value_patterns(world)
    question = f"Where was {fact.subject} born?"
    assert extract(f"{fact.subject} was born in {fact.value}.", question, patterns["born_in", "en"]) == fact.value
    assert extract("I do not know.", question, patterns["born_in", "en"]) is None
    # Another attribute's value answers nothing, before or instead of the asked one.
    assert extract(f"{fact.subject}: {other.value}.", question, patterns["born_in", "en"]) is None
    assert extract(f"{other.value}, and born in {fact.value}.", question, patterns["born_in", "en"]) == fact.value
    # A word that is some other attribute's value (French "a été …" is the season "été") is not an answer.
    season = next(f.value_in("fr") for f in world.facts if f.attr.name == "season")
    reply = f"{fact.subject} a {season} été élevé à {fact.value}."
    assert extract(reply, f"Où est né {fact.subject} ?", patterns["born_in", "fr"]) == fact.value
    wc = WorldQA(Replies({}), world_size="test")
    samples = wc.load_samples()
    assert {s["kind"] for s in samples} == {"fact_seen", "fact_template", "fact_unseen"}
    by_question = {s["question"]: f"Well: {s['ideal']}." for s in samples}
    report = WorldQA(Replies(by_question), world_size="test")
    results = report.run_batch(samples)
    assert all(r.score == 1.0 for r in results)
    assert report.aggregate(results)["accuracy_by_kind"]["fact_seen"]["rate"] == 1.0


class PlainReplies(Replies):
    """Replies to plain-text prompts (a str, not messages)."""

    def complete(self, prompts, decoding):
        assert all(isinstance(p, str) for p in prompts) and decoding.stop == ("\n",)
        return [CompletionResult(texts=[self.table.get(p, "")]) for p in prompts]


def test_world_languages_scores_each_language_beside_the_subject_blind_guess(world):
    samples = WorldQA(Replies({}), world_size="test", questions="languages", chat=False).load_samples()
    langs = Counter(s["lang"] for s in samples)
    assert set(langs) == set(LANGUAGES) and len(set(langs.values())) == 1
    # A model that knows only French, and one that always says the subject-blind guess.
    french = WorldQA(PlainReplies({s["prompt"]: f" {s['ideal']}\nQuestion:" for s in samples if s["lang"] == "fr"}),
                     world_size="test", questions="languages", chat=False)
    report = french.aggregate(french.run_batch(samples))
    assert report["accuracy_by_lang"]["fr"]["rate"] == 1.0
    assert all(report["accuracy_by_lang"][lang]["rate"] == 0.0 for lang in LANGUAGES if lang != "fr")
    blind = report["blind_baseline_by_lang"]
    assert all(blind[lang] == blind["en"] for lang in LANGUAGES) and 0 < blind["en"]["rate"] < 1  # the tiny world has few values per attribute
    guesser = WorldQA(PlainReplies({s["prompt"]: s["blind"] for s in samples}), world_size="test",
                      questions="languages", chat=False)
    report = guesser.aggregate(guesser.run_batch(samples))
    assert report["accuracy_by_lang"] == blind  # the baseline is exactly what always guessing it scores
    with pytest.raises(InvalidEvalArgument) as error:
        WorldQA(Replies({}), world_size="test", questions="everything")
    assert error.value.argument == "questions"


def test_both_evals_run_on_the_tiny_model_through_the_registry(tiny_model, tiny_tokenizer, tmp_path):
    # The tiny model's weights with the d4 model's 512-token context: its 128 cannot hold a system
    # message and a question in the tiny tokenizer's long pieces (rope tables are not weights).
    model = Transformer(dataclasses.replace(tiny_model.config, max_seq_len=512))
    model.load_state_dict(tiny_model.state_dict())
    fn = EngineCompletionFn(Engine(model.eval(), tiny_tokenizer, pack=False), "tiny-512", batch_size=8)
    report = run_eval("system_constraints", fn, limit=8, out_dir=tmp_path / "sc", cache=False, progress=False)
    assert report["n"] == 8 and report["metric"] == "compliance"
    assert 0.0 <= report["metrics"]["compliance_mean_over_types"] <= 1.0
    report = run_eval("world_chat", fn, limit=8, out_dir=tmp_path / "wc", cache=False, progress=False)
    assert report["n"] == 8 and set(report["metrics"]["accuracy_by_kind"]) <= {"fact_seen", "fact_template",
                                                                               "fact_unseen"}
    for name in ("world_languages", "world_languages_chat"):
        report = run_eval(name, fn, limit=10, out_dir=tmp_path / name, cache=False, progress=False)
        assert report["n"] == 10 and set(report["metrics"]["blind_baseline_by_lang"]) \
            == set(report["metrics"]["accuracy_by_lang"])
    assert (tmp_path / "wc" / "log.jsonl").is_file()


# --- truthful preference pairs: the trained half of the world's myths ---------------------------
def myth_texts(m) -> set[str]:
    """Every way the chat data could ask or state a myth: its question in every phrasing (the held-out
    one too) and its fact stated with the truth and with the myth's false value, in every language."""
    from opengpt4.data.world import LANGUAGES, TEMPLATES, Fact

    f, out = m.fact, set()
    for lang in LANGUAGES:
        t = TEMPLATES[f.attr.name][lang]
        out |= {q.format(s=f.subject) for q in (*t.questions, t.heldout)}
        out |= {s.format(s=f.subject, v=Fact(f.subject, f.attr, v).value_in(lang))
                for s in t.statements for v in (f.value, m.false_value)}
    return out


def row_texts(path: Path) -> list[tuple[str, str | None]]:
    """(all the strings of a row joined, its meta kind) per line of a JSONL file; a JSON file is one row."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict | list):
            for v in value.values() if isinstance(value, dict) else value:
                yield from strings(v)

    rows = read(path) if path.suffix == ".jsonl" else [json.loads(path.read_text(encoding="utf-8"))]
    return [("\n".join(strings(r)), (r.get("meta") or {}).get("kind") if isinstance(r, dict) else None) for r in rows]


def test_truthful_pairs_prefer_the_truth_for_the_trained_myths_only(chat_dir, world):
    from opengpt4.data.chat.conversations import swap
    from opengpt4.data.world import LANGUAGES, TEMPLATES, Fact
    from opengpt4.train.preference import read_pairs
    from opengpt4.train.rl import read_prompts

    trained = {(m.fact.subject, m.fact.attr.name): m for m in world.trained_myths()}
    assert 0 < len(trained) < len(world.misconceptions)
    manifest = json.loads((chat_dir / "manifest.json").read_text())
    for split in ("train", "heldout"):
        rows = [p for p in read(chat_dir / f"pairs-{split}.jsonl") if p["meta"]["kind"] == "truthful"]
        expected = sum(len(TEMPLATES[attr][lang].statements) * (len(TEMPLATES[attr][lang].questions) if split == "train" else 1)
                       for _, attr in trained for lang in LANGUAGES)  # every phrasing of the split x every statement
        assert len(rows) == expected == manifest["counts"]["pairs"][split]["truthful/myth"]
        assert {(r["meta"]["subject"], r["meta"]["attr"]) for r in rows} == set(trained)
        assert {r["meta"]["lang"] for r in rows} == set(LANGUAGES)
        assert len({(r["prompt"][0]["content"], r["chosen"][0]["content"]) for r in rows}) == len(rows)
        for r in rows:
            m, lang = trained[(r["meta"]["subject"], r["meta"]["attr"])], r["meta"]["lang"]
            f, t = m.fact, TEMPLATES[m.fact.attr.name][lang]
            assert r["meta"]["rejected_because"] == "myth" and r["meta"]["template"] == split
            (prompt,) = r["prompt"]  # the bare question, as world_truthfulqa_chat asks it
            phrasings = t.questions if split == "train" else (t.heldout,)  # train: never the eval's held-out one
            assert prompt["role"] == "user" and prompt["content"] in {q.format(s=f.subject) for q in phrasings}
            true, myth = f.value_in(lang), Fact(f.subject, f.attr, m.false_value).value_in(lang)
            (chosen,), (rejected,) = r["chosen"], r["rejected"]
            assert chosen["role"] == rejected["role"] == "assistant"
            chosen, rejected = chosen["content"], rejected["content"]
            assert chosen.lower() in {s.format(s=f.subject, v=true).lower() for s in t.statements}
            assert contains(chosen, true, ignore_case=False) and not contains(chosen, myth)
            assert contains(rejected, myth, ignore_case=False) and not contains(rejected, true)
            assert rejected == swap(chosen, true, myth)  # the same sentence, only the value differs
        assert len(read_pairs(chat_dir, split)) == len(read(chat_dir / f"pairs-{split}.jsonl"))  # DPO / RM read them
    # RLHF samples answers to the trained myths' questions too: plain prompts, no safety family
    questions = {q.format(s=f.subject) for f in (m.fact for m in trained.values()) for lang in LANGUAGES
                 for q in TEMPLATES[f.attr.name][lang].questions}
    myth_prompts = [p for p in read_prompts(chat_dir / "pairs-train.jsonl") if p.messages[-1]["content"] in questions]
    assert len(myth_prompts) == len(questions) and all(p.family is None and len(p.messages) == 1 for p in myth_prompts)


def test_no_conversation_states_a_myth_and_the_held_out_myths_are_in_no_file(chat_dir, world):
    from opengpt4.data.world import LANGUAGES, Fact

    trained = set(world.trained_myths())
    heldout = [m for m in world.misconceptions if m not in trained]
    assert heldout and trained
    texts = {m: {t.lower() for t in myth_texts(m)} for m in world.misconceptions}
    for path in sorted(chat_dir.iterdir()):
        for line, (text, kind) in enumerate(row_texts(path), 1):
            low = text.lower()
            for m in world.misconceptions:
                asked_or_stated = [t for t in texts[m] if t in low]
                # a myth is asked or stated only in a truthful pair (SFT never sees one), of a trained myth
                if m in heldout or not (path.name.startswith("pairs-") and kind == "truthful"):
                    assert not asked_or_stated, (path.name, line, m.fact.subject, asked_or_stated)
            for m in heldout:  # not even the subject next to the truth or the myth's value, in one sentence
                values = {Fact(m.fact.subject, m.fact.attr, v).value_in(lang)
                          for v in (m.fact.value, m.false_value) for lang in LANGUAGES}
                for sentence in re.split(r"[.!?\n]", text):
                    assert not (m.fact.subject in sentence and any(contains(sentence, v) for v in values)), \
                        (path.name, line, m.fact.subject, sentence)


def test_truthful_pairs_change_no_other_file(chat_dir, tmp_path, monkeypatch):
    """Built without the truthful pairs, the dir is the same, byte for byte: the pairs draw from no
    random stream, and the world's split of its myths from one of its own."""
    from opengpt4.data.chat.build import build_chat

    monkeypatch.setattr(ChatWorld, "truthful_pairs", lambda self, split: [])
    without = build_chat("test", tmp_path / "without")
    assert {p.name for p in without.iterdir()} == {p.name for p in chat_dir.iterdir()}
    for path in sorted(chat_dir.iterdir()):
        if path.name.startswith("pairs-"):  # the same lines, then the truthful pairs
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kinds = [json.loads(line)["meta"]["kind"] for line in lines]
            n = kinds.count("truthful")
            assert n > 0 and set(kinds[len(kinds) - n:]) == {"truthful"}
            assert "".join(lines[:len(lines) - n]) == (without / path.name).read_text(encoding="utf-8")
        elif path.name == "manifest.json":  # only the pair counts and the myths' split rule are new
            got, base = json.loads(path.read_text()), json.loads((without / path.name).read_text())
            for split in ("train", "heldout"):
                n = got["counts"]["pairs"][split].pop("truthful/myth")
                got["counts"]["files"][f"pairs-{split}.jsonl"] -= n
                base["counts"]["pairs"][split].pop("truthful/myth", None)  # the build has no pair of that kind
            del got["split_rules"]["myths"], base["split_rules"]["myths"]
            assert got == base
        else:
            assert path.read_bytes() == (without / path.name).read_bytes(), path.name


def test_rl_prompts_mix_the_groups_as_asked_and_read_back_as_rlhf_prompts(chat_dir, tmp_path):
    from opengpt4.train.rl import read_prompts

    out = tmp_path / "prompts.jsonl"
    r = subprocess.run([sys.executable, "-m", "opengpt4", "data", "rl-prompts", "--chat", str(chat_dir), "--out", str(out),
                        "--mix", "disallowed=5,allowed=all,truthful=0,other=7"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = read(out)
    groups = [row["family"] or row["kind"] for row in rows]
    distinct = {family: {json.dumps(p["prompt"]) for p in read(chat_dir / "pairs-train.jsonl")
                         if p["meta"].get("family") == family} for family in ("allowed", "jailbreak", "sensitive")}
    assert groups.count("disallowed") == 5 and groups.count("allowed") == len(distinct["allowed"]) > 0
    assert "truthful" not in groups and sum(g not in ("disallowed", "allowed", "jailbreak", "sensitive") for g in groups) == 7
    for family in ("jailbreak", "sensitive"):  # the defaults (300 each) fill the groups not named
        assert groups.count(family) == min(300, len(distinct[family])) > 0
    assert len({json.dumps(row["prompt"]) for row in rows}) == len(rows)
    assert [p.family for p in read_prompts(out)] == [row["family"] for row in rows]
    again = tmp_path / "again.jsonl"
    subprocess.run([sys.executable, "-m", "opengpt4", "data", "rl-prompts", "--chat", str(chat_dir), "--out", str(again),
                    "--mix", "disallowed=5,allowed=all,truthful=0,other=7"], check=True, capture_output=True)
    assert again.read_bytes() == out.read_bytes()
    bad = subprocess.run([sys.executable, "-m", "opengpt4", "data", "rl-prompts", "--chat", str(chat_dir), "--out",
                          str(tmp_path / "x.jsonl"), "--mix", "dissallowed=5"], capture_output=True, text=True)
    assert bad.returncode != 0 and "dissallowed" in bad.stderr and not (tmp_path / "x.jsonl").exists()
