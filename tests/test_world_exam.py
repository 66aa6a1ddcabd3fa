"""world_exam: the world's multiple-choice exam, by letter and by cloze, with its calibration."""

import json
import math
from collections import Counter

import pytest

from opengpt4.data.build import _question_line  # the writer of a data build's eval/world_mc.jsonl
from opengpt4.data.world import World
from opengpt4.engine.generate import Engine
from opengpt4.engine.score import loglikelihood_naive
from opengpt4.errors import DataFileError
from opengpt4.evals.api import Loglik, LoglikRequest
from opengpt4.evals.benchmarks.world_exam import LETTERS, WorldExam, requests
from opengpt4.evals.completion import EngineCompletionFn
from opengpt4.evals.runner import run_eval

MINI = World.generate(0, "mini").eval_sets()["world_mc"]  # what the registry entries ask (seed-0 mini world)
TEST = World.generate(0, "test").eval_sets()["world_mc"]


class Scorer:
    """Log-likelihood 0 for the continuations in `right`, `wrong` for every other one."""

    identity = "scorer"

    def __init__(self, right: set[LoglikRequest], wrong: float = -20.0):
        self.right, self.wrong = right, wrong

    def complete(self, prompts, decoding):
        raise NotImplementedError

    def loglikelihood(self, reqs):
        return [Loglik(0.0 if r in self.right else self.wrong, 1, True) for r in reqs]


def oracle(cloze: bool) -> Scorer:
    return Scorer({requests(q, cloze)[LETTERS.index(q.answer)] for q in MINI})


@pytest.mark.parametrize("name", ["world_exam", "world_exam_cloze"])
def test_a_scorer_that_knows_every_answer_is_right_and_calibrated(name, tmp_path):
    report = run_eval(name, oracle(cloze=name.endswith("cloze")), out_dir=tmp_path, cache=False, progress=False)
    metrics = report["metrics"]
    assert report["n"] == len(MINI) == 200 and report["score"] == 1.0 and report["metric"] == "accuracy"
    assert metrics["accuracy"]["rate"] == 1.0 and metrics["accuracy"]["ci95"][0] > 0.98
    assert all(v["rate"] == 1.0 for v in [*metrics["by_category"].values(), *metrics["by_lang"].values()])
    assert sum(v["n"] for v in metrics["by_lang"].values()) == 200
    assert metrics["mean_confidence"] == pytest.approx(1.0, abs=1e-6)
    assert report["ece"] == pytest.approx(0.0, abs=1e-6) and (tmp_path / "reliability.png").is_file()
    assert metrics["predicted"] == {letter: Counter(q.answer for q in MINI)[letter] for letter in LETTERS}


def test_a_scorer_that_cannot_tell_the_options_apart_says_a_at_chance_confidence(tmp_path):
    report = run_eval("world_exam", Scorer(set()), out_dir=tmp_path, cache=False, progress=False)
    share_a = sum(q.answer == "A" for q in MINI) / len(MINI)
    top, count = Counter(q.answer for q in MINI).most_common(1)[0]
    metrics = report["metrics"]
    assert metrics["predicted"] == {"A": 200, "B": 0, "C": 0, "D": 0}  # ties go to the first option
    assert report["score"] == pytest.approx(share_a) and metrics["mean_confidence"] == pytest.approx(0.25)
    assert report["ece"] == pytest.approx(abs(share_a - 0.25))
    assert metrics["random_baseline"] == 0.25 and metrics["majority_baseline"] == {"letter": top, "rate": count / 200}


def test_letters_follow_the_exam_prompt_and_cloze_asks_the_bare_question():
    fr = next(q for q in TEST if q.lang == "fr")
    question = fr.prompt.split("\n")[2]
    assert [r.continuation for r in requests(fr, cloze=False)] == [" A", " B", " C", " D"]
    assert {r.context for r in requests(fr, cloze=False)} == {fr.prompt} and fr.prompt.endswith("\nRéponse:")
    cloze = requests(fr, cloze=True)
    assert {r.context for r in cloze} == {f"Question: {question}\nRéponse:"}
    assert [r.continuation for r in cloze] == [f" {c}\n" for c in fr.choices]


