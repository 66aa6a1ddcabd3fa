"""Scoring of the eval templates (Match, Includes, FuzzyMatch, JsonMatch, ModelBasedClassify).

A scripted completion function stands in for the model here: these tests pin the scoring
rules; test_evals_runner.py runs the same templates end to end on a real model."""

import json

import pytest

from opengpt4.errors import OpenGPT4Error
from opengpt4.evals.api import CompletionResult, Decoding
from opengpt4.evals.registry import parse_modelgraded
from opengpt4.evals.templates import (
    INVALID,
    FuzzyMatch,
    Includes,
    JsonMatch,
    Match,
    ModelBasedClassify,
    chat_to_text,
    get_choice,
)


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


def test_match_starts_with_an_ideal_after_stripping(tmp_path):
    rows = [{"input": chat("a"), "ideal": "12"}, {"input": chat("b"), "ideal": ["x", "7"]},
            {"input": chat("c"), "ideal": "12"}, {"input": "raw text", "ideal": "yes"}]
    fn = Scripted({"a": "  12 apples", "b": "7", "c": "I think 12", "raw text": "\nyes!"})
    results = run(Match(fn, samples_jsonl=write_samples(tmp_path, rows)))
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 1.0]
    assert [r.parsed for r in results] == ["12", "7", None, "yes"]
    assert results[0].output == "  12 apples" and results[0].sample_id == "t.0"
    assert results[0].usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    [(prompts, decoding)] = fn.calls
    assert prompts[3] == "raw text"  # a text input is sent as text, no chat template
    assert decoding == Decoding(max_tokens=500, temperature=0.0)  # OpenAI Evals' basic defaults


def test_includes_finds_an_ideal_in_the_output_optionally_ignoring_case(tmp_path):
    rows = [{"input": chat("q"), "ideal": ["Paris", "paris, France"]}, {"input": chat("r"), "ideal": "Rome"}]
    fn = Scripted({"q": "The capital is PARIS.", "r": "It is Rome, of course"})
    path = write_samples(tmp_path, rows)
    assert [r.score for r in run(Includes(fn, samples_jsonl=path))] == [0.0, 1.0]
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
    assert ev.aggregate(results) == {"f1_score": pytest.approx((1 + 2 / 3) / 3)}


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
    with pytest.raises(OpenGPT4Error, match="few_shot_jsonl"):
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


def test_sampling_is_seeded_by_the_run(tmp_path):
    fn = Scripted({})
    ev = Match(fn, samples_jsonl=write_samples(tmp_path, [{"input": "a", "ideal": "b"}]), temperature=0.7, seed=5)
    assert ev.decoding.seed == 5 and ev.decoding.temperature == 0.7


# --- model-graded ------------------------------------------------------------------------------
FACT = {"prompt": "Q: {input}\nExpert: {ideal}\nSubmission: {completion}\nWhich case?",
        "choice_strings": "ABCDE", "choice_scores": {"A": 0.5, "B": 0.75, "C": 1.0, "D": 0.0, "E": 0.75},
        "input_outputs": {"input": "completion"}, "eval_type": "classify"}


def test_modelgraded_spec_parses_choices_and_scores_and_rejects_bad_specs():
    mg = parse_modelgraded("fact", FACT)
    assert mg.choice_strings == ["A", "B", "C", "D", "E"] and mg.choice_scores["C"] == 1.0
    assert mg.slots() == ["completion", "ideal", "input"]
    mg = parse_modelgraded("n", {"prompt": "{input}", "choice_strings": ["1", "2", "3"], "choice_scores": "from_strings"})
    assert mg.choice_scores == {"1": 1.0, "2": 2.0, "3": 3.0} and mg.input_outputs == {"input": "completion"}
    with pytest.raises(OpenGPT4Error, match="punctuation"):
        parse_modelgraded("bad", {"prompt": "x", "choice_strings": ["Yes.", "No"]})
    with pytest.raises(OpenGPT4Error, match="score to each"):
        parse_modelgraded("bad", {**FACT, "choice_scores": {"A": 1}})
    with pytest.raises(OpenGPT4Error, match="eval_type"):
        parse_modelgraded("bad", {**FACT, "eval_type": "guess"})
    with pytest.raises(OpenGPT4Error, match="lacks choice_strings"):
        parse_modelgraded("bad", {"prompt": "x"})


