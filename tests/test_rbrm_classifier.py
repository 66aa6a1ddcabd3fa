"""The trained RBRM: the head model (pooling on padded batches, its checkpoint and the errors of a
missing or corrupt head), training through the shared loop on the `test` world's labelled
responses, ClassifierGrader as a graders.Grader, and `opengpt4 rbrm train / agreement`."""

import json
from pathlib import Path

import pytest
import torch

from opengpt4.cli import main
from opengpt4.data.world import World
from opengpt4.errors import CheckpointError, ConfigError, DataFileError
from opengpt4.model.checkpoint import load_checkpoint, save_checkpoint
from opengpt4.model.heads import (
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    HeadConfig,
    HeadModel,
    load_head_checkpoint,
    pad_right,
    save_head_checkpoint,
)
from opengpt4.safety import graders
from opengpt4.safety.classifier import (
    RUBRIC_LABELS,
    ClassifierGrader,
    RBRMConfig,
    read_labelled,
    swapped_responses,
    train_rbrm,
)
from opengpt4.safety.data import labelled_responses, safety_examples
from opengpt4.safety.graders import LABELS, REWARDS, Case, Grade, agreement, oracle_label
from tests.helpers import tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS4 = HeadConfig("classifier", ("A", "B", "C", "D"))


def rows_of(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("head", [LABELS4, HeadConfig("scalar", ("reward",))])
def test_padded_batch_scores_as_each_row_alone(tie, head):
    torch.manual_seed(0)
    model = HeadModel(tiny_decoder(seed=1, tie=tie), head).eval()
    rows = rows_of([5, 17, 1, 40, 9], vocab=300, seed=2)
    with torch.no_grad():
        batched = model(*pad_right(rows, pad_id=0))
        alone = torch.cat([model(*pad_right([r], pad_id=0)) for r in rows])
        other_pad = model(*pad_right(rows, pad_id=7))  # what the padding holds does not matter
    assert batched.shape == ((5, 4) if head.kind == "classifier" else (5,))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, other_pad, atol=1e-5, rtol=1e-5)
    assert model.score.weight.requires_grad and model.decoder.lm_head.weight.requires_grad == tie


def test_head_config_is_checked():
    for kind, labels in [("regressor", ("x",)), ("classifier", ("A",)), ("classifier", ("A", "A")),
                         ("scalar", ("a", "b"))]:
        with pytest.raises(ConfigError):
            HeadConfig(kind, labels)


@pytest.fixture
def saved(tmp_path, tiny_model, tiny_tokenizer) -> tuple[Path, HeadModel]:
    torch.manual_seed(3)
    model = HeadModel(tiny_model, LABELS4).eval()
    return save_head_checkpoint(tmp_path / "head-ckpt", model, tiny_tokenizer), model


def test_checkpoint_round_trip(saved, tiny_tokenizer):
    path, model = saved
    loaded, tokenizer = load_head_checkpoint(path)
    assert loaded.head == LABELS4 and tokenizer.vocab_size == tiny_tokenizer.vocab_size
    rows = rows_of([6, 11, 3], vocab=tiny_tokenizer.vocab_size, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*pad_right(rows, 0)), model(*pad_right(rows, 0)), rtol=0, atol=0)
    decoder, _ = load_checkpoint(path)  # still a plain language-model checkpoint
    assert decoder.config == model.decoder.config
    assert not list(path.parent.glob(".*")), "no temp dir left behind"


def test_missing_or_corrupt_head_is_one_clear_error(saved, tmp_path, tiny_model, tiny_tokenizer):
    path, _ = saved
    plain = save_checkpoint(tmp_path / "plain", tiny_model, tiny_tokenizer)
    with pytest.raises(CheckpointError, match=r"head\.json: missing \(.*plain decoder checkpoint"):
        load_head_checkpoint(plain)
    good = (path / HEAD_WEIGHTS).read_bytes()
    (path / HEAD_WEIGHTS).write_bytes(good[:40])
    with pytest.raises(CheckpointError, match=r"head\.safetensors: cannot read safetensors"):
        load_head_checkpoint(path)
    (path / HEAD_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"head\.safetensors: missing"):
        load_head_checkpoint(path)
    (path / HEAD_WEIGHTS).write_bytes(good)
    (path / HEAD_CONFIG).write_text(json.dumps({"format_version": 1, "kind": "classifier", "labels": ["A", "B"]}))
    with pytest.raises(CheckpointError, match=r"score\.weight has shape \(4, 64\), but 2 labels"):
        load_head_checkpoint(path)
    (path / HEAD_CONFIG).write_text('{"format_version": 1, "kind": "classifier", "labels": ')
    with pytest.raises(CheckpointError, match=r"head\.json: not valid JSON"):
        load_head_checkpoint(path)


