"""The decoder against transformers' LlamaForCausalLM, the KV cache against a full forward, and the image path."""

import dataclasses

import pytest
import torch

from opengpt4.config import ModelConfig, get_preset
from opengpt4.errors import ConfigError, ImageError
from opengpt4.model.transformer import IGNORE_INDEX, KVCache, Transformer
from opengpt4.model.vision import preprocess
from tests.helpers import tiny_config, tiny_decoder


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_transformers_llama(tie):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tiny_config(tie)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tie)).eval()
    ours = Transformer(cfg).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)  # identical names and shapes
    ids = torch.randint(0, 300, (3, 33))
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie


def test_kv_cache_matches_full_forward():
    model = tiny_decoder(1, tie=True)
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 2, 64)
        parts = [model(ids[:, :10], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(10, 24)]
    assert (torch.cat(parts, 1) - full).abs().max().item() <= 1e-5
    assert cache.lengths.tolist() == [24, 24]


def test_ragged_prefill_and_decode_match_each_row_alone():
    """Right-padded rows of different lengths in one cache give each row's own logits."""
    model = tiny_decoder(2)
    ids = torch.randint(0, 300, (3, 12))
    lengths = torch.tensor([4, 12, 7])
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 3, 32)
        last = model(ids, cache=cache, num_valid=lengths, last_only=True)[:, 0]
        nxt = torch.tensor([[5], [6], [7]])
        step = model(nxt, cache=cache)[:, 0]
        for b in range(3):
            n = int(lengths[b])
            assert (last[b] - full[b, n - 1]).abs().max() <= 1e-5
            alone = model(torch.cat([ids[b : b + 1, :n], nxt[b : b + 1]], 1))[0, -1]
            assert (step[b] - alone).abs().max() <= 1e-5
    # n samples share one prefill: selected (repeated) rows continue identically
    copy = cache.select([1, 1])
    assert copy.lengths.tolist() == [13, 13]
    assert torch.equal(copy.k[:, 0], cache.k[:, 1])


def test_cache_overflow_is_an_error():
    model = Transformer(tiny_config(True)).eval()
    cache = KVCache(model.config, 1, 8)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)


def test_loss_is_near_uniform_at_init_and_falls_with_training():
    torch.manual_seed(3)
    model = Transformer(tiny_config(True))
    model.init_weights()
    ids = torch.randint(0, 300, (4, 16))
    targets = ids.roll(-1, 1)
    targets[:, -1] = IGNORE_INDEX
    loss0 = model(ids, targets=targets)
    assert abs(loss0.item() - torch.log(torch.tensor(300.0)).item()) < 0.5  # near uniform at init
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss = model(ids, targets=targets)
        loss.backward()
        opt.step()
    assert loss.item() < loss0.item() - 1.0



def test_where_returns_the_logits_of_the_chosen_positions_only():
    # RL asks for the logits of a response's positions: the same numbers as the full forward's there.
    torch.manual_seed(4)
    model = Transformer(tiny_config(True)).eval()
    model.init_weights()
    ids = torch.randint(0, 300, (3, 12))
    where = torch.rand(3, 12) < 0.4
    full = model(ids)
    picked = model(ids, where=where)
    assert picked.shape == (int(where.sum()), 300)
    torch.testing.assert_close(picked, full[where], rtol=1e-5, atol=1e-5)

def multimodal_batch(cfg: ModelConfig, images_per_row=(0, 1, 2), length=24):
    """Rows with 0, 1 and 2 images: each image is K placeholder ids somewhere in the row."""
    k = cfg.vision.tokens_per_image
    rows = []
    for n in images_per_row:
        row = torch.randint(5, cfg.vocab_size, (length,))
        for i in range(n):
            start = 2 + i * (k + 3)
            row[start : start + k] = cfg.image_token_id
        rows.append(row)
    colors = ["red", "green", "blue"]
    from PIL import Image

    images = [Image.new("RGB", (40, 30), colors[i % 3]) for i in range(sum(images_per_row))]
    return torch.stack(rows), preprocess(images, cfg.vision)


