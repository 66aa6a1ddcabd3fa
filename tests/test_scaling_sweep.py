"""The scaling pipeline end to end at toy budgets: data, a killed sweep resumed, fit, target, plots."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest

from opengpt4.data.loader import read_index
from opengpt4.errors import PredictionMissing, SweepError
from opengpt4.scaling import data as scaling_data
from opengpt4.scaling.capability import measure_runs, sweep_checkpoints
from opengpt4.scaling.plan import Plan
from opengpt4.scaling.predict import load_prediction, make_prediction, run_target, write_prediction
from opengpt4.scaling.sweep import RESULT, read_results, sweep
from tests.helpers import wait_for

# seq_len 256: the capability prompts (up to 149 bytes) and a body must fit the context
TOY = Plan(budgets={"4e9": ["w32l1"], "8e9": ["w32l1"], "1.6e10": ["w32l1", "w32l2"]}, target_budget=3.2e10,
           seeds=2, seeded_budgets=1, first_seed=3, seq_len=256, tokens_per_step=512, jobs=1, target_threads=1,
           samples=2)
RESUMED = Plan(**{**json.loads(TOY.to_json()), "budgets": {"2e9": ["w32l1"], "4e9": ["w32l1"]}, "seq_len": 64})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "data"
    scaling_data.build(out, world_size="test", max_files=40)
    return out


def test_data_dir_is_bytes_with_the_heldout_modules_whole(data_dir):
    index = read_index(data_dir)
    report = index["scaling"]
    assert report["python"].startswith("3.11") and report["code_files"] > 20
    assert index["domains"]["code"]["val"]["bytes"] == report["heldout_bytes"] > 100_000  # every held-out module
    assert 0 <= report["heldout_windows_in_training"] < 0.05
    assert report["floors_bits_per_byte"]["xz-9e"] < report["floors_bits_per_byte"]["gzip-9"] < 3
    mix = scaling_data.mixture(index)
    assert mix["code"] == pytest.approx(1 - scaling_data.WORLD_SHARE) and sum(mix.values()) == pytest.approx(1)
    assert mix[scaling_data.FUNCTIONS] == scaling_data.FUNCTIONS_SHARE  # the capability problems' kin, not 0.1%


def test_a_killed_sweep_resumes_without_redoing_finished_runs(data_dir, tmp_path):
    out, plan_file = tmp_path / "sweep", tmp_path / "plan.json"
    plan_file.write_text(RESUMED.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "opengpt4.cli", "scaling", "sweep", "--data", str(data_dir),
                             "--out", str(out), "--plan", str(plan_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any((out / "runs").glob(f"*/{RESULT}")), timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {f.parent.name: (f.stat().st_mtime_ns, f.read_text()) for f in (out / "runs").glob(f"*/{RESULT}")}
    assert 1 <= len(finished) < len(RESUMED.runs())

    results = sweep(out, data_dir, RESUMED)
    assert [r["id"] for r in results] == [r.id for r in RESUMED.runs()] == [r["id"] for r in read_results(out)]
    for run_id, (mtime, text) in finished.items():  # not trained again
        file = out / "runs" / run_id / RESULT
        assert (file.stat().st_mtime_ns, file.read_text()) == (mtime, text)
    r = results[0]
    assert r["flops"] <= 2e9 * 1.02 and r["steps"] >= 20 and 1.0 < r["bpb"] < 8.5
    assert {(x["budget"], x["seed"]) for x in results} >= {(2e9, TOY.first_seed), (2e9, TOY.first_seed + 1)}
    lines = [json.loads(x) for x in (out / "runs" / r["id"] / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == r["steps"] and not any(line.get("probe") for line in lines)
    with pytest.raises(SweepError, match="another plan"):
        sweep(out, data_dir, Plan(**{**json.loads(RESUMED.to_json()), "seq_len": 128}))


@pytest.mark.slow
def test_fit_then_target_then_plots(data_dir, tmp_path):
    out = tmp_path / "sweep"
    sweep(out, data_dir, TOY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    checkpoints = sweep_checkpoints(out)  # each budget's run nearest its optimum
    assert len(checkpoints) == len(TOY.budgets)
    state = measure_runs(out, checkpoints, TOY.samples)
    assert all(sum(r["samples"] for r in rates.values()) == 25 * TOY.samples for rates in state["runs"].values())

    assert make_prediction(out, data_dir, TOY)["capability"] is None  # toy models pass nothing: no fit on the floor
    # Planted counts to test the fit itself (the toy budgets are ~1e-4 of the sweep's): the smallest budget
    # at the floor, left out; the other two passing more with more compute.
    file = out / "capability.json"
    planted = json.loads(file.read_text())
    for rank, rates in enumerate(planted["runs"].values()):  # budget order
        for i, counts in enumerate(rates.values()):
            counts["passed"] = min(rank * (1 + i % 2), TOY.samples) if rank else 0
    file.write_text(json.dumps(planted))
    prediction = make_prediction(out, data_dir, TOY)
    cap = prediction["capability"]
    assert [float(b) for b in cap["runs"]] == sorted(map(float, TOY.budgets))[1:] and cap["k"] > 0
    assert cap["interval"][0] <= cap["predicted"] <= cap["interval"][1]
    assert prediction["interval_95"][0] <= prediction["predicted_bpb"] <= prediction["interval_95"][1]
    assert prediction["data_sha256"] == read_index(data_dir)["scaling"]["data_sha256"]
    file = tmp_path / "prediction.json"
    with pytest.raises(PredictionMissing, match="no prediction"):
        load_prediction(file, data_dir)
    write_prediction(file, prediction)
    with pytest.raises(PredictionMissing, match="not committed"):  # tmp_path is no git checkout
        load_prediction(file, data_dir)
    report = run_target(out, data_dir, file, require_commit=False)
    assert report["run"]["model"] == prediction["target_model"] and report["run"]["budget"] == TOY.target_budget
    assert report["run"]["seed"] == TOY.first_seed
    assert report["relative_error"] == pytest.approx((report["observed_bpb"] - report["predicted_bpb"])
                                                     / report["predicted_bpb"])
    proc = subprocess.run([sys.executable, "-m", "opengpt4.cli", "scaling", "plot", "--sweep", str(out),
                           "--prediction", str(file), "--out", str(tmp_path / "plots")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "isoflop.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "capability.png").stat().st_size > 10_000
    assert "capability" in report


def test_train_takes_a_flop_budget_and_a_text_only_model_from_the_command_line(data_dir, tmp_path):
    from opengpt4.config import TrainConfig
    from opengpt4.train.pretrain import build_trainer

    cfg = TrainConfig(seq_len=64, batch_size=4, warmup_fraction=0.1, probe_size=0)
    out = tmp_path / "ckpt"
    trainer = build_trainer("test", data_dir, out, cfg, ["vision=null", "n_layer=1"], None, None, resume=False,
                            fsdp=False, max_flops=1e9)
    per_step = trainer.objective.flops_per_token * 4 * 64
    assert trainer.objective.model_config.vision is None and trainer.objective.model_config.vocab_size == 320
    assert trainer.max_steps == math.ceil(1e9 / per_step) and trainer.warmup_steps == round(0.1 * trainer.max_steps)
    assert out.is_dir()  # made before the first step, so metrics.jsonl grows as the run goes
