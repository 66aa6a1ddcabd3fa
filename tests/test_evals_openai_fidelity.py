"""Our runner against OpenAI Evals' own behaviour, on registry files vendored from it
(tests/fixtures/openai_evals, MIT, see its LICENSE).

Each expected prompt is written out from reading OpenAI Evals 3.0.1.post1: prompt/base.py
(ChatCompletionPrompt: a string is one system message; CompletionPrompt and
chat_prompt_to_text_prompt for text models), elsuite/utils.py (PromptFn, format_necessary,
scrub_formatting_from_prompt), elsuite/modelgraded/classify*.py and elsuite/basic/*.py. They
were checked against that code itself, run on these fixtures with the same scripted answers.
Scripted completion functions answer here; the tiny model runs the end-to-end path last.
"""

import json

import pytest

from opengpt4.errors import InvalidEvalArgument
from opengpt4.evals.api import CompletionResult, Decoding
from opengpt4.evals.bleu import corpus_bleu, sentence_bleu
from opengpt4.evals.completion import EngineCompletionFn, LocalCompletionFn
from opengpt4.evals.registry import Registry
from opengpt4.evals.runner import run_eval
from opengpt4.model.checkpoint import save_checkpoint
from tests.helpers import write_registry

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "openai_evals"
USAGE = {"usage_prompt_tokens", "usage_completion_tokens", "usage_total_tokens"}
FRUITS = ["pineapple", "watermelon", "grapefruit", "mango", "apple"]  # pineapple before apple
HUMOR = {"apple": "Let me think.\nIt is a pun.\nYes", "pineapple": "No.", "watermelon": "I can't tell",
         "grapefruit": "Unsure\n", "mango": "banana"}  # the last line is read: 2 Yes, 2 No, 2 Unsure, 4 invalid
COT = ("First, write out in a step by step manner your reasoning to be sure that your conclusion is correct. "
       "Avoid simply stating the correct answer at the outset. Then print only a single choice from {} (without "
       "quotes or punctuation) on its own line corresponding to the correct answer. At the end, repeat just the "
       "answer by itself on a new line.\n\nReasoning:")


