"""The README's commands, run as written: the ```bash blocks of its sections, command by command,
with this virtualenv's `opengpt4` first on PATH and $OPENGPT4_HOME and the working directory in a
temp dir.

A command is changed only through the tables below (sizes, so that a run takes seconds; the
server's address; the placeholders of the Command line synopsis): a README edit that breaks a
command fails here.
"""

import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # .venv/bin: the `opengpt4` the README means

# Sizes only: a smaller corpus, a few steps instead of minutes, a few questions.
SIZES = {"--preset mini": "--preset test", "--max-minutes 10": "--max-steps 5", "--limit 500": "--limit 5"}
# The README's server, on loopback and a free port ({port}).
SERVER = {"--host 0.0.0.0": "--host 127.0.0.1", "--port 8000": "--port {port}", "127.0.0.1:8000": "127.0.0.1:{port}"}
# Synopsis lines of the Command line section that run, in this order (an import needs the export
# first), their optional [...] parts left out and their placeholders filled in.
SYNOPSIS_RUNS = ("opengpt4 export hf", "opengpt4 import hf", "opengpt4 info")
PLACEHOLDERS = {"MODEL": "runs/d4", "DIR": "export/d4"}
# Commands of the Pretraining section that do not run here, and why. Of Serving and Evals, the
# tests below pick the commands they run; not run: `eval run arc_easy` at an endpoint, `eval run
# my-eval` (the reader's own registry) and `eval compare RUN_A RUN_B` (the reader's own runs).
NOT_RUN = {"torchrun ": "two ranks of d4: tests/test_train.py runs DDP and FSDP under torchrun"}


