"""The `opengpt4` command as users and scripts call it: real subprocesses on a tiny checkpoint."""

import subprocess
import sys

import pytest
import torch

from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.model.checkpoint import save_checkpoint


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