def write_rows(path, rows):
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def test_a_data_dirs_rows_are_the_questions_of_its_world(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"preset": "test", "seed": 0}))
    regenerated = WorldExam(Scorer(set()), data_dir=str(tmp_path)).load_samples()  # no eval/ file: from the world
    assert [s["question"] for s in regenerated] == TEST and len(TEST) == 26
    write_rows(tmp_path / "eval" / "world_mc.jsonl", [_question_line(q) for q in TEST])
    assert WorldExam(Scorer(set()), data_dir=str(tmp_path)).load_samples() == regenerated


def bad(row: dict, **change) -> dict:
    return {k: v for k, v in {**row, **change}.items() if v is not None}


@pytest.mark.parametrize(("change", "message"), [
    ({"ideal": None}, r"missing: ideal"),
    ({"ideal": "E"}, r"ideal must be one of A, B, C, D, got 'E'"),
    ({"choices": ["a", "b", "c"]}, r"choices must be 4 strings"),
    ({"lang": "it"}, r"unknown lang 'it'"),
    ({"choices": ["w", "x", "y", "z"]}, r"the prompt is not .* options A-D with these choices"),
])
def test_a_malformed_row_names_its_file_and_line(tmp_path, change, message):
    rows = [_question_line(q) for q in TEST[:3]]
    rows[1] = bad(rows[1], **change)
    write_rows(tmp_path / "eval" / "world_mc.jsonl", rows)
    with pytest.raises(DataFileError, match=rf"world_mc.jsonl:2: .*{message}"):
        WorldExam(Scorer(set()), data_dir=str(tmp_path)).load_samples()


@pytest.mark.parametrize("cloze", [False, True])
def test_scores_are_the_models_loglikelihoods_and_softmax_confidence(tiny_model, tiny_tokenizer, cloze):
    engine = Engine(tiny_model, tiny_tokenizer, pack=False)
    ev = WorldExam(EngineCompletionFn(engine, "tiny", batch_size=8), world_size="test", cloze=cloze)
    samples = ev.load_samples()[::5]
    for s, r in zip(samples, ev.run_batch(samples), strict=True):
        naive = [x.logprob for x in loglikelihood_naive(engine, requests(s["question"], cloze))]
        assert r.output == pytest.approx(naive, abs=1e-4)
        assert r.parsed == max(range(4), key=naive.__getitem__)
        assert r.score == float(LETTERS[r.parsed] == s["question"].answer)
        top = max(naive)
        assert r.extra["confidence"] == pytest.approx(1 / sum(math.exp(x - top) for x in naive), abs=1e-5)


def test_eval_calibration_draws_runs_side_by_side_with_each_ece(tmp_path):
    """`opengpt4 eval calibration`: the announcement's before/after figure from two runs' logs."""
    import subprocess
    import sys

    right, chance = tmp_path / "right", tmp_path / "chance"
    run_eval("world_exam", oracle(cloze=False), out_dir=right, cache=False, progress=False)
    run_eval("world_exam", Scorer(set()), out_dir=chance, cache=False, progress=False)
    png = tmp_path / "side.png"
    cmd = [sys.executable, "-m", "opengpt4", "eval", "calibration", str(right), str(chance),
           "--label", "knows", "--label", "guesses", "--out", str(png)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout.splitlines()[-1])["runs"]
    assert runs["knows"]["ece"] == pytest.approx(0.0, abs=1e-6) and runs["knows"]["accuracy"] == 1.0
    share_a = sum(q.answer == "A" for q in MINI) / len(MINI)  # it always says A at confidence 1/4
    assert runs["guesses"]["ece"] == pytest.approx(abs(0.25 - share_a), abs=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run(cmd[:7] + ["--label", "one", "--out", str(png)], capture_output=True, text=True)
    assert r.returncode == 1 and "2 runs but 1 --label" in r.stderr and r.stderr.count("\n") == 1