def section_commands(title: str) -> list[str]:
    """The commands of the ```bash blocks in the README section `## title`, comment lines left out.
    A command goes on over the next line after a backslash or inside an open quote (curl's JSON)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README.read_text(), re.M | re.S)
    assert match, f"the README has no section '## {title}'"
    commands, pending = [], ""
    for block in re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S):
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\") or not _quotes_closed(pending):
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                commands.append(pending.strip())
            pending = ""
    assert commands, f"the README section '{title}' has no bash commands"
    return commands


def _quotes_closed(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # "No closing quotation"
        return False
    return True


def command(title: str, start: str) -> str:
    """The one command of a section that starts with `start`."""
    [found] = [c for c in section_commands(title) if c.startswith(start)]
    return found


def substitute(text: str, table: dict[str, str], **values: str) -> str:
    for old, new in table.items():
        text = text.replace(old, new.format(**values))
    return text


def fill_in(synopsis: str) -> str:
    text = re.sub(r"\s*\[[^\]]*\](\.\.\.)?", "", synopsis.split("#")[0]).strip()
    return re.sub(r"\b[A-Z]+\b", lambda m: PLACEHOLDERS[m.group()], text)


class Shell:
    """bash in a working directory of its own, with an $OPENGPT4_HOME of its own."""

    def __init__(self, root: Path) -> None:
        self.cwd, self.home = root / "work", root / "home"
        self.cwd.mkdir()
        self.home.mkdir()
        self.env = {**os.environ, "OPENGPT4_HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def run(self, text: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-c", text], cwd=cwd or self.cwd, env=self.env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"README command failed with status {r.returncode}: {text}\n{r.stderr[-3000:]}"
        return r


@pytest.fixture
def shell(tmp_path) -> Shell:
    return Shell(tmp_path)


D4_COMMANDS = 2  # the Pretraining section's data build and train: the d4 run the Post-training section starts from


@pytest.fixture(scope="module")
def d4_shell(tmp_path_factory) -> Shell:
    """A Shell whose working directory holds the d4 run of the Pretraining section's first commands,
    run as written once for the two tests that start from it (~40 s each time)."""
    shell = Shell(tmp_path_factory.mktemp("readme"))
    for text in section_commands("Pretraining in 10 minutes")[:D4_COMMANDS]:
        shell.run(substitute(text, SIZES))
    return shell


def test_pretraining_commands_and_the_synopsis_export_import_info_run_as_written(d4_shell):
    shell, results = d4_shell, {}
    for text in section_commands("Pretraining in 10 minutes")[D4_COMMANDS:]:
        if not text.startswith(tuple(NOT_RUN)):
            results[text] = shell.run(substitute(text, SIZES))
    generate = results[command("Pretraining in 10 minutes", "opengpt4 generate")]
    assert generate.stdout.endswith("\n") and not generate.stderr  # the completion (5 steps: maybe blank), only
    assert (shell.cwd / "runs" / "d4" / "loss.png").is_file()
    for start in SYNOPSIS_RUNS:
        shell.run(fill_in(command("Command line", start)))
    assert (shell.cwd / "export" / "d4" / "tokenizer_config.json").is_file()
    assert (shell.home / "models" / "d4" / "model.safetensors").is_file()  # import hf's default --out


# The Post-training section at test sizes, after the Pretraining section's d4 run; commands that
# need SmolLM2 fine-tuned (minutes per step on 2 cores) are covered by tests/test_sft.py (LoRA on a
# tiny model) and tests/test_ifeval.py (the ifeval evals on a tiny model).
POST_TRAINING_SIZES = {**SIZES, "--epochs 4": "--max-steps 2", "--out runs/rbrm": "--out runs/rbrm --max-steps 2",
                       "--data-dir data/chat": "--data-dir data/chat --limit 5"}
POST_TRAINING_NOT_RUN = ("opengpt4 sft --model smollm2-135m-instruct", "opengpt4 eval run ifeval_system")


def test_post_training_commands_run_as_written(d4_shell):
    shell = d4_shell
    ran = [text for text in section_commands("Post-training: chat data, SFT, safety graders, steerability")
           if not text.startswith(POST_TRAINING_NOT_RUN)]
    results = {text: shell.run(substitute(text, POST_TRAINING_SIZES)) for text in ran}
    assert len(ran) == 5 and (shell.cwd / "runs" / "d4-sft" / "model.safetensors").is_file()
    assert (shell.cwd / "runs" / "rbrm" / "head.safetensors").is_file()
    [constraints] = [r for t, r in results.items() if "system_constraints" in t]
    assert json.loads(constraints.stdout.splitlines()[-1])["n"] == 5


def test_every_flag_of_the_command_line_synopsis_exists(shell):
    for synopsis in section_commands("Command line"):
        if not synopsis.startswith("opengpt4 "):
            continue
        # `keys create NAME [--rpm N] | keys list | keys revoke ID`: a verb after each bar, not in `(--a | --b)`
        for alternative in re.split(r" \| (?=[a-z])", synopsis.split("#")[0].removeprefix("opengpt4 ")):
            verb = " ".join(itertools.takewhile(lambda w: w[0].isalpha() and w.replace("-", "").isalpha() and w.islower(),
                                                alternative.split()))  # `scaling lr-check`: hyphens inside a verb
            usage = shell.run(f"opengpt4 {verb} --help").stdout
            for flag in re.findall(r"--[a-z][a-z0-9-]*", alternative):
                assert re.search(rf"(?<![\w-]){flag}(?![\w-])", usage), f"`opengpt4 {verb}` has no {flag}: {synopsis}"


def test_keys_usage_and_eval_list_run_as_written(shell):
    for title, start in [("Serving", "opengpt4 keys create"), ("Serving", "opengpt4 usage"), ("Evals", "opengpt4 eval list")]:
        assert shell.run(command(title, start)).stdout.strip()


def test_serving_commands_answer_the_readme_curl_and_the_mmlu_line_runs(shell):
    """`import gguf`, `keys create`, then `serve --registry examples/registry.yaml` answers the
    README's own curl (with the key the README says to add) under the name it uses, then `usage`."""
    shell.run(command("Serving", "opengpt4 import gguf"))
    key = shell.run(command("Serving", "opengpt4 keys create")).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    serve = substitute(command("Serving", "opengpt4 serve --registry"), SERVER, port=port)
    server = subprocess.Popen(["bash", "-c", f"exec {serve}"], cwd=ROOT, env=shell.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz", server)
        curl = substitute(command("Serving", "curl "), SERVER, port=port)
        reply = json.loads(shell.run(f"{curl} -H 'Authorization: Bearer {key}'").stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert reply["model"] == "opengpt4-mini-20261129" and reply["choices"][0]["message"]["content"], reply
    usage = shell.run(command("Serving", "opengpt4 usage")).stdout
    assert "alice" in usage and "opengpt4-mini-20261129" in usage, usage

    from opengpt4.evals.benchmarks.common import default_data_dir

    mmlu = command("Evals", "opengpt4 eval run mmlu")
    if not (default_data_dir() / "mmlu").is_dir():
        pytest.skip(f"`{mmlu}` needs the MMLU files: none under {default_data_dir()} (the README's Data section)")
    report = json.loads(shell.run(substitute(mmlu, SIZES)).stdout.splitlines()[-1])  # the report: last on stdout
    assert report["n"] == 5 and 0 <= report["score"] <= 1
