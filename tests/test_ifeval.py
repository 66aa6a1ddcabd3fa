"""IFEval and IFEval-system: the checkers wired to real rows, the punkt model written without a
download, the paper's loose variants, the system-message split, and the eval end to end."""

import json
import re

import nltk
import pytest

from opengpt4.engine.generate import Engine
from opengpt4.errors import DataFileError
from opengpt4.evals.benchmarks.common import default_data_dir
from opengpt4.evals.benchmarks.ifeval import follows, load_rows, loose_variants, punkt_data, system_split
from opengpt4.evals.compare import compare
from opengpt4.evals.completion import EngineCompletionFn
from opengpt4.evals.runner import run_eval
from tests.helpers import write_registry

DATA = default_data_dir() / "ifeval" / "input_data.jsonl"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"IFEval data not found at {DATA}")


@pytest.fixture(scope="module")
def rows():
    return {row.key: row for row in load_rows(DATA)} if DATA.is_file() else {}


@needs_data
def test_the_real_file_has_541_prompts_and_834_instructions(rows):
    assert len(rows) == 541 and sum(len(r.instruction_ids) for r in rows.values()) == 834


@needs_data
@pytest.mark.parametrize("key, follows_all, breaks_one", [
    # punctuation:no_comma
    (1001, "Day one we walk to the temple and rest.", "Day one, we walk to the temple."),
    # detectable_content:number_placeholders (12)
    (1005, " ".join(f"[field{i}]" for i in range(12)), " ".join(f"[field{i}]" for i in range(11))),
    # change_case:english_lowercase
    (1361, "oh the rent is high and the wage is low, where do the workers go", "Oh the rent is high"),
    # detectable_format:json_format
    (1075, '```json\n{"ad": "A softer diaper for happy babies"}\n```', "Here is your ad: softer diapers!"),
    # length_constraints:number_words, at least 600
    (1258, " ".join(["dime"] * 600), " ".join(["dime"] * 599)),
    # startend:end_checker
    (1446, "Disability is part of life. Is there anything else I can help with?",
     "Is there anything else I can help with? Disability is part of life."),
])
def test_checkers_pass_a_following_response_and_fail_a_breaking_one(rows, key, follows_all, breaks_one):
    row = rows[key]
    assert follows(row, follows_all) == ([True] * len(row.instruction_ids),) * 2
    assert follows(row, breaks_one)[0] == [False] * len(row.instruction_ids)


@needs_data
def test_every_instruction_of_a_multi_instruction_row_is_checked(rows):
    row = rows[2416]  # at least 164 words, letter c at least 5 times, all capitals
    assert row.instruction_ids == ("length_constraints:number_words", "keywords:letter_frequency",
                                   "change_case:english_capital")
    long_upper = " ".join(["CROSS COUNTRY TRIP"] * 60)
    assert follows(row, long_upper)[0] == [True, True, True]
    assert follows(row, long_upper.lower())[0] == [True, True, False]
    assert follows(row, "THE TRIP IS LONG AND WE WILL ENJOY IT")[0] == [False, False, True]


@needs_data
def test_an_empty_response_follows_no_instruction(rows):
    row = rows[1001]  # no commas: an empty text has none, but IFEval counts an empty reply as not following
    assert follows(row, "") == ([False], [False]) and follows(row, "  \n") == ([False], [False])


def test_punkt_model_is_written_as_nltk_punkt_tab_and_splits_like_the_trained_model(tmp_path):
    root = punkt_data(tmp_path)
    english = root / "tokenizers" / "punkt_tab" / "english"
    assert {p.name for p in english.iterdir()} == {"abbrev_types.txt", "sent_starters.txt", "collocations.tab",
                                                   "ortho_context.tab"}
    params = nltk.tokenize.punkt.load_punkt_params(nltk.data.FileSystemPathPointer(str(english)))
    assert len(params.abbrev_types) == 156 and {"mr", "dr", "p.m", "jan"} <= params.abbrev_types
    text = "Mr. Smith met Dr. Jones at 3 p.m. on Jan. 5. They talked. Really?"
    trained = nltk.tokenize.punkt.PunktSentenceTokenizer(params).tokenize(text)
    untrained = nltk.tokenize.punkt.PunktSentenceTokenizer().tokenize(text)
    assert trained == ["Mr. Smith met Dr. Jones at 3 p.m. on Jan. 5.", "They talked.", "Really?"]
    assert len(untrained) > 3  # what the model is for: an untrained punkt ends sentences at "Mr."


