"""Scoring of the eval templates (Match, Includes, FuzzyMatch, JsonMatch, ModelBasedClassify).

A scripted completion function stands in for the model here: these tests pin the scoring
rules; test_evals_openai_fidelity.py pins the prompts against OpenAI Evals' own, and
test_evals_runner.py runs the same templates end to end on a real model."""

import json

import pytest

from opengpt4.errors import InvalidEvalArgument, OpenGPT4Error, UnknownEvalArgument
from opengpt4.evals.api import CompletionResult, Decoding
from opengpt4.evals.modelgraded import INVALID, ModelBasedClassify, get_choice, parse_modelgraded
from opengpt4.evals.templates import FuzzyMatch, Includes, JsonMatch, Match


class Scripted:
    """Answers each prompt by its last message (or text) from a table; records what it was asked."""

    def __init__(self, answers: dict[str, str], identity: str = "scripted") -> None:
        self.answers, self.identity = answers, identity
        self.calls: list[tuple[list, Decoding]] = []

    def complete(self, prompts, decoding):
        self.calls.append((list(prompts), decoding))
        keys = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return [CompletionResult([self.answers.get(k, "")], prompt_tokens=3, completion_tokens=2) for k in keys]

    def loglikelihood(self, requests):
        raise NotImplementedError


def write_samples(tmp_path, rows, name="samples.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat(text):
    return [{"role": "user", "content": text}]


def run(eval_obj):
    samples = eval_obj.load_samples()
    for i, s in enumerate(samples):
        s["sample_id"] = f"t.{i}"
    return eval_obj.run_batch(samples)


def test_match_starts_with_an_ideal_unstripped_as_openai_evals_does(tmp_path):
    rows = [{"input": chat("a"), "ideal": "12"}, {"input": chat("b"), "ideal": ["x", "7"]},
            {"input": chat("c"), "ideal": "12"}, {"input": "raw text", "ideal": "yes"}]
    fn = Scripted({"a": "12 apples", "b": "7", "c": "I think 12", "raw text": "\nyes!"})
    ev = Match(fn, samples_jsonl=write_samples(tmp_path, rows))
    results = run(ev)
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 0.0]  # "\nyes!" does not start with "yes"
    assert [r.parsed for r in results] == ["12", "7", None, None]
    assert results[0].output == "12 apples" and results[0].sample_id == "t.0"
    assert results[0].usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    [(prompts, decoding)] = fn.calls
    assert prompts[3] == [{"role": "system", "content": "raw text"}]  # a string is a system message
    assert decoding == Decoding(max_tokens=500, temperature=0.0)  # Match's declared default, greedy
    report = ev.aggregate(results)
    assert set(report) == {"accuracy", "boostrap_std"} and report["accuracy"] == 0.5
    # The std of the means of 1000 seeded halves (2 of 4 scores), as OpenAI Evals computes it.
    assert report["boostrap_std"] == pytest.approx(0.2887, abs=0.03)


def test_includes_finds_an_ideal_in_the_output_optionally_ignoring_case(tmp_path):
    rows = [{"input": chat("q"), "ideal": ["Paris", "paris, France"]}, {"input": chat("r"), "ideal": "Rome"}]
    fn = Scripted({"q": "The capital is PARIS.", "r": "It is Rome, of course"})
    path = write_samples(tmp_path, rows)
    assert [r.score for r in run(Includes(fn, samples_jsonl=path, seed=4))] == [0.0, 1.0]
    # Includes sends no temperature, so OpenAI's API default (1) applies: seeded by the run here.
    assert fn.calls[0][1] == Decoding(max_tokens=500, temperature=1.0, seed=4)
    results = run(Includes(fn, samples_jsonl=path, ignore_case=True))
    assert [r.score for r in results] == [1.0, 1.0] and results[0].parsed == "Paris"


def test_fuzzy_match_normalizes_and_reports_f1(tmp_path):
    rows = [{"input": chat("a"), "ideal": ["the Eiffel Tower"]}, {"input": chat("b"), "ideal": "blue whale"},
            {"input": chat("c"), "ideal": "a cat"}]
    fn = Scripted({"a": "Eiffel tower!", "b": "The whale", "c": "dog"})
    ev = FuzzyMatch(fn, samples_jsonl=write_samples(tmp_path, rows))
    results = run(ev)
    assert [r.score for r in results] == [1.0, 1.0, 0.0]  # "whale" is inside "blue whale"
    assert [r.extra["f1"] for r in results] == [1.0, pytest.approx(2 / 3), 0.0]
    assert ev.aggregate(results) == {"accuracy": pytest.approx(2 / 3), "f1_score": pytest.approx((1 + 2 / 3) / 3)}
    assert fn.calls[0][1] == Decoding(max_tokens=100, temperature=0.0)  # FuzzyMatch's own max_tokens


