"""The `opengpt4` command as users and scripts call it: real subprocesses on a tiny checkpoint."""

import dataclasses
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from opengpt4.config import get_preset
from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.model.checkpoint import save_checkpoint
from opengpt4.model.transformer import Transformer


def run_cli(*args, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", *args], capture_output=True, text=True,
                          input=input, env=env, timeout=120)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_model, tiny_tokenizer):
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "tiny", tiny_model, tiny_tokenizer)


def test_generate_prints_only_the_completion(ckpt, tiny_model, tiny_tokenizer):
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "the cat", "--system", "be brief",
                "--max-tokens", "8", "--temperature", "0", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    engine = Engine(tiny_model, tiny_tokenizer)
    prompt = engine.chat_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}])
    [[expected]] = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0))
    assert r.stdout == expected.text + "\n"


def test_generate_raw_with_a_seed_prints_the_same_sample_every_run(ckpt, tiny_tokenizer):
    a = run_cli("generate", "--model", str(ckpt), "--prompt", "the cat", "--raw", "--max-tokens", "6",
                "--temperature", "1", "--seed", "7")
    b = run_cli("generate", "--model", str(ckpt), "--prompt", "the cat", "--raw", "--max-tokens", "6",
                "--temperature", "1", "--seed", "7")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_generate_takes_an_image_and_names_a_bad_one_in_one_line(ckpt, tmp_path):
    from PIL import Image

    good = tmp_path / "red.png"
    Image.new("RGB", (16, 16), "red").save(good)
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "what colour?", "--image", str(good), "--max-tokens", "3")
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "what colour?", "--image", str(bad))
    assert r.returncode == 1 and "bad.png" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_chat_reads_turns_from_a_pipe_and_reset_clears_the_conversation(ckpt):
    r = run_cli("chat", "--model", str(ckpt), "--system", "be brief", "--max-tokens", "5",
                input="hello there\n/reset\nthe cat sat\n")
    assert r.returncode == 0, r.stderr
    assert ">>> hello there" in r.stdout and ">>> the cat sat" in r.stdout and "(conversation cleared)" in r.stdout


class Output:
    """A running command's stdout, read as it comes (the chat flushes every piece it writes)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.data = proc, b""

    def wait_for(self, marker: bytes, after: int = 0, timeout: float = 120) -> int:
        """Read until `marker` shows at or after byte `after`; returns the index just past it."""
        deadline = time.monotonic() + timeout
        while (found := self.data.find(marker, after)) < 0:
            self.read(deadline, marker)
        return found + len(marker)

    def wait_for_more(self, size: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.data) <= size:
            self.read(deadline, b"more output")

    def read(self, deadline: float, wanted: bytes) -> None:
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
        assert chunk, f"waited in vain for {wanted!r}; output so far ends {self.data[-300:]!r}"
        self.data += chunk


@pytest.fixture(scope="module")
def chatty_ckpt(tmp_path_factory, tiny_tokenizer):
    """A tiny text model with a 1024-token context whose greedy replies run to max_tokens (seed 2):
    long enough to be interrupted."""
    torch.manual_seed(2)
    cfg = dataclasses.replace(get_preset("test"), vocab_size=tiny_tokenizer.vocab_size, vision=None,
                              image_token_id=None, max_seq_len=1024, tie_embeddings=False)
    model = Transformer(cfg)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.mul_(5)
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "chatty", model.eval(), tiny_tokenizer)


def test_chat_ctrl_c_stops_the_reply_not_the_chat_and_twice_at_the_prompt_quits(chatty_ckpt):
    # SIGINT back to its default in the child: a test run started in the background (`make test &`)
    # ignores SIGINT, the child would inherit that, and Python then installs no KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "opengpt4.cli", "chat", "--model", str(chatty_ckpt),
                             "--max-tokens", "300", "--dtype", "float32"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # The next lines wait in the pipe: the chat reads each once the reply before it is over.
        proc.stdin.write(b"hello\nthe cat sat\n/reset\n")
        proc.stdin.flush()
        out = Output(proc)
        reply_starts = out.wait_for(b">>> hello\n")
        out.wait_for_more(reply_starts)  # the first reply is being written: stop it
        proc.send_signal(signal.SIGINT)
        stopped = out.wait_for(b" (stopped)\n", reply_starts)
        second = out.wait_for(b">>> the cat sat\n", stopped)
        cleared = out.wait_for(b"(conversation cleared)\n", second)
        proc.send_signal(signal.SIGINT)  # at the prompt: a hint, the chat goes on
        out.wait_for(b"(Ctrl-C again, /exit or Ctrl-D quits)\n", cleared)
        proc.send_signal(signal.SIGINT)  # a second one in a row quits
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    answer = out.data[second:cleared - len(b"(conversation cleared)\n")]
    assert answer.strip() and b"(stopped)" not in answer  # the turn after the stop was answered in full
    assert out.data.count(b"(stopped)") == 1


def test_run_refuses_a_port_in_use_in_one_line_before_loading_the_model(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("run", "--port", str(port), env={**os.environ, "OPENGPT4_HOME": str(tmp_path)})
    assert r.returncode == 1 and r.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: the port is already in use (stop the other server, "
        "or pick another port: --port P, or `make run PORT=P`)\n")
    assert not (tmp_path / "models").exists()  # refused before SmolLM2 was imported, let alone loaded


def test_run_serves_without_keys_so_it_refuses_a_host_that_is_not_loopback(tmp_path):
    r = run_cli("run", "--host", "0.0.0.0", env={**os.environ, "OPENGPT4_HOME": str(tmp_path)})
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "opengpt4 serve" in r.stderr, r.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_port_and_host_on():
    root = Path(__file__).resolve().parents[1]
    # --no-print-directory: under `make test` the inner make would add "Entering directory" lines.
    r = subprocess.run(["make", "--no-print-directory", "-n", "run", "PORT=8123", "HOST=::1"], cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(line.endswith("opengpt4 run --port 8123 --host ::1") for line in r.stdout.splitlines()), r.stdout


def test_context_overflow_is_a_clear_error(ckpt):
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "the cat " * 200, "--max-tokens", "5")
    assert r.returncode == 1 and "maximum context length is 128 tokens" in r.stderr


@pytest.mark.parametrize("verb", [[], ["import", "gguf"], ["import", "hf"], ["export", "hf"], ["info"],
                                  ["generate"], ["chat"], ["run"]])
def test_help_describes_each_verb(verb):
    r = run_cli(*verb, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: opengpt4")


def test_info_prints_the_model_config_and_tokens_per_image(ckpt):
    r = run_cli("info", str(ckpt))
    assert r.returncode == 0, r.stderr
    assert "n_layer" in r.stdout and "tokens per image" in r.stdout


def test_tiny_model_engine_is_deterministic_across_processes(ckpt):
    outs = {run_cli("generate", "--model", str(ckpt), "--prompt", "seven blue", "--max-tokens", "5").stdout
            for _ in range(2)}
    assert len(outs) == 1
    assert torch.get_num_threads() >= 1