def answer(prompt) -> str:
    """The scripted model: the same answers the OpenAI Evals reference run got."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    fruit = next((f for f in FRUITS if f in text.lower()), None)
    if "Is the following funny?" in text:
        return HUMOR[fruit]
    if "texts diverse?" in text:
        return "They are all the same.\nNo"
    if "[Expert]" in text:
        return "(C) same details" if "79" in text else "Thinking...\nB" if "Au" in text else "no idea"
    if "[Criterion]" in text:
        return "Reasoning: fine\nY"
    if "lines about" in text:
        return f"A {'funny' if 'funny' in text else 'boring'} line about {fruit}."
    return {"stranger": "millie bobby brown!", "derek": "It was Season 11", "hobbit": "Evangeline",
            "Once upon a": "time", "atomic number 79": "Gold.", "задание": " No"}.get(
        next((k for k in ("stranger", "derek", "hobbit", "Once upon a", "atomic number 79", "задание") if k in text), ""),
        "I do not know.")


class Scripted:
    """A completion function answering by `answer`; records every request. `chat=False`: a text model."""

    def __init__(self, chat: bool = True, identity: str = "scripted") -> None:
        self.chat, self.identity = chat, identity
        self.calls: list[tuple[object, Decoding]] = []

    def complete(self, prompts, decoding):
        self.calls += [(p, decoding) for p in prompts]
        return [CompletionResult([answer(p)] * decoding.n, prompt_tokens=10, completion_tokens=2) for p in prompts]

    def loglikelihood(self, requests):
        raise NotImplementedError


def run(tmp_path, name, fn, registries=(FIXTURES,), **kw):
    report = run_eval(name, fn, registries=list(registries), out_dir=tmp_path / name, progress=False, cache=False,
                      **kw)
    log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return report, log[1:-1]


def sent(fn, kind):
    """The prompts `fn` was sent: the policy's (no grader template in them) or the grader's."""
    graded = ("[BEGIN DATA]", "funny?", "diverse?")
    return [p for p, _ in fn.calls if any(g in json.dumps(p) for g in graded) == (kind == "grader")]


# --- model-graded -------------------------------------------------------------------------------
def test_a_string_input_is_one_system_message_and_graded_with_their_prompt_and_scores(tmp_path):
    fn = Scripted()
    report, samples = run(tmp_path, "joke-fruits", fn)
    assert sent(fn, "policy")[:2] == [[{"role": "system", "content": "write a 1-2 funny lines about apple"}],
                                      [{"role": "system", "content": "write a 1-2 boring lines about apple"}]]
    assert sent(fn, "grader")[0] == [{"role": "user", "content": "Is the following funny? \n\nA funny line about apple."
                                      "\n\n" + COT.format('"Yes" or "No" or "Unsure"')}]
    assert {d for _, d in fn.calls} == {Decoding(max_tokens=1024, temperature=0.0)}  # sample_ and eval_kwargs
    # Four unreadable grades count as "No" (0.0), the lowest score: (2 * 1 + 2 * 0.5) / 10, as OpenAI Evals.
    assert report["metric"] == "score" and report["score"] == pytest.approx(0.3) and report["n_unscorable"] == 0
    assert report["metrics"] == {"counts/Yes": 2, "counts/No": 2, "counts/Unsure": 2, "counts/__invalid__": 4,
                                 "score": pytest.approx(0.3), "usage_prompt_tokens": 200,
                                 "usage_completion_tokens": 40, "usage_total_tokens": 240}
    assert [s["score"] for s in samples[:4]] == [1.0, 1.0, 0.0, 0.0]  # apple (Yes, Yes), pineapple (No, No)
    assert samples[4]["parsed"] == "__invalid__" and samples[4]["score"] == 0.0


def test_one_valid_grade_among_invalid_ones_scores_as_openai_evals_scores_it(tmp_path):
    """The finding: 1 "Yes" and 8 unreadable grades were 1.0 here, 0.111 in OpenAI Evals."""
    class Grader(Scripted):
        def complete(self, prompts, decoding):
            self.calls += [(p, decoding) for p in prompts]
            return [CompletionResult(["Yes" if "funny line about apple" in p[0]["content"] else "hmm"]) for p in prompts]

    report, _ = run(tmp_path, "joke-fruits", Scripted(), grader=Grader(identity="grader"), limit=9)
    assert report["n"] == 9 and report["score"] == pytest.approx(1 / 9)
    assert report["metrics"]["counts/Yes"] == 1 and report["metrics"]["counts/__invalid__"] == 8


def test_a_chat_input_is_flattened_into_the_grader_prompt_as_chat_prompt_to_text_prompt_does(tmp_path):
    fn = Scripted()
    report, _ = run(tmp_path, "ab", fn)
    assert sent(fn, "policy")[0] == json.loads((FIXTURES / "data/ab/samples.jsonl").read_text().splitlines()[0])["input"]
    [grade] = [p for p in sent(fn, "grader") if "79" in p[0]["content"]]
    assert grade == [{"role": "user", "content": (
        "You are comparing a submitted answer to an expert answer on a given question. Here is the data:\n"
        "[BEGIN DATA]\n************\n[Question]: The user will ask you a question about a specific chemical element "
        "that has the atomic number 79, please respond to the best of your abilities.\nUser: What is the name of the "
        "element with atomic number 79?\n\n************\n[Expert]: The element with atomic number 79 is Gold.\n"
        "************\n[Submission]: Gold.\n************\n[END DATA]\n\nCompare the factual content of the submitted "
        "answer with the expert answer. Ignore any differences in style, grammar, or punctuation.\nThe submitted "
        "answer may either be a subset or superset of the expert answer, or it may conflict with it. Determine which "
        "case applies. Answer the question by selecting one of the following options:\n(A) The submitted answer is a "
        "subset of the expert answer and is fully consistent with it.\n(B) The submitted answer is a superset of the "
        "expert answer and is fully consistent with it.\n(C) The submitted answer contains all the same details as "
        "the expert answer.\n(D) There is a disagreement between the submitted answer and the expert answer.\n(E) The "
        "answers differ, but these differences don't matter from the perspective of factuality.\n\n"
        + COT.format('"A" or "B" or "C" or "D" or "E"'))}]
    # fact has no choice_scores: OpenAI Evals reports the counts alone, and so no score.
    assert report["score"] is None and report["n_unscorable"] == 3
    assert report["metrics"] == {"counts/B": 1, "counts/C": 1, "counts/__invalid__": 1,
                                 "usage_prompt_tokens": 60, "usage_completion_tokens": 12, "usage_total_tokens": 72}


def test_named_turns_read_user_and_assistant_and_braces_reach_the_grader_doubled(tmp_path):
    rows = [{"input": [{"role": "system", "content": "Answer {briefly}."},
                       {"role": "system", "content": "What's 2+2?", "name": "example_user"},
                       {"role": "system", "content": "4", "name": "example_assistant"},
                       {"role": "user", "content": "And {x}+1 where x=4?"}], "ideal": "5"}]
    mine = write_registry(tmp_path / "mine", """
