"""Vision tower, projector, placeholder scatter, and image loading."""

import base64
import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from opengpt4.config import VisionConfig, get_preset
from opengpt4.errors import ConfigError, ImageError
from opengpt4.model.multimodal import Projector, pixel_shuffle, scatter_image_features
from opengpt4.model.vision import MAX_ENCODED_BYTES, VisionEncoder, load_image, preprocess

CFG = get_preset("test")
VCFG = CFG.vision
IMAGE_ID = 511


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def noise_image(seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


# --- encoder and projector ---------------------------------------------------------------


def test_encoder_gives_one_feature_per_patch_even_for_an_empty_batch():
    torch.manual_seed(0)
    enc = VisionEncoder(VCFG)
    grid = VCFG.grid_size
    assert enc(torch.randn(2, 3, VCFG.image_size, VCFG.image_size)).shape == (2, grid * grid, VCFG.width)
    assert enc(torch.empty(0, 3, VCFG.image_size, VCFG.image_size)).shape == (0, grid * grid, VCFG.width)


def test_encoder_rejects_wrong_pixel_shape():
    enc = VisionEncoder(VCFG)
    with pytest.raises(ImageError, match=r"\(N, 3, 32, 32\), got \(1, 3, 16, 16\)"):
        enc(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ImageError, match="got \\(3, 32, 32\\)"):
        enc(torch.zeros(3, 32, 32))


def test_encoder_attention_is_bidirectional_and_position_aware():
    torch.manual_seed(0)
    enc = VisionEncoder(VCFG).eval()
    s, p = VCFG.image_size, VCFG.patch_size
    x = torch.randn(1, 3, s, s)
    y = x.clone()
    y[..., -p:, -p:] += 1.0  # change only the last patch
    with torch.no_grad():
        fx, fy = enc(x), enc(y)
    assert not torch.allclose(fx[0, 0], fy[0, 0])  # the first patch sees the last one
    # Identical patches at different grid positions get different features.
    with torch.no_grad():
        f = enc(torch.zeros(1, 3, s, s))
    assert not torch.allclose(f[0, 0], f[0, 1]) and not torch.allclose(f[0, 0], f[0, VCFG.grid_size])


def test_encoder_init_has_unit_norms_zero_biases_and_small_mlp_weights():
    enc = VisionEncoder(VCFG)
    assert torch.equal(enc.norm.weight, torch.ones(VCFG.width))
    assert torch.equal(enc.blocks[0].attn.qkv.bias, torch.zeros(3 * VCFG.width))
    assert 0.015 < enc.blocks[0].mlp.fc1.weight.std().item() < 0.025
    assert enc.blocks[0].mlp.fc1.out_features == int(VCFG.width * VCFG.mlp_ratio)


def test_conv_stem_halves_the_image_per_layer_down_to_the_patch_grid_and_keeps_the_signal():
    """The convolutional stem gives the patch conv's grid (log2(patch) stride-2 convs, then a 1x1), and
    its He init keeps the activations' scale through the stack (N(0, 0.02) would shrink it ~20x a layer)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(VCFG, conv_stem=True)
    enc = VisionEncoder(cfg)
    convs = [m for m in enc.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * (cfg.patch_size.bit_length() - 1) + [(1, 1)]
    x = torch.randn(4, 3, cfg.image_size, cfg.image_size)
    assert enc.patch_embed(x).shape == (4, cfg.width, cfg.grid_size, cfg.grid_size)
    assert enc(x).shape == (4, cfg.grid_size**2, cfg.width)
    assert enc.patch_embed(x).std() > 0.3
    with pytest.raises(ConfigError, match="power of 2"):
        VisionConfig(image_size=48, patch_size=6, conv_stem=True)


def test_projector_gives_tokens_per_image_vectors_of_the_model_width():
    proj = Projector(VCFG, CFG.n_embd)
    out = proj(torch.randn(3, VCFG.grid_size**2, VCFG.width))
    assert out.shape == (3, VCFG.tokens_per_image, CFG.n_embd)
    assert VCFG.tokens_per_image == 4  # a 4x4 patch grid shuffled by 2


def test_pixel_shuffle_packs_each_2x2_patch_block_into_one_token_row_major():
    # 4x4 grid, patch p carries channels (10p, 10p+1): token t holds its 2x2 block row-major.
    feats = torch.stack([torch.arange(16) * 10, torch.arange(16) * 10 + 1], dim=-1)[None].float()
    out = pixel_shuffle(feats, grid=4, s=2)
    assert out.shape == (1, 4, 8)
    assert out[0, 0].tolist() == [0, 1, 10, 11, 40, 41, 50, 51]  # patches 0, 1, 4, 5
    assert out[0, 1].tolist() == [20, 21, 30, 31, 60, 61, 70, 71]  # patches 2, 3, 6, 7
    assert out[0, 2].tolist()[::2] == [80, 90, 120, 130]  # patches 8, 9, 12, 13
    assert out[0, 3].tolist()[::2] == [100, 110, 140, 150]  # patches 10, 11, 14, 15


def test_projector_is_shuffle_then_mlp():
    torch.manual_seed(0)
    proj = Projector(VCFG, CFG.n_embd)
    x = torch.randn(2, VCFG.grid_size**2, VCFG.width)
    expected = proj.fc2(torch.nn.functional.gelu(proj.fc1(pixel_shuffle(x, VCFG.grid_size, VCFG.pixel_shuffle))))
    torch.testing.assert_close(proj(x), expected)


# --- scatter -----------------------------------------------------------------------------


def test_scatter_places_image_features_in_order_and_gradients_reach_encoder():
    torch.manual_seed(0)
    k, d, t = VCFG.tokens_per_image, CFG.n_embd, 16
    enc, proj = VisionEncoder(VCFG), Projector(VCFG, d)
    ids = torch.randint(0, IMAGE_ID, (3, t))
    ids[1, 3 : 3 + k] = IMAGE_ID  # sequence 0 has no image, sequence 1 one, sequence 2 two
    ids[2, 1 : 1 + k] = IMAGE_ID
    ids[2, 9 : 9 + k] = IMAGE_ID
    pixels = preprocess([noise_image(1), noise_image(2), noise_image(3)], VCFG)
    feats = proj(enc(pixels))
    embeds = torch.randn(3, t, d, requires_grad=True)

    out = scatter_image_features(embeds, ids, feats, IMAGE_ID)

    assert out.shape == embeds.shape
    torch.testing.assert_close(out[1, 3 : 3 + k], feats[0])
    torch.testing.assert_close(out[2, 1 : 1 + k], feats[1])
    torch.testing.assert_close(out[2, 9 : 9 + k], feats[2])
    text = ids != IMAGE_ID
    assert torch.equal(out[text], embeds[text])
    assert not torch.allclose(feats[1], feats[2])  # distinct images, so order is really checked

    out.pow(2).sum().backward()
    for name, param in [*enc.named_parameters(), *proj.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert embeds.grad[text].abs().min() > 0
    assert torch.equal(embeds.grad[~text], torch.zeros_like(embeds.grad[~text]))


def test_scatter_without_images_is_identity_and_casts_features_to_embeds():
    embeds = torch.randn(2, 5, 8)
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert torch.equal(scatter_image_features(embeds, ids, torch.empty(0, 4, 8), IMAGE_ID), embeds)
    ids[0, 1:3] = IMAGE_ID
    feats = torch.ones(1, 2, 8, dtype=torch.bfloat16)
    out = scatter_image_features(embeds, ids, feats, IMAGE_ID)
    assert out.dtype == torch.float32 and torch.equal(out[0, 1:3], torch.ones(2, 8))


def test_scatter_placeholder_count_mismatch_is_a_clear_error():
    embeds = torch.randn(2, 10, 8)
    ids = torch.zeros(2, 10, dtype=torch.long)
    ids[0, :4] = IMAGE_ID
    ids[1, :3] = IMAGE_ID
    with pytest.raises(ImageError, match=r"found 7 <\|image\|> placeholder tokens.*2 images x 4 tokens per image = 8"):
        scatter_image_features(embeds, ids, torch.randn(2, 4, 8), IMAGE_ID)
    with pytest.raises(ImageError, match="exactly 4 placeholders"):
        scatter_image_features(embeds, torch.zeros_like(ids), torch.randn(1, 4, 8), IMAGE_ID)


def test_scatter_feature_width_mismatch_is_a_clear_error():
    ids = torch.full((1, 4), IMAGE_ID)
    with pytest.raises(ImageError, match="16 wide but the token embeddings are 8 wide"):
        scatter_image_features(torch.randn(1, 4, 8), ids, torch.randn(1, 4, 16), IMAGE_ID)


# --- loading -----------------------------------------------------------------------------


def test_load_image_accepts_pil_arrays_bytes_paths_and_data_urls(tmp_path):
    img = noise_image(0, size=6)
    rgb = np.asarray(img)
    data = png_bytes(img)
    path = tmp_path / "img.png"
    path.write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    for src in [img, rgb, rgb.astype(np.float64) / 255, data, bytearray(data), path, str(path), url]:
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (6, 6)
        assert np.array_equal(np.asarray(out), rgb), type(src)


def test_load_image_makes_grayscale_rgb_and_composites_alpha_on_white():
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    for src in [gray, Image.fromarray(gray), gray.astype(np.float32) / 255]:
        out = np.asarray(load_image(src))
        assert out.shape == (2, 2, 3) and np.array_equal(out[..., 1], gray) and np.array_equal(out[..., 2], gray)
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque red stays red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent becomes white, not black
    out = np.asarray(load_image(rgba))
    assert out[0, 0].tolist() == [200, 10, 10] and out[0, 1].tolist() == [255, 255, 255]
    assert np.array_equal(np.asarray(load_image(png_bytes(Image.fromarray(rgba)))), out)


@pytest.mark.parametrize(
    "make_src, pattern",
    [
        (lambda p, d: d[: len(d) // 2], r"image bytes \(\d+ bytes\): corrupt or truncated"),
        (lambda p, d: b"definitely not an image", r"image bytes \(23 bytes\): not a recognised image format"),
        (lambda p, d: "data:image/png;base64,@@not base64@@", "data URL: invalid base64"),
        (lambda p, d: "data:text/plain;base64,aGk=", "data URL: media type 'text/plain' is not an image"),
        (lambda p, d: str(p / "missing.png"), r"missing\.png': no such file"),
        (lambda p, d: p, "not a regular file"),
        (lambda p, d: np.zeros((4, 4, 5), np.uint8), r"array of shape \(4, 4, 5\): expected \(H, W\)"),
        (lambda p, d: np.full((2, 2), 1.5), r"array of shape \(2, 2\): float pixel values must lie in \[0, 1\]"),
        (lambda p, d: np.zeros((2, 2), np.int64), "dtype int64 is not supported"),
        (lambda p, d: np.zeros((1, 4097), np.uint8), "4097x1 pixels is larger than the 4096x4096 limit"),
        (lambda p, d: png_bytes(Image.new("L", (4097, 1))), "image bytes .* 4097x1 pixels is larger"),
        (lambda p, d: b"\0" * (MAX_ENCODED_BYTES + 1), "is larger than the 20 MB limit"),
        (lambda p, d: png_bytes(Image.new("I;16", (4, 4))), "pixel mode 'I;16' .* send 8 bits per channel"),
        (lambda p, d: Image.new("F", (4, 4)), "pixel mode 'F' .* is not supported"),
        (lambda p, d: "https://example.com/cat.png", "remote URLs are not fetched"),
        (lambda p, d: 42, "from int: expected a PIL image"),
    ],
)
def test_load_image_errors_are_one_line_and_name_the_problem(tmp_path, make_src, pattern):
    with pytest.raises(ImageError, match=pattern) as info:
        load_image(make_src(tmp_path, png_bytes(noise_image(0))))
    assert "\n" not in str(info.value) and str(info.value).count("cannot read image from") == 1, info.value


# --- preprocessing -----------------------------------------------------------------------


def test_preprocess_white_image_is_normalized():
    out = preprocess([Image.new("RGB", (50, 70), "white")], VCFG)
    assert out.shape == (1, 3, VCFG.image_size, VCFG.image_size) and out.dtype == torch.float32
    for c in range(3):
        expected = (1 - VCFG.image_mean[c]) / VCFG.image_std[c]
        torch.testing.assert_close(out[0, c], torch.full_like(out[0, c], expected))


def test_preprocess_is_deterministic_and_handles_empty():
    images = [noise_image(0), np.asarray(noise_image(1)), png_bytes(noise_image(2))]
    a, b = preprocess(images, VCFG), preprocess(images, VCFG)
    assert a.shape == (3, 3, VCFG.image_size, VCFG.image_size) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1  # mean = std = 0.5 maps [0, 1] onto [-1, 1]
    assert preprocess([], VCFG).shape == (0, 3, VCFG.image_size, VCFG.image_size)
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        preprocess(noise_image(0), VCFG)