def test_get_choice_reads_the_grade_where_openai_evals_does_per_eval_type():
    choices = ["A", "B", "C", "D", "E"]
    assert get_choice("C", "classify", choices) == "C"
    assert get_choice("(B) superset.\nwhatever", "classify", choices) == "B"
    assert get_choice("The answer is D.", "classify", choices) == "D"  # ends with a choice
    assert get_choice("Reasoning first...\nso\nE", "cot_classify", choices) == "E"  # the last line wins
    assert get_choice("A\nbecause of E", "classify_cot", choices) == "A"
    assert get_choice("no idea", "classify", choices) == INVALID
    assert get_choice("", "cot_classify", choices) == INVALID


def test_model_based_classify_invalid_is_counted_apart(tmp_path):
    rows = [{"input": chat(f"q{i}"), "ideal": f"truth {i}"} for i in range(4)]
    rows.append({"input": chat("q4"), "ideal": "truth 4", "completion": "given answer"})  # no policy call needed
    policy = Scripted({f"q{i}": f"answer {i}" for i in range(4)}, identity="policy")
    verdicts = ["C", "The answer is B", "banana", "(D)", "C"]

    class Grader(Scripted):
        def complete(self, prompts, decoding):
            self.calls.append((list(prompts), decoding))
            return [CompletionResult([verdicts[int(p[-1]["content"].split("Q: User: q")[1][0])]]) for p in prompts]

    grader = Grader({}, identity="grader")
    ev = ModelBasedClassify(policy, samples_jsonl=write_samples(tmp_path, rows),
                            modelgraded_spec=parse_modelgraded("fact", FACT), grader=grader,
                            sample_kwargs={"max_tokens": 7}, eval_kwargs={"max_tokens": 3})
    results = run(ev)
    assert [r.parsed for r in results] == ["C", "B", INVALID, "D", "C"]
    assert [r.score for r in results] == [1.0, 0.75, None, 0.0, 1.0]  # invalid: None, not the minimum
    assert [r.output for r in results] == ["answer 0", "answer 1", "answer 2", "answer 3", "given answer"]
    assert ev.aggregate(results) == {"counts": {"A": 0, "B": 1, "C": 2, "D": 1, "E": 0}, "invalid": 1,
                                     "invalid_rate": 0.2}
    [(policy_prompts, policy_decoding)] = policy.calls
    assert len(policy_prompts) == 4 and policy_decoding.max_tokens == 7
    [(grader_prompts, grader_decoding)] = grader.calls
    assert grader_decoding.max_tokens == 3
    assert grader_prompts[0][-1]["content"] == "Q: User: q0\n\nExpert: truth 0\nSubmission: answer 0\nWhich case?"
    assert results[0].extra["grader_output"] == "C"


def test_model_based_classify_appends_answer_prompt_and_parses_by_eval_type(tmp_path):
    rows = [{"input": "what?", "ideal": "x"}]
    policy = Scripted({"what?": "x"})
    grader = Scripted({}, identity="grader")
    ev = ModelBasedClassify(policy, samples_jsonl=write_samples(tmp_path, rows), grader=grader,
                            modelgraded_spec=parse_modelgraded("fact", FACT), eval_type="cot_classify")
    run(ev)
    content = grader.calls[0][0][0][-1]["content"]
    assert content.startswith("Q: what?\n") and content.endswith("Reasoning:")
    assert '"A" or "B" or "C" or "D" or "E"' in content and ev.eval_type == "cot_classify"


def test_missing_prompt_slot_is_a_clear_error_and_spec_args_fill_it(tmp_path):
    spec = parse_modelgraded("s", {"prompt": "{input} {criteria}", "choice_strings": ["Y", "N"]})
    ev = ModelBasedClassify(Scripted({}), samples_jsonl=write_samples(tmp_path, [{"input": "a"}]),
                            modelgraded_spec=spec)
    with pytest.raises(OpenGPT4Error, match="criteria"):
        run(ev)
    ev = ModelBasedClassify(Scripted({}), samples_jsonl=write_samples(tmp_path, [{"input": "a"}]),
                            modelgraded_spec=spec, modelgraded_spec_args={"criteria": "be nice"})
    [r] = run(ev)
    assert r.score is None and r.parsed == INVALID  # no choice_scores: every grade is unscored


def test_chat_to_text_writes_the_system_bare_and_other_turns_by_role():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "yo"}]
    assert chat_to_text(messages) == "Be brief.\nUser: hi\nAssistant: yo\n"