braces:
  id: braces.dev.v0
braces.dev.v0:
  class: evals.elsuite.modelgraded.classify:ModelBasedClassify
  args:
    samples_jsonl: braces/samples.jsonl
    modelgraded_spec: closedqa
    modelgraded_spec_args: {criteria: "correctness: Is the answer correct?"}
""", {"braces/samples.jsonl": rows})
    fn = Scripted()
    report, _ = run(tmp_path, "braces", fn, registries=(FIXTURES, mine))
    assert sent(fn, "policy") == [rows[0]["input"]]  # the policy sees the braces as written
    assert sent(fn, "grader") == [[{"role": "user", "content": (
        "You are assessing a submitted answer on a given task based on a criterion. Here is the data:\n[BEGIN DATA]\n"
        "***\n[Task]: Answer {{briefly}}.\nUser: What's 2+2?\nAssistant: 4\nUser: And {{x}}+1 where x=4?\n\n***\n"
        "[Submission]: I do not know.\n***\n[Criterion]: correctness: Is the answer correct?\n***\n[END DATA]\n"
        "Does the submission meet the criterion? First, write out in a step by step manner your reasoning about the "
        "criterion to be sure that your conclusion is correct. Avoid simply stating the correct answers at the "
        "outset. Then print only the single character \"Y\" or \"N\" (without quotes or punctuation) on its own line "
        "corresponding to the correct answer. At the end, repeat just the letter again by itself on a new line.\n\n"
        "Reasoning:")}]]
    assert report["metrics"]["counts/Y"] == 1 and report["score"] == 1.0


def test_metaeval_compares_with_the_labelled_choice(tmp_path):
    fn = Scripted()
    report, samples = run(tmp_path, "joke-fruits-meta", fn)
    assert sent(fn, "policy") == []  # the samples carry their completions
    assert report["metrics"]["metascore"] == pytest.approx(0.2) and report["score"] == pytest.approx(0.3)
    assert [s["extra"]["metascore"] for s in samples[:2]] == [True, False]  # apple: Yes (labelled Yes), Yes (No)


def test_multicomp_n_samples_n_answers_and_from_models_is_refused_before_any_generation(tmp_path):
    fn = Scripted()
    report, samples = run(tmp_path, "diversity", fn, seed=3)
    policy = [d for p, d in fn.calls if "diverse" not in json.dumps(p)]
    assert set(policy) == {Decoding(max_tokens=1024, temperature=0.4, n=4, seed=3)}
    assert sent(fn, "grader")[0] == [{"role": "user", "content": "Are the following 4 texts diverse?\n\n"
                                      + "".join(f"{i}. A funny line about apple.\n" for i in range(1, 5))
                                      + "\n" + COT.format('"Yes" or "No"')}]
    assert report["metrics"]["counts/No"] == 10 and report["score"] == 0.0
    fn = Scripted()
    with pytest.raises(InvalidEvalArgument) as e:  # best: one completion per policy model, and we run one
        run(tmp_path, "best", fn)
    assert e.value.argument == "multicomp_n" and e.value.spec == "best.dev.v0" and fn.calls == []


# --- basic templates ----------------------------------------------------------------------------
def test_match_sends_few_shot_turns_before_the_last_message_and_does_not_strip(tmp_path):
    fn = Scripted()
    report, samples = run(tmp_path, "russe", fn)
    rows = [json.loads(line) for line in (FIXTURES / "data/russe/samples.jsonl").read_text().splitlines()]
    shots = [json.loads(line)["sample"] for line in (FIXTURES / "data/russe/few_shot.jsonl").read_text().splitlines()]
    assert [p for p, _ in fn.calls] == [r["input"][:-1] + shots[0] + shots[1] + r["input"][-1:] for r in rows]
    assert {d for _, d in fn.calls} == {Decoding(max_tokens=500, temperature=0.0)}
    assert samples[0]["output"] == " No" and samples[0]["ideal"] == "No" and samples[0]["score"] == 0.0
    assert report["metric"] == "accuracy" and set(report["metrics"]) == {"accuracy", "boostrap_std", *USAGE}


def test_a_text_model_gets_chat_prompts_flattened_with_an_assistant_cue(tmp_path):
    fn = Scripted(chat=False)
    report, _ = run(tmp_path, "test-fuzzy-match", fn)
    assert fn.calls[0][0] == ("Answer the following questions as concisely as possible.\nUser: What's the capital of "
                              "France?\nAssistant: Paris\nUser: What's 2+2?\nAssistant: 4\nUser: Who is the girl who "
                              "plays eleven in stranger things?\nAssistant:")
    assert fn.calls[0][1] == Decoding(max_tokens=100, temperature=0.0)  # FuzzyMatch's own max_tokens
    # The spec lists f1_score first, but `score` is accuracy: the report says so.
    assert report["metric"] == "accuracy" and report["score"] == 1.0
    assert report["metrics"] == {"accuracy": 1.0, "f1_score": pytest.approx(7 / 9), "usage_prompt_tokens": 30,
                                 "usage_completion_tokens": 6, "usage_total_tokens": 36}
    fn = Scripted(chat=False)
    run(tmp_path, "ab", fn)
    policy, grader = sent(fn, "policy"), sent(fn, "grader")
    assert policy[0] == ("The user will ask you a question about a specific chemical element that has the atomic "
                         "number 79, please respond to the best of your abilities.\nUser: What is the name of the "
                         "element with atomic number 79?\nAssistant:")
    assert isinstance(grader[0], str) and grader[0].endswith("Reasoning:")  # a lone message: its content, no cue


def test_includes_samples_at_the_api_default_temperature(tmp_path):
    fn = Scripted()
    report, _ = run(tmp_path, "test-includes-ignore-case", fn, seed=7)
    assert {d for _, d in fn.calls} == {Decoding(max_tokens=500, temperature=1.0, seed=7)}
    assert report["metrics"]["accuracy"] == pytest.approx(2 / 3)  # "millie bobby brown!", "It was Season 11"


def test_test_match_runs_openai_evals_built_in_samples(tmp_path):
    fn = Scripted()
    report, samples = run(tmp_path, "test-match", fn)
    assert [s["ideal"] for s in samples] == ["time", "George Washington", "15"]
    assert samples[0]["prompt"] == [{"role": "system", "content": "Complete the phrase as concisely as possible."},
                                    {"role": "user", "content": "Once upon a "}]
    assert report["score"] == pytest.approx(1 / 3)


def test_match_with_solvers_sends_the_task_first_and_draws_openai_evals_subset(tmp_path):
    rows = [{"input": [{"role": "user", "content": f"Where is item {i}?"}], "ideal": f"room{i}"} for i in range(12)]
    mine = write_registry(tmp_path / "mine", """