@needs_data
def test_sentence_and_capital_word_checkers_run_on_the_substituted_punkt(rows):
    # length_constraints:number_sentences "less than 3": two sentences with abbreviations in them
    row = rows[3739]
    assert row.instruction_ids == ("length_constraints:number_sentences",)
    assert follows(row, "Mr. Smith met Dr. Jones at 5 p.m. on Friday. He was jealous.")[0] == [True]
    assert follows(row, "He met her. She left. He was jealous.")[0] == [False]
    # change_case:capital_word_frequency (word_tokenize splits sentences with punkt first)
    row = rows[1592]
    assert row.kwargs[0] == {"capital_relation": "at least", "capital_frequency": 3}
    assert follows(row, "SOLAR and WIND farms. Fewer OUTAGES.")[0] == [True]
    assert follows(row, "SOLAR and WIND farms. Fewer outages.")[0] == [False]


def test_loose_variants_are_the_papers_eight():
    response = "Sure, here it is:\n**hello** world\nHope this helps!"
    assert loose_variants(response) == [
        response, response.replace("*", ""),
        "**hello** world\nHope this helps!", "Sure, here it is:\n**hello** world", "**hello** world",
        "hello world\nHope this helps!", "Sure, here it is:\nhello world", "hello world"]


@needs_data
def test_loose_forgives_a_chatty_first_line_and_markdown_that_strict_does_not(rows):
    row = rows[1361]  # all lowercase
    assert follows(row, "Sure! Here are the lyrics:\nthe rent is high and the wage is low") == ([False], [True])
    row = rows[1446]  # end with "Is there anything else I can help with?"
    assert follows(row, "Disability is real. **Is there anything else I can help with?**") == ([False], [True])


@needs_data
def test_system_split_moves_the_instruction_sentences_and_keeps_the_task(rows):
    split = system_split(rows[1005])
    assert split.user == "Write a resume for a fresh high school graduate who is seeking their first job."
    assert split.system.startswith("Make sure to include at least 12 placeholder")
    # two instruction sentences after a question; neighbours keep their spacing
    split = system_split(rows[2577])
    assert split.user == "What do prehistoric megaliths in Europe look like?"
    assert split.system == ("Please give exactly two different responses, separated by 6 asterisk symbols: ******. "
                            "Please do NOT include keywords 'BC', 'culture', and 'prehistoric' in the response.")


@needs_data
def test_system_split_leaves_the_request_to_repeat_as_the_user_message(rows):
    row = rows[1686]  # the repeat instruction comes first, the request after it
    split = system_split(row)
    assert split.reason == "split" and split.user == row.kwargs[0]["prompt_to_repeat"]
    assert split.system.startswith("For the following request, please repeat")


@needs_data
def test_system_split_keeps_a_prompt_whole_when_the_instruction_is_in_the_task_sentence(rows):
    split = system_split(rows[1000])  # "Write a 300+ word summary of ...": the length is the task sentence
    assert split.system is None and split.user == rows[1000].prompt
    assert split.reason == "length_constraints:number_words not stated apart from the task"


@needs_data
def test_system_split_over_all_prompts_loses_nothing_and_splits_427(rows):
    splits = [system_split(row) for row in rows.values()]
    done = [(row, s) for row, s in zip(rows.values(), splits, strict=True) if s.system is not None]
    assert len(done) == 427
    for row, s in done:  # every character of the prompt is in one message or the other
        assert sorted(re.sub(r"\s", "", s.system + s.user)) == sorted(re.sub(r"\s", "", row.prompt)), row.key
        assert s.user and s.system


