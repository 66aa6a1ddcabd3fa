"""End to end with real weights, through the `opengpt4` command: SmolLM2 chat, and a transformers-saved Llama."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from opengpt4.model.checkpoint import load_checkpoint
from tests.helpers import CONFIDENT_DIGITS, digit_data_url, wait_until_serving

os.environ["HF_HUB_OFFLINE"] = "1"


def run_cli(*args, home=None, input=None):
    env = {**os.environ, **({"OPENGPT4_HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", *args], capture_output=True, text=True,
                          input=input, env=env, timeout=600)


def test_smollm2_knows_the_capital_of_france(smollm2_home):
    r = run_cli("generate", "--model", "smollm2-135m-instruct", "--prompt", "What is the capital of France?",
                "--max-tokens", "30", home=smollm2_home)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout


def test_chat_holds_a_multi_turn_conversation_through_a_pipe(smollm2_home):
    """`opengpt4 chat` holds a multi-turn conversation in the terminal."""
    r = run_cli("chat", "--model", "smollm2-135m-instruct", "--max-tokens", "30", home=smollm2_home,
                input="What is the capital of France?\nAnd of Italy?\n")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split(">>> ")[1:]
    assert "Paris" in first and "Rome" in second, r.stdout


def test_make_run_serves_smollm2_and_the_vision_model_to_the_openai_client_and_the_ui(smollm2_home):
    """`opengpt4 run` (what `make run` calls): the shipped vision model (first: the page's default)
    and the imported SmolLM2 behind the API and the chat UI."""
    import socket
    import urllib.request

    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OPENGPT4_HOME": str(smollm2_home)}
    server = subprocess.Popen([sys.executable, "-m", "opengpt4.cli", "run", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base + "/healthz", server, timeout=120)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["smollm2-135m-vision", "smollm2-135m-instruct"]
        model = client.models.retrieve("smollm2-135m-instruct")
        r = client.chat.completions.create(model=model.id, temperature=0, max_tokens=30,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(model=model.id, temperature=0, max_tokens=30, stream=True,
                                                messages=[{"role": "user", "content": "And the capital of Italy?"}])
        assert "Rome" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        r = client.chat.completions.create(model=model.id, temperature=0, max_tokens=80,
                                           response_format={"type": "json_object"}, messages=[
                                               {"role": "user", "content": "Describe a cat as JSON with keys name and age."}])
        assert isinstance(json.loads(r.choices[0].message.content), dict)
        # The openai client sends an image part; the vision model names the held-out digit in it
        # (two different digits: a model blind to the image cannot answer both). SmolLM2 alone
        # refuses the part with a 400 that names it.
        for index, digit in CONFIDENT_DIGITS:
            image = [{"type": "image_url", "image_url": {"url": digit_data_url(index)}},
                     {"type": "text", "text": "What digit is this?"}]
            r = client.chat.completions.create(model="smollm2-135m-vision", temperature=0, max_tokens=8,
                                               messages=[{"role": "user", "content": image}])
            assert re.search(rf"\b{digit}\b", r.choices[0].message.content), (digit, r.choices[0].message.content)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=8,
                                           messages=[{"role": "user", "content": image}])
        assert (refused.value.body["param"], refused.value.body["code"]) == ("messages[0].content[0]",
                                                                             "image_not_supported")
        with urllib.request.urlopen(base + "/", timeout=10) as page:
            assert b"<html" in page.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_smollm2_follows_a_system_message(smollm2_home):
    pirate_words = ("arr", "aye", "matey", "pirate", "scurvy", "landlubber")
    replies = {}
    for system in ("You are a pirate. Always talk like a pirate.", None):
        extra = ["--system", system] if system else []
        r = run_cli("generate", "--model", "smollm2-135m-instruct", *extra, "--prompt", "Hello, who are you?",
                    "--max-tokens", "30", home=smollm2_home)
        assert r.returncode == 0, r.stderr
        replies[system is not None] = r.stdout.lower()
    assert any(w in replies[True] for w in pirate_words), replies
    assert not any(w in replies[False] for w in pirate_words), replies


def test_transformers_llama_imported_generates_the_same_greedy_continuation(tmp_path):
    transformers = pytest.importorskip("transformers")
    from opengpt4.tokenizer import Tokenizer
    from tests.helpers import corpus

    tok = Tokenizer.train(corpus(), vocab_size=400)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, initializer_range=0.2,
        tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, bos_token="<|endoftext|>",
                                         eos_token="<|im_end|>", pad_token="<|pad|>").save_pretrained(tmp_path / "hf")
    r = run_cli("import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours"))
    assert r.returncode == 0, r.stderr
    _, ours_tok = load_checkpoint(tmp_path / "ours")

    checked = 0
    for prompt in ["the cat sat on", "seven blue birds", "def add(a, b):"]:
        ids = ours_tok.encode(prompt, add_bos=ours_tok.add_bos)
        out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                          eos_token_id=ours_tok.stop_ids, pad_token_id=ours_tok.pad_id)[0, len(ids):].tolist()
        expected = ours_tok.decode(out, skip_special=True)
        r = run_cli("generate", "--model", str(tmp_path / "ours"), "--prompt", prompt, "--raw",
                    "--max-tokens", "20", "--temperature", "0", "--dtype", "float32")
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected + "\n"
        checked += len(out)
    assert checked >= 30  # the continuations are real, not empty


def test_the_shipped_vision_model_is_built_once_and_again_when_the_package_ships_another_delta(
        smollm2, tmp_path, monkeypatch):
    """`smollm2-135m-vision` names SmolLM2 + the delta in the package (vision/bundle.py): built on
    first use, reused while the delta is the same, rebuilt when it is not (a newer package's)."""
    import hashlib

    from opengpt4.model.checkpoint import resolve_model
    from opengpt4.vision.bundle import SHIPPED_DELTA

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2-135m-instruct").symlink_to(smollm2)  # SmolLM2 imported already
    monkeypatch.setenv("OPENGPT4_HOME", str(tmp_path))
    built = resolve_model("smollm2-135m-vision")
    config = json.loads((built / "config.json").read_text())
    assert config["vision_delta"]["sha256"] == hashlib.sha256(SHIPPED_DELTA.read_bytes()).hexdigest()
    assert config["model"]["vision"] is not None and config["tokenizer"]["image_token"] == "<|image|>"
    weights = built / "model.safetensors"
    first = weights.stat().st_ino
    assert resolve_model("smollm2-135m-vision") == built and weights.stat().st_ino == first  # not rebuilt
    config["vision_delta"]["sha256"] = "0" * 64  # as if built from another package's delta
    (built / "config.json").write_text(json.dumps(config))
    assert resolve_model("smollm2-135m-vision") == built and weights.stat().st_ino != first  # rebuilt
    assert json.loads((built / "config.json").read_text())["vision_delta"] == {
        "file": SHIPPED_DELTA.name, "sha256": hashlib.sha256(SHIPPED_DELTA.read_bytes()).hexdigest()}