def test_rows_with_0_1_2_images_get_gradients_and_images_change_logits():
    torch.manual_seed(4)
    cfg = dataclasses.replace(get_preset("test"), image_token_id=4)
    model = Transformer(cfg)
    model.init_weights()
    ids, pixels = multimodal_batch(cfg)
    assert pixels.shape == (3, 3, cfg.vision.image_size, cfg.vision.image_size)
    loss = model(ids, pixels, targets=ids.roll(-1, 1))
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("vision.patch_embed.weight", "projector.fc1.weight", "model.layers.0.self_attn.qkv_proj.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the images matter: other pixels give other logits at the text positions after them
    with torch.no_grad():
        a = model(ids, pixels)
        b = model(ids, torch.flip(pixels, dims=[0]))
    assert not torch.allclose(a[1:], b[1:])
    assert torch.allclose(a[0], b[0])  # row 0 has no image


def test_wrong_placeholder_count_is_a_clear_error():
    cfg = dataclasses.replace(get_preset("test"), image_token_id=4)
    model = Transformer(cfg)
    ids, pixels = multimodal_batch(cfg, (1, 1))
    ids[0, 2] = 7  # one placeholder too few
    with pytest.raises(ImageError, match="placeholder"):
        model(ids, pixels)
    with pytest.raises(ImageError, match="no images"):
        model(ids)


def test_text_model_rejects_images():
    cfg = tiny_config(True)
    model = Transformer(cfg)
    with pytest.raises(ImageError, match="does not accept images"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, 32, 32))


def test_model_config_rejects_bad_shapes_and_presets_round_trip_through_json(tmp_path):
    with pytest.raises(ConfigError, match="n_head .* must divide n_embd"):
        ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(ConfigError, match="n_kv_head"):
        ModelConfig(n_embd=384, n_head=6, n_kv_head=4)
    with pytest.raises(ConfigError, match="unknown model config keys: bogus"):
        ModelConfig.from_dict({"bogus": 1})
    for name in ["test", "d4", "d6", "d12", "smollm2-135m"]:
        cfg = get_preset(name)
        cfg.to_json(tmp_path / "c.json")
        assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    d4, d12 = get_preset("d4"), get_preset("d12")
    assert (d4.n_embd, d4.n_head, d4.n_kv_head, d4.mlp_hidden) == (256, 4, 2, 704)
    assert (d12.n_embd, d12.n_head, d12.n_kv_head) == (768, 12, 6)
    assert get_preset("smollm2-135m").num_params() == 134_515_008  # SmolLM2-135M's published count
    with pytest.raises(ConfigError, match="unknown model preset"):
        get_preset("d99")


def test_test_preset_is_under_200k_params_and_takes_a_multimodal_step():
    cfg = dataclasses.replace(get_preset("test"), image_token_id=4)
    model = Transformer(cfg)
    model.init_weights()
    assert model.num_params() < 200_000
    ids, pixels = multimodal_batch(cfg, (1, 0, 1, 0), length=64)
    model(ids, pixels, targets=ids).backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_match_plain_and_never_go_stale(dtype):
    torch.manual_seed(5)
    model = Transformer(tiny_config(False)).to(dtype).eval()
    model.init_weights()
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        plain = model(ids).float()
        if model.pack_for_cpu_inference(only_if_faster=False) == 0:
            pytest.skip(f"oneDNN cannot pack {dtype} weights on this CPU")
        packed = model(ids).float()
        tol = 1e-4 if dtype == torch.float32 else 0.1
        assert (packed - plain).abs().max() <= tol
        model.lm_head.weight.mul_(2)  # an in-place update makes the packed copy stale: it must not be used
        assert torch.allclose(model(ids).float(), 2 * plain, atol=2 * tol)
    loss = model(ids, targets=ids)  # with autograd on, the plain weights are used and get gradients
    loss.backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_padding_past_the_cache_end_never_overwrites_the_last_real_token(tiny_model):
    """Row 0's real tokens fill the cache exactly while its padding (the batch is as long as row
    1's chunk) runs past the end: that padding must not land on row 0's last slot."""
    torch.manual_seed(1)
    a, b = torch.randint(3, 300, (6,)), torch.randint(3, 300, (5,))
    cache = KVCache(tiny_model.config, 2, 6)
    with torch.no_grad():
        first = torch.stack([a[:3], torch.cat([b[:1], b[:2]])])
        tiny_model(first, cache=cache, num_valid=torch.tensor([3, 1]))
        second = torch.stack([torch.cat([a[3:], a[:1]]), b[1:5]])  # row 0: 3 real + 1 padding past slot 5
        tiny_model(second, cache=cache, num_valid=torch.tensor([3, 4]))
        alone = KVCache(tiny_model.config, 1, 6)
        tiny_model(a[None], cache=alone)
    assert cache.lengths.tolist() == [6, 5]
    assert torch.allclose(cache.k[:, 0, :, :6], alone.k[:, 0, :, :6], atol=1e-5)


def test_packing_by_measurement_packs_whole_dtype_groups_and_keeps_the_logits():
    """The default packs a dtype's weights only where the packed product measured faster: all
    of them or none, and either way the logits are the plain ones."""
    model = tiny_decoder(6)
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        plain = model(ids)
        packed = model.pack_for_cpu_inference()
        assert packed in (0, 2 * model.config.n_layer * 2 + 1)  # qkv, o, gate_up, down per layer + the head
        assert (model(ids) - plain).abs().max() <= 1e-4
