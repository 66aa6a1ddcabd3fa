"""Checkpoint directories: round trip, atomic writes, and one-line errors that name what is wrong."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from opengpt4.errors import CheckpointError
from opengpt4.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def ckpt(tmp_path, tiny_model, tiny_tokenizer):
    return save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_tokenizer)


def test_saved_checkpoint_loads_back_with_identical_logits_and_tokens(ckpt, tiny_model, tiny_tokenizer):
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    model, tok = load_checkpoint(ckpt)
    ids = torch.tensor([tiny_tokenizer.encode("the cat sat on a mat")])
    with torch.no_grad():
        assert torch.equal(model(ids), tiny_model(ids))
    assert tok.encode("naïve café 🌍") == tiny_tokenizer.encode("naïve café 🌍")
    assert tok.tokens_per_image == tiny_model.config.vision.tokens_per_image
    assert json.loads((ckpt / "config.json").read_text())["format_version"] == 1
    # no pickle anywhere: the weights file is plain safetensors
    assert set(load_file(ckpt / "model.safetensors")) >= {"model.embed_tokens.weight", "vision.pos_row"}


def test_tied_checkpoint_stores_the_embedding_once(tmp_path, tiny_tokenizer):
    from opengpt4.config import ModelConfig
    from opengpt4.model.transformer import Transformer

    model = Transformer(ModelConfig(vocab_size=tiny_tokenizer.vocab_size, n_layer=1, n_embd=32, n_head=2,
                                    n_kv_head=1, mlp_hidden=64, max_seq_len=32))
    path = save_checkpoint(tmp_path / "tied", model, tiny_tokenizer)
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    loaded, _ = load_checkpoint(path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path, tiny_model, tiny_tokenizer):
    target = tmp_path / "ckpt"
    save_checkpoint(target, tiny_model, tiny_tokenizer, extra={"step": 1})
    save_checkpoint(target, tiny_model, tiny_tokenizer, extra={"step": 2})
    assert json.loads((target / "config.json").read_text())["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]

    def crash(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(target, tiny_model, tiny_tokenizer, extra={"step": 3}, write_extra=crash)
    assert json.loads((target / "config.json").read_text())["step"] == 2  # the old one survives whole
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_missing_and_corrupt_files_are_named(ckpt):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(ckpt.parent / "nope")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        load_checkpoint(ckpt)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_checkpoint(ckpt)


def test_mismatched_config_and_weights_name_the_tensor(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["mlp_hidden"] = 256
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"down_proj\.weight has shape \(64, 128\) but the config implies \(64, 256\)"):
        load_checkpoint(ckpt)
    config["model"]["mlp_hidden"] = 128
    config["model"]["n_layer"] = 3
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.2\."):
        load_checkpoint(ckpt)
    config["model"]["n_layer"] = 2
    (ckpt / "config.json").write_text(json.dumps(config))
    state = load_file(ckpt / "model.safetensors")
    state["model.extra.weight"] = torch.zeros(2)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensor model\.extra\.weight"):
        load_checkpoint(ckpt)
    config["model"]["n_head"] = 3
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid model config: n_head"):
        load_checkpoint(ckpt)


def test_missing_or_corrupt_tokenizer_json_is_named_in_the_error(ckpt):
    (ckpt / "tokenizer.json").write_text("[]")
    with pytest.raises(Exception, match=r"tokenizer\.json"):
        load_checkpoint(ckpt)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(Exception, match=r"tokenizer\.json"):
        load_checkpoint(ckpt)


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", *args], capture_output=True, text=True, **kw)


def test_cli_errors_are_one_line_without_traceback(ckpt, tmp_path):
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    for args in (["info", str(tmp_path / "missing")],
                 ["generate", "--model", str(ckpt), "--prompt", "hi"],
                 ["generate", "--model", str(tmp_path / "missing"), "--prompt", "hi"]):
        r = run_cli(*args)
        assert r.returncode == 1
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