def test_json_match_compares_parsed_json_and_rejects_an_ideal_that_is_not_json(tmp_path):
    rows = [{"input": chat("a"), "ideal": '{"a": 1, "b": [1, 2]}'},
            {"input": chat("b"), "ideal": ['{"a": 2}', '{"a": 3}']},
            {"input": chat("c"), "ideal": '{"a": 1}'},
            {"input": chat("d"), "ideal": '{"a": 1}'}]
    fn = Scripted({"a": '{"b": [1, 2], "a": 1}', "b": '{"a": 3}', "c": "not json {", "d": '{"a": 1, "extra": 0}'})
    results = run(JsonMatch(fn, samples_jsonl=write_samples(tmp_path, rows)))
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 0.0]
    assert results[0].parsed == {"a": 1, "b": [1, 2]} and results[2].parsed is None
    assert fn.calls[0][1].max_tokens == 512
    assert JsonMatch(fn, samples_jsonl=write_samples(tmp_path, rows)).aggregate(results) == {"accuracy": 0.5}
    bad = write_samples(tmp_path, [{"input": "x", "ideal": "{oops"}], "bad.jsonl")
    with pytest.raises(OpenGPT4Error, match="ideal is not valid JSON"):
        JsonMatch(fn, samples_jsonl=bad).load_samples()