def test_a_row_the_checkers_cannot_score_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "input_data.jsonl"
    good = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad = {**good, "key": 2, "instruction_id_list": ["punctuation:no_semicolon"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataFileError, match=r"input_data.jsonl:2: unknown instruction ids \['punctuation:no_semi"):
        load_rows(path)


TINY_EVALS = """
ifeval-tiny:
  id: ifeval-tiny.test.v1
  metrics: [prompt_level_strict]
ifeval-tiny.test.v1:
  class: opengpt4.evals.benchmarks.ifeval:IFEval
  args: {max_tokens: 12}
ifeval-system-tiny:
  id: ifeval-system-tiny.test.v1
  metrics: [prompt_level_strict]
ifeval-system-tiny.test.v1:
  class: opengpt4.evals.benchmarks.ifeval:IFEval
  args: {max_tokens: 12, system: true}
"""


@needs_data
def test_both_evals_run_end_to_end_on_the_tiny_model_and_compare_pairs_by_key(tmp_path, rows, tiny_model,
                                                                              tiny_tokenizer):
    # The tiny model has a 128-token context: its data dir holds the shortest real prompts,
    # three that IFEval-system splits and two that it keeps whole.
    by_length = sorted(rows.values(), key=lambda row: len(row.prompt))
    split = [row for row in by_length if system_split(row).system is not None][:3]
    whole = [row for row in by_length if system_split(row).system is None][:2]
    keys = sorted(row.key for row in split + whole)
    lines = [line for line in DATA.read_text().splitlines() if json.loads(line)["key"] in keys]
    (tmp_path / "data" / "ifeval").mkdir(parents=True)
    (tmp_path / "data" / "ifeval" / "input_data.jsonl").write_text("\n".join(lines) + "\n")
    registry = write_registry(tmp_path / "registry", TINY_EVALS)
    fn = EngineCompletionFn(Engine(tiny_model, tiny_tokenizer, pack=False), "tiny", batch_size=4)

    def run(name, out):
        report = run_eval(name, fn, registries=[registry], limit=4, out_dir=tmp_path / out,
                          data_dir=str(tmp_path / "data"), cache=False, progress=False)
        samples = [json.loads(line) for line in (tmp_path / out / "log.jsonl").read_text().splitlines()][1:-1]
        return report, samples

    report, samples = run("ifeval-tiny", "a")
    metrics = report["metrics"]
    assert report["n"] == 4 and report["metric"] == "prompt_level_strict"
    assert report["score"] == metrics["prompt_level_strict"]
    for name in ("prompt_level_strict", "inst_level_strict", "prompt_level_loose", "inst_level_loose"):
        low, high = metrics[f"{name}_ci95"]
        assert 0 <= low <= metrics[name] <= high <= 1
    assert metrics["inst_level_strict"] == sum(map(sum, (e["extra"]["strict"] for e in samples))) / \
        metrics["n_instructions"]
    assert sum(v["n"] for v in metrics["by_instruction"].values()) == metrics["n_instructions"]
    assert metrics["n_hit_max_tokens"] == sum(e["usage"]["completion_tokens"] == 12 for e in samples)
    assert all(e["prompt"] == [{"role": "user", "content": rows[e["extra"]["key"]].prompt}] for e in samples)
    assert {e["sample_id"] for e in samples} <= {f"ifeval/{k}" for k in keys}

    system, system_samples = run("ifeval-system-tiny", "s")
    assert system["metrics"]["n_split"] + system["metrics"]["n_unsplit"] == 4 and system["metrics"]["n_split"] >= 2
    for e in system_samples:
        s = system_split(rows[e["extra"]["key"]])
        expected = [{"role": "user", "content": s.user}] if s.system is None else \
            [{"role": "system", "content": s.system}, {"role": "user", "content": s.user}]
        assert e["prompt"] == expected and e["extra"]["split"] == s.reason

    _, again = run("ifeval-tiny", "b")  # the same seed picks the same samples: paired by their IFEval key
    assert [e["sample_id"] for e in again] == [e["sample_id"] for e in samples]
    paired = compare(tmp_path / "a", tmp_path / "b")
    assert paired["n_paired"] == 4 and paired["only_in_a"] == paired["only_in_b"] == 0
