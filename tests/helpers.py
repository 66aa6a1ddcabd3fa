"""Plain helpers the test modules share (fixtures live in conftest.py): a word list and corpus,
a live uvicorn server, an OpenAI Evals-style registry on disk, polling for late effects, and
held-out handwritten digits for the shipped vision model."""

import contextlib
import json
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch

from opengpt4.config import ModelConfig
from opengpt4.model.transformer import Transformer

WORDS = ("the cat sat on a mat while seven blue birds sang about 42 apples and 1337 pears in Paris "
         "def add(a, b): return a + b # héllo wörld naïve café").split()


# Held-out scans (index into vision/data.py's digit_split(0) held-out split, digit) the shipped vision
# model names with the most confidence (first-token probability >= 0.99 in float32, measured with
# the shipped delta): a test that asks about them checks the image reaches the model, not its
# accuracy (that is `opengpt4 eval run visual_digits`). Two different digits, so no blind guess
# answers both. Re-pick them when the shipped delta changes.
CONFIDENT_DIGITS = ((18, 0), (79, 7))


def digit_png(index: int) -> bytes:
    """Held-out scan `index` as the PNG a person would attach (the 64x64 rendering the model trains on)."""
    import io

    from opengpt4.vision.data import digit_image, digit_split

    buffer = io.BytesIO()
    digit_image(digit_split(0)[2][index]).save(buffer, "PNG")
    return buffer.getvalue()


def digit_data_url(index: int) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(digit_png(index)).decode()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(n)]


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """A real uvicorn server for `app` on a free loopback port; yields its /v1 base URL."""
    import uvicorn

    with socket.socket() as s:  # a free port; the tiny race with another process is acceptable in tests
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # uvicorn offers no event to wait on
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def write_registry(root, evals_yaml, samples=None, modelgraded=None):
    """A user eval registry in OpenAI Evals' layout: evals/mine.yaml, data/<rel>.jsonl, modelgraded/mg.yaml."""
    (root / "evals").mkdir(parents=True, exist_ok=True)
    (root / "evals" / "mine.yaml").write_text(evals_yaml)
    for rel, rows in (samples or {}).items():
        path = root / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if modelgraded:
        (root / "modelgraded").mkdir(exist_ok=True)
        (root / "modelgraded" / "mg.yaml").write_text(modelgraded)
    return root


def wait_for(condition, timeout: float = 5.0) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; returns its last value.
    For effects a server records just after a response's last byte (ledger rows, metrics)."""
    deadline = time.monotonic() + timeout
    while not (ok := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return ok


def kill_after_checkpoint(command: list[str], out: Path, step: int, env: dict | None = None) -> int:
    """Run `command` (a training run writing checkpoints to `out`), SIGKILL it once a checkpoint
    at `step` or later is on disk, and return the step of the checkpoint it left."""
    state = out / "trainer_state.json"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: state.is_file() and json.loads(state.read_text())["step"] >= step, timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return json.loads(state.read_text())["step"]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll `url` until it answers, failing at once (with its stderr) if `process` exits: a
    server process loads its model before it listens, and offers no event to wait on."""

    def answers() -> bool:
        assert process.poll() is None, f"the server exited: {process.stderr.read()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    assert wait_for(answers, timeout), f"{url} did not answer within {timeout} s"


def endless_decoder(tokenizer, max_seq_len: int = 4096) -> Transformer:
    """A `test`-preset decoder that never ends a reply by itself: its stop tokens' logits are 0
    while the others spread wide (std ~5), so greedy and seeded decoding run to max_tokens and a
    request lasts as long as a test needs (about 1 ms per token on one core)."""
    import dataclasses

    from opengpt4.config import get_preset

    cfg = dataclasses.replace(get_preset("test"), vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_id,
                              max_seq_len=max_seq_len, tie_embeddings=False)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0 / (model.lm_head.weight.std() * cfg.n_embd**0.5))
        model.lm_head.weight[tokenizer.stop_ids] = 0
    return model


def chat_decoder(tokenizer, max_seq_len: int = 1024) -> Transformer:
    """conftest's `tiny_model` with room for a tools system prompt (the `test` preset has 128
    positions): random weights, so any structure in its output is a grammar's."""
    import dataclasses

    from opengpt4.config import get_preset

    cfg = dataclasses.replace(get_preset("test"), vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_id,
                              max_seq_len=max_seq_len, tie_embeddings=False)
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.mul_(5)
    return model.eval()


def tiny_config(tie: bool) -> ModelConfig:
    """A text-only decoder small enough to build in milliseconds (vocabulary 300, 2 layers, width 64)."""
    return ModelConfig(vocab_size=300, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp_hidden=96,
                       max_seq_len=64, rope_theta=500.0, tie_embeddings=tie)


def tiny_decoder(seed: int, tie: bool = False) -> Transformer:
    """`tiny_config`'s decoder with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    model = Transformer(tiny_config(tie)).eval()
    model.init_weights()
    return model
