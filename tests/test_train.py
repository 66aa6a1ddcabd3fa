"""Pretraining: exact resume after SIGKILL and after SIGTERM's save, DDP/FSDP under torchrun, schedules, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from opengpt4.config import TrainConfig, apply_overrides, get_preset
from opengpt4.errors import ConfigError
from opengpt4.train.metrics import matmul_peak_flops
from opengpt4.train.optim import lr_at
from tests.helpers import kill_after_checkpoint, wait_for

TRAIN = ["--preset", "test", "--set", "seq_len=64", "--set", "batch_size=8", "--set", "eval_every=4",
         "--set", "probe_size=4", "--set", "warmup_steps=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from opengpt4.data.build import build

    return build("test", tmp_path_factory.mktemp("data") / "d", seed=0)


def run_train(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", "train", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def losses(out) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def test_training_learns_and_writes_a_checkpoint(data, tmp_path):
    r = run_train("--data", str(data), "--out", str(tmp_path / "ck"), "--max-steps", "12", *TRAIN)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ck"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json",
                 "optimizer.safetensors", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    curve = losses(out)
    assert len(curve) == 12 and curve[12] < curve[1] - 0.5, curve
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if "val" in m]
    assert [m["step"] for m in evals] == [4, 8, 12]
    assert {"world", "images"} <= set(evals[-1]["val"]) and "image_accuracy" in evals[-1]["probe"]
    # the world probe per language, each beside its subject-blind guess
    assert {f"lang_{lang}{b}" for lang in ("en", "fr", "es", "de", "ru") for b in ("", "_blind")} \
        <= set(evals[-1]["probe"])
    assert all(0 < m["mfu"] < 1.5 and m["tokens_per_s"] > 0 for m in lines if "loss" in m)
    # the checkpoint is a model: generate loads it
    g = subprocess.run([sys.executable, "-m", "opengpt4.cli", "generate", "--model", str(out), "--prompt",
                        "Question:", "--raw", "--max-tokens", "5"], capture_output=True, text=True)
    assert g.returncode == 0, g.stderr


def interruptible_args(data, *more: str) -> list[str]:
    return ["--data", str(data), "--max-steps", "10", *TRAIN, "--set", "eval_every=0", *more]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict[int, float]:
    """The losses of the 10-step run the interrupted runs below must reproduce once resumed."""
    out = tmp_path_factory.mktemp("straight") / "ck"
    r = run_train(*interruptible_args(data), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return losses(out)


def test_resume_after_sigkill_gives_the_same_losses(data, uninterrupted, tmp_path):
    args = interruptible_args(data, "--set", "ckpt_every=3")
    out = tmp_path / "killed"
    step = kill_after_checkpoint([sys.executable, "-m", "opengpt4.cli", "train", *args, "--out", str(out)], out, 6)
    assert 6 <= step < 10
    r = run_train(*args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, 11))
    assert resumed == uninterrupted  # exactly, step for step


def test_sigterm_saves_the_steps_done_and_resume_gives_the_same_losses(data, uninterrupted, tmp_path):
    """No periodic checkpoints (ckpt_every=0): what SIGTERM leaves is the save it makes after the step
    in progress, with the shell's status for the signal; resuming it ends as the run never stopped."""
    args = interruptible_args(data)
    out = tmp_path / "stopped"
    metrics = out / "metrics.jsonl"  # appended as the run goes; its last line may be half-written
    proc = subprocess.Popen([sys.executable, "-m", "opengpt4.cli", "train", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: metrics.is_file() and metrics.read_text().count('"loss"') >= 3, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    step = json.loads((out / "trainer_state.json").read_text())["step"]
    assert 3 <= step < 10 and f"SIGTERM stopped training; the checkpoint in {out} holds its {step} steps" in stderr
    assert sorted(losses(out)) == list(range(1, step + 1))
    assert not [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val" in m]
    r = run_train(*args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert losses(out) == uninterrupted  # exactly, step for step


def test_a_time_budget_holds_the_final_eval_and_checkpoint_and_logs_plain_progress(data, tmp_path):
    """Evals only at the end (eval_every=0), the case whose final eval used to run past the budget.
    stdout is a pipe here: progress comes as plain lines, not a live bar."""
    budget, tolerance = 24.0, 5.0  # seconds; the tolerance absorbs load on a shared 2-core machine
    start = time.monotonic()
    r = run_train("--data", str(data), "--out", str(tmp_path / "ck"), "--max-minutes", str(budget / 60), *TRAIN,
                  "--set", "eval_every=0", "--set", "probe_size=64")
    wall = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert wall <= budget + tolerance, f"{wall:.1f} s for a {budget:.0f} s budget"
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    # the eval that measures what the final one costs, at step 0, and the final one
    assert state["step"] >= 1 and [m["step"] for m in lines if "val" in m] == [0, state["step"]]
    progress = [x for x in r.stdout.splitlines() if " steps  loss " in x]
    assert progress and progress[-1].startswith(f"{state['step']} steps  loss ") and "left" in progress[-1], r.stdout


def test_resume_refuses_data_built_with_another_tokenizer(data, tmp_path):
    from opengpt4.data.build import build

    r = run_train("--data", str(data), "--out", str(tmp_path / "ck"), "--max-steps", "2", *TRAIN)
    assert r.returncode == 0, r.stderr
    other = build("test", tmp_path / "other", seed=1)
    r = run_train("--data", str(other), "--out", str(tmp_path / "ck"), "--max-steps", "4", "--resume", *TRAIN)
    assert r.returncode == 1 and "another tokenizer" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_train_refuses_a_directory_that_is_not_a_data_dir(tmp_path):
    r = run_train("--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--max-steps", "2")
    assert r.returncode == 1 and "is " in r.stderr and "a data dir" in r.stderr


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed next to this Python")
@pytest.mark.parametrize("fsdp", [False, True])
def test_torchrun_two_ranks_match_one_process(data, tmp_path, fsdp):
    """Same global batch: 2 ranks x 4 sequences (DDP or FSDP2) vs 1 process x 2 micro-batches of 4."""
    common = ["--data", str(data), "--max-steps", "5", *TRAIN, "--set", "eval_every=0", "--set", "dtype=\"float32\""]
    single = run_train(*common, "--out", str(tmp_path / "one"), "--set", "micro_batch_size=4")
    assert single.returncode == 0, single.stderr
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--nproc_per_node=2", "--standalone", "-m", "opengpt4.cli", "train", *common, "--out", str(tmp_path / "two"),
                        *(["--fsdp"] if fsdp else [])], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-3, (step, one[step], two[step])


def test_train_help_states_the_default_run_length_the_trainer_computes():
    """With neither --max-steps nor --max-minutes, Trainer runs Chinchilla's 20 tokens per parameter
    of a model whose vocabulary is the data's, rounded up to a multiple of 64."""
    from opengpt4.data.build import PRESETS

    cfg = TrainConfig()
    d4 = get_preset("d4", vocab_size=64 * math.ceil(PRESETS["mini"].vocab_size / 64))
    steps = math.ceil(d4.compute_optimal_tokens() / (cfg.batch_size * cfg.seq_len))
    text = " ".join(run_train("--help").stdout.split())
    assert f"d4: {d4.num_params() / 1e6:.2f}M parameters" in text
    assert f"{steps:,} steps of {cfg.batch_size * cfg.seq_len:,} tokens" in text, text


def test_lr_schedules_warm_up_then_decay_by_cosine_or_wsd_to_the_minimum():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1) and lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55) and lr_at(cfg, 99, 1.0) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, warmup_steps=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(wsd, 10, 0.5) == 1.0 and lr_at(wsd, 10, 0.9) == pytest.approx(0.5)
    assert lr_at(wsd, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_overrides_set_nested_typed_fields_and_reject_unknown_or_ill_typed():
    cfg = apply_overrides(TrainConfig(), ["lr=0.01", "mixture.world=0.9", "schedule=wsd", "batch_size=4"])
    assert (cfg.lr, cfg.mixture["world"], cfg.schedule, cfg.batch_size) == (0.01, 0.9, "wsd", 4)
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        apply_overrides(TrainConfig(), ["nope=1"])
    with pytest.raises(ConfigError, match="expects int"):
        apply_overrides(TrainConfig(), ["batch_size=big"])
    with pytest.raises(ConfigError, match="schedule must be"):
        apply_overrides(TrainConfig(), ["schedule=linear"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_mfu_peak_leaves_the_global_generator_as_it_was(dtype):
    """How many matrix sizes the peak measurement tries depends on the clock; a run's randomness
    after it (initialisation, unseeded sampling) must not."""
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    assert matmul_peak_flops(dtype, torch.device("cpu"), seconds=0.05) > 0
    assert torch.equal(torch.rand(4), expected)