mws:
  id: mws.test.v0
mws.test.v0:
  class: evals.elsuite.basic.match_with_solvers:MatchWithSolvers
  args: {samples_jsonl: s.jsonl, task_description: Answer with the room., n_samples: 5}
""", {"s.jsonl": rows})
    for seed, drawn in [(20220722, [1, 2, 4, 7, 10]), (0, [2, 4, 6, 10, 11])]:  # OpenAI Evals' picks per seed
        fn = Scripted()
        report, samples = run(tmp_path / str(seed), "mws", fn, registries=(mine,), seed=seed)
        assert sorted(int(s["ideal"][4:]) for s in samples) == drawn
        assert fn.calls[0][0][0] == {"role": "system", "content": "Answer with the room."}
        assert fn.calls[0][1] == Decoding(max_tokens=500, temperature=1.0, seed=seed)
        assert set(report["metrics"]) == {"accuracy", "bootstrap_std", *USAGE}
    fn = Scripted(chat=False)  # a text model: the solver's own prefixes, stop at the next turn
    run(tmp_path / "text", "mws", fn, registries=(mine,))
    assert fn.calls[0][0] == "System: Answer with the room.\nUser: Where is item 6?\nAssistant:"
    assert fn.calls[0][1].stop == ("System:", "User:", "Assistant:", "-----")


def test_translate_bleu_is_sacrebleus():
    """Values from sacrebleu 2.6.0 (BLEU(effective_order=True).sentence_score, BLEU().corpus_score)."""
    assert sentence_bleu("Citizen Tan, a friendly driver", ["Citizen Tan, a friendly taxi driver"]) == \
        pytest.approx(67.31821382417488, abs=1e-9)
    assert sentence_bleu("The cat sat on the mat.", ["A cat sat on the mat.", "The cat was sitting on the mat."]) == \
        pytest.approx(88.01117367933934, abs=1e-9)
    assert sentence_bleu("nothing alike", ["The cat sat on the mat."]) == 0.0
    assert corpus_bleu(["Citizen Tan, a friendly driver", "The cat sat on the mat."],
                       [["Citizen Tan, a friendly taxi driver"], ["A cat sat on the mat."]]) == \
        pytest.approx(74.52406490279024, abs=1e-9)


def test_the_openai_registry_replacing_our_fact_says_so_on_stderr(capsys):
    assert Registry([FIXTURES]).get_modelgraded("fact").choice_scores is None  # theirs, not ours
    assert capsys.readouterr().err == \
        f"warning: {FIXTURES / 'modelgraded' / 'fact.yaml'} replaces opengpt4's modelgraded spec 'fact'\n"


# --- the tiny model, end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def local(tmp_path_factory, tiny_model, tiny_tokenizer):
    return LocalCompletionFn(save_checkpoint(tmp_path_factory.mktemp("fidelity") / "tiny", tiny_model,
                                             tiny_tokenizer), dtype="float32", batch_size=4)


def test_the_tiny_model_gets_a_string_input_as_a_system_message_through_the_runner(tmp_path, local, monkeypatch):
    monkeypatch.setenv("OPENGPT4_HOME", str(tmp_path / "home"))
    rows = [{"input": "the cat sat on", "ideal": "the"}, {"input": "seven blue birds", "ideal": "sang"}]
    mine = write_registry(tmp_path / "mine", """