def test_few_shot_turns_go_before_the_last_message(tmp_path):
    shots = tmp_path / "shots.jsonl"
    shots.write_text("".join(json.dumps({"sample": [{"role": "user", "content": f"q{i}"},
                                                    {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                             for i in range(3)))
    rows = [{"input": [{"role": "system", "content": "sys"}, {"role": "user", "content": "real"}], "ideal": "x"}]
    fn = Scripted({"real": "x"})
    results = run(Match(fn, samples_jsonl=write_samples(tmp_path, rows), few_shot_jsonl=str(shots),
                        num_few_shot=2, max_tokens=5))
    assert [m["content"] for m in results[0].prompt] == ["sys", "q0", "a0", "q1", "a1", "real"]
    assert fn.calls[0][1].max_tokens == 5 and results[0].score == 1.0
    with pytest.raises(InvalidEvalArgument, match="few_shot_jsonl"):
        Match(fn, samples_jsonl=write_samples(tmp_path, rows), num_few_shot=1)


def test_sample_file_errors_name_the_problem(tmp_path):
    fn = Scripted({})
    with pytest.raises(OpenGPT4Error, match="not found"):
        Match(fn, samples_jsonl=str(tmp_path / "missing.jsonl")).load_samples()
    (tmp_path / "broken.jsonl").write_text('{"input": "a", "ideal": "b"}\n{oops\n')
    with pytest.raises(OpenGPT4Error, match=r"broken.jsonl:2: not valid JSON"):
        Match(fn, samples_jsonl=str(tmp_path / "broken.jsonl")).load_samples()
    with pytest.raises(OpenGPT4Error, match="lacks 'ideal'"):
        Match(fn, samples_jsonl=write_samples(tmp_path, [{"input": "a"}])).load_samples()


def test_a_template_takes_only_its_openai_evals_arguments(tmp_path):
    path = write_samples(tmp_path, [{"input": "a", "ideal": "b"}])
    with pytest.raises(UnknownEvalArgument) as e:  # OpenAI Evals' Match has no temperature either
        Match(Scripted({}), samples_jsonl=path, temperature=0.7)
    assert e.value.cls == "Match" and e.value.arguments == ["temperature"]
    with pytest.raises(UnknownEvalArgument, match="'max_tokens'"):  # nor has Includes a max_tokens
        Includes(Scripted({}), samples_jsonl=path, max_tokens=5)


# --- model-graded ------------------------------------------------------------------------------
FACT = {"prompt": "Q: {input}\nExpert: {ideal}\nSubmission: {completion}\nWhich case?",
        "choice_strings": "ABCDE", "choice_scores": {"A": 0.5, "B": 0.75, "C": 1.0, "D": 0.0, "E": 0.75},
        "input_outputs": {"input": "completion"}, "eval_type": "classify"}



def test_modelgraded_spec_parses_choices_and_scores_and_rejects_bad_specs():
    mg = parse_modelgraded("fact", FACT)
    assert mg.choice_strings == ["A", "B", "C", "D", "E"] and mg.choice_scores["C"] == 1.0
    assert mg.slots() == ["completion", "ideal", "input"]
    mg = parse_modelgraded("n", {"prompt": "{input}", "choice_strings": ["1", "2", "3"], "choice_scores": "from_strings"})
    assert mg.scores(mg.choices(1)) == {"1": 1.0, "2": 2.0, "3": 3.0} and mg.input_outputs == {"input": "completion"}
    best = parse_modelgraded("best", {"prompt": "{completion}", "choice_strings": "from_n", "output_template": "{i}. {output}\n"})
    assert best.choices(3) == ["1", "2", "3"] and best.scores(best.choices(3)) is None
    assert parse_modelgraded("abc", {"prompt": "x", "choice_strings": "from_n_ABC"}).choices(2) == ["A", "B"]
    with pytest.raises(OpenGPT4Error, match="punctuation"):
        parse_modelgraded("bad", {"prompt": "x", "choice_strings": ["Yes.", "No"]})
    with pytest.raises(OpenGPT4Error, match="score to each"):
        parse_modelgraded("bad", {**FACT, "choice_scores": {"A": 1}})
    with pytest.raises(OpenGPT4Error, match="eval_type"):
        parse_modelgraded("bad", {**FACT, "eval_type": "guess"})
    with pytest.raises(OpenGPT4Error, match="lacks choice_strings"):
        parse_modelgraded("bad", {"prompt": "x"})
    with pytest.raises(OpenGPT4Error, match="numeric"):
        parse_modelgraded("bad", {"prompt": "x", "choice_strings": "YN", "choice_scores": "from_strings"})
    # Keys OpenAI Evals does not read (humor_out_message's format_type) are ignored, as there.
    assert parse_modelgraded("ok", {**FACT, "format_type": "out_message"}).eval_type == "classify"


def test_get_choice_reads_the_grade_where_openai_evals_does_per_eval_type_and_match_fn():
    choices = ["A", "B", "C", "D", "E"]
    assert get_choice("C", "classify", choices) == "C"
    assert get_choice("(B) superset.\nwhatever", "classify", choices) == "B"
    assert get_choice("The answer is D.", "classify", choices) == "D"  # ends with a choice
    assert get_choice("Reasoning first...\nso\nE", "cot_classify", choices) == "E"  # the last line wins
    assert get_choice("理由\nA", "cot_classify_jp", choices) == "A"  # so it does for the Japanese variant
    assert get_choice("A\nbecause of E", "classify_cot", choices) == "A"
    assert get_choice("no idea", "classify", choices) == INVALID
    assert get_choice("", "cot_classify", choices) == INVALID
    assert get_choice("The answer is D.", "classify", choices, "exact") == INVALID
    assert get_choice("D.", "classify", choices, "exact") == "D"
    # "include" asks whether the answer line is inside a choice (OpenAI Evals' argument order).
    assert get_choice("Ye", "classify", ["Yes", "No"], "include") == "Yes"
    assert get_choice("Yes indeed", "classify", ["Yes", "No"], "include") == INVALID


class Grader(Scripted):
    """Answers each grader prompt from `verdicts`, picked by the q<i> its prompt quotes."""

    def __init__(self, verdicts: list[str]) -> None:
        super().__init__({}, identity="grader")
        self.verdicts = verdicts

    def complete(self, prompts, decoding):
        self.calls.append((list(prompts), decoding))
        return [CompletionResult([self.verdicts[int(p[-1]["content"].split("Q: q")[1][0])]]) for p in prompts]


def test_model_based_classify_scores_an_invalid_grade_as_the_lowest_score(tmp_path):
    rows = [{"input": chat(f"q{i}"), "ideal": f"truth {i}"} for i in range(4)]
    rows.append({"input": chat("q4"), "ideal": "truth 4", "completion": "given answer"})  # no policy call needed
    policy = Scripted({f"q{i}": f"answer {i}" for i in range(4)}, identity="policy")
    grader = Grader(["C", "The answer is B", "banana", "(D)", "C"])
    ev = ModelBasedClassify(policy, samples_jsonl=write_samples(tmp_path, rows),
                            modelgraded_spec=parse_modelgraded("fact", FACT), grader=grader,
                            sample_kwargs={"max_tokens": 7}, eval_kwargs={"max_tokens": 3})
    results = run(ev)
    assert [r.parsed for r in results] == ["C", "B", INVALID, "D", "C"]
    assert [r.score for r in results] == [1.0, 0.75, 0.0, 0.0, 1.0]  # invalid: the lowest choice score
    assert [r.output for r in results] == ["answer 0", "answer 1", "answer 2", "answer 3", "given answer"]
    assert ev.aggregate(results) == {"counts/B": 1, "counts/C": 2, "counts/D": 1, "counts/__invalid__": 1,
                                     "score": pytest.approx(2.75 / 5)}
    [(policy_prompts, policy_decoding)] = policy.calls
    assert len(policy_prompts) == 4 and policy_decoding.max_tokens == 7
    [(grader_prompts, grader_decoding)] = grader.calls
    assert grader_decoding == Decoding(max_tokens=3, temperature=0.0)
    # A lone chat message goes into the slot as its bare content (chat_prompt_to_text_prompt).
    assert grader_prompts[0] == [{"role": "user", "content": "Q: q0\nExpert: truth 0\nSubmission: answer 0\nWhich case?"}]
    assert results[0].extra["grader_output"] == "C"


def test_model_based_classify_appends_answer_prompt_and_reads_by_the_specs_eval_type(tmp_path):
    rows = [{"input": "what?", "ideal": "x"}]
    policy = Scripted({"what?": "x"})
    grader = Scripted({}, identity="grader")
    ev = ModelBasedClassify(policy, samples_jsonl=write_samples(tmp_path, rows), grader=grader,
                            modelgraded_spec=parse_modelgraded("fact", FACT), eval_type="cot_classify")
    run(ev)
    content = grader.calls[0][0][0][-1]["content"]
    assert content.startswith("Q: what?\n") and content.endswith("Reasoning:")
    assert '"A" or "B" or "C" or "D" or "E"' in content
    assert ev.read_as == "classify"  # the spec's eval_type reads the answer, as in OpenAI Evals


def test_modelgraded_arguments_openai_evals_fails_on_mid_run_are_refused_up_front(tmp_path):
    path = write_samples(tmp_path, [{"input": "a"}])
    untyped = parse_modelgraded("s", {"prompt": "{input} {criteria}", "choice_strings": ["Y", "N"]})

    def make(spec=untyped, **kw):
        return ModelBasedClassify(Scripted({}), samples_jsonl=path, modelgraded_spec=spec, **kw)

    for kw, argument in [({}, "eval_type"), ({"eval_type": "guess"}, "eval_type"),
                         ({"eval_type": "classify", "match_fn": "fuzzy"}, "match_fn"),
                         ({"eval_type": "classify", "multicomp_n": "from_models"}, "multicomp_n"),
                         ({"eval_type": "classify", "multicomp_n": 3}, "multicomp_n"),  # no output_template
                         ({"eval_type": "classify", "sample_kwargs": {"top_k": 3}}, "sample_kwargs")]:
        with pytest.raises(InvalidEvalArgument) as e:
            make(**kw)
        assert e.value.argument == argument
    with pytest.raises(OpenGPT4Error, match="criteria"):  # a slot no sample fills: refused when loading
        make(eval_type="classify").load_samples()
    with pytest.raises(OpenGPT4Error, match="lacks 'choice'"):  # a metaeval needs labelled samples
        make(eval_type="classify", metaeval=True, modelgraded_spec_args={"criteria": "x"}).load_samples()
    [r] = run(make(eval_type="classify", modelgraded_spec_args={"criteria": "be nice"}))
    assert r.score is None and r.parsed == INVALID  # no choice_scores: every grade is unscored


def test_multicomp_n_joins_the_completions_and_from_n_numbers_the_choices(tmp_path):
    best = parse_modelgraded("best", {"prompt": "Which of the {n} is best?\n{completion}", "choice_strings": "from_n",
                                      "output_template": "{i}. {output}\n"})

    class Policy(Scripted):
        def complete(self, prompts, decoding):
            self.calls.append((list(prompts), decoding))
            return [CompletionResult([f"take {k}" for k in range(decoding.n)]) for _ in prompts]

    policy, grader = Policy({}), Scripted({}, identity="grader")
    ev = ModelBasedClassify(policy, samples_jsonl=write_samples(tmp_path, [{"input": "go"}]), grader=grader,
                            modelgraded_spec=best, eval_type="classify", multicomp_n=3,
                            sample_kwargs={"temperature": 0.4}, seed=9)
    [r] = run(ev)
    assert policy.calls[0][1] == Decoding(max_tokens=1024, temperature=0.4, n=3, seed=9)
    assert r.output == "1. take 0\n2. take 1\n3. take 2"
    prompt = grader.calls[0][0][0][0]["content"]
    assert prompt.startswith("Which of the 3 is best?\n1. take 0\n2. take 1\n3. take 2\n\nAnswer the question")
    assert '"1" or "2" or "3"' in prompt and r.parsed == INVALID and r.score is None