# --- training through the loop, on the `test` world ------------------------------------------------
@pytest.fixture(scope="module")
def safety_dir(tmp_path_factory) -> Path:
    """A chat data dir's two safety files, for the `test` world (576 train, 192 held-out responses)."""
    d = tmp_path_factory.mktemp("chat")
    world = World.generate(0, "test")
    for split in ("train", "heldout"):
        rows = labelled_responses(safety_examples(world, split, seed=0))
        (d / f"safety-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint, safety_dir) -> Path:
    out = tmp_path_factory.mktemp("rbrm") / "classifier"
    cfg = RBRMConfig(batch_size=16, lr=3e-3, warmup_steps=5, eval_every=20, eval_rows=48, max_len=80,
                     dtype="float32")
    train_rbrm(tiny_checkpoint, safety_dir, out, cfg, max_steps=40)
    return out


def test_training_through_the_loop_lowers_the_loss(trained):
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in lines if "loss" in m]
    evals = [m for m in lines if "val" in m]
    assert len(losses) == 40 and sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, losses
    assert [m["step"] for m in evals] == [0, 20, 40]
    assert evals[-1]["val"]["heldout"] < evals[0]["val"]["heldout"]
    assert evals[-1]["probe"]["accuracy"] > 0.6 > evals[0]["probe"]["accuracy"]
    assert set(evals[-1]["probe"]) == {"accuracy", *LABELS}
    assert (trained / "loss.png").is_file() and (trained / HEAD_CONFIG).is_file()
    assert json.loads((trained / HEAD_CONFIG).read_text())["labels"] == list(RUBRIC_LABELS)


def test_classifier_grader_honours_the_protocol(trained, safety_dir):
    grader = ClassifierGrader.load(trained, batch_size=5)
    assert graders.ClassifierGrader is ClassifierGrader
    rows = read_labelled(safety_dir, "heldout")[::7]
    cases = [Case(r["messages"], r["response"], r["family"], r["category"]) for r in rows]
    many = grader.grade_many(cases)
    assert many == [grader.grade(*c) for c in cases]  # batched (sorted by length, padded) = one by one
    for case, g in zip(cases, many, strict=True):
        assert isinstance(g, Grade) and g.label in LABELS[case.family] and g.reward == REWARDS[g.label]
    probs = grader.probabilities(cases)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(cases)))
    assert grader.grade_many([]) == []
    with pytest.raises(ValueError, match="unknown prompt family"):
        grader.grade(cases[0].messages, "hi", "nonsense", "")
    result = agreement(grader, rows)
    assert 0 <= result.accuracy <= 1 and -1 <= result.kappa <= 1


def test_a_scalar_head_is_not_a_grader(tmp_path, tiny_model, tiny_tokenizer):
    path = save_head_checkpoint(tmp_path / "rm", HeadModel(tiny_model, HeadConfig("scalar", ("reward",))),
                                tiny_tokenizer)
    with pytest.raises(CheckpointError, match="not a rubric classifier: a scalar head"):
        ClassifierGrader.load(path)


def test_bad_labelled_rows_name_the_line(tmp_path, safety_dir):
    good = (safety_dir / "safety-train.jsonl").read_text().splitlines()[:3]
    bad = json.loads(good[0]) | {"label": "compliant"}  # a sensitive class on a disallowed prompt
    file = tmp_path / "bad.jsonl"
    file.write_text("\n".join([*good[:2], json.dumps(bad)]) + "\n")
    with pytest.raises(DataFileError, match=r"bad\.jsonl:3: label 'compliant' is not a disallowed class"):
        read_labelled(file)


# --- the CLI (in process: the same main() the console script runs) --------------------------------
def test_cli_train_and_agreement(tmp_path, tiny_checkpoint, safety_dir, trained, capsys):
    out = tmp_path / "cli-rbrm"
    assert main(["rbrm", "train", "--model", str(tiny_checkpoint), "--data", str(safety_dir), "--out", str(out),
                 "--max-steps", "2", "--set", "batch_size=8", "--set", "eval_rows=8", "--set", "max_len=48"]) == 0
    assert (out / HEAD_CONFIG).is_file() and json.loads((out / "trainer_state.json").read_text())["step"] == 2

    report = tmp_path / "agreement.json"
    assert main(["rbrm", "agreement", "--grader", f"classifier:{trained}", "--data", str(safety_dir),
                 "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["n"] == 192 and set(result["families"]) == {"all", *LABELS}
    assert sum(result["families"][f]["n"] for f in LABELS) == 192
    assert f"{result['families']['all']['accuracy']:.3f}" in printed and "kappa" in printed

    assert main(["rbrm", "agreement", "--grader", "oracle", "--data", str(safety_dir), "--limit", "50"]) == 0
    printed = capsys.readouterr().out
    assert "50 of 192" in printed and "all              50     1.000   1.000" in printed

    assert main(["rbrm", "agreement", "--grader", "crystal-ball", "--data", str(safety_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected oracle, model:" in err


def test_swapped_responses_are_labelled_by_the_oracle(safety_dir):
    rows = read_labelled(safety_dir, "train")
    swapped = swapped_responses(rows, 2, seed=0)
    assert len(swapped) == 2 * len(rows) and swapped == swapped_responses(rows, 2, seed=0)
    for original, s in zip([r for r in rows for _ in range(2)], swapped, strict=True):
        assert s["messages"] == original["messages"] and s["family"] == original["family"]
        assert s["label"] == oracle_label(s["response"], s["family"], s["category"])
    assert sum(s["response"] != r["response"] for r, s in zip(rows, swapped[::2], strict=True)) > 0.9 * len(rows)
    labels = {(s["family"], s["label"]) for s in swapped}
    assert {("allowed", "over_refusal"), ("disallowed", "D"), ("sensitive", "noncompliant")} <= labels