words:
  id: words.dev.v0
  metrics: [accuracy]
words.dev.v0:
  class: evals.elsuite.basic.match:Match
  args: {samples_jsonl: words.jsonl, max_tokens: 8}
""", {"words.jsonl": rows})
    report = run_eval("words", local, registries=[mine], out_dir=tmp_path / "w", progress=False)
    samples = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()][1:-1]
    messages = [[{"role": "system", "content": r["input"]}] for r in rows]
    assert [s["prompt"] for s in samples] == messages
    direct = EngineCompletionFn(local.engine, "direct").complete(messages, Decoding(max_tokens=8))
    assert [s["output"] for s in samples] == [r.texts[0] for r in direct]
    assert report["metric"] == "accuracy" and set(report["metrics"]) == {"accuracy", "boostrap_std", *USAGE}
    assert report["metrics"]["usage_total_tokens"] == report["usage"]["total_tokens"] > 0
    # A vendored OpenAI Evals spec whose prompts fit the tiny model's 128-token context.
    test_match = run_eval("test-match", local, registries=[FIXTURES], out_dir=tmp_path / "t", progress=False)
    assert test_match["n"] == 3 and test_match["metric"] == "accuracy"
    assert set(test_match["metrics"]) == {"accuracy", "boostrap_std", *USAGE}
