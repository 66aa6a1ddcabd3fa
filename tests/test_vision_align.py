"""Vision alignment (a captioning-pretrained ViT, then LLaVA's two stages) on tiny models: stage 0
trains a captioner from scratch; stage 1 lowers the caption loss and leaves the LM bit-identical;
stage 2's LoRA merges into a plain checkpoint that gives the adapted logits; the checkpoint answers
about an image through Engine; the <|image|> token added to a real tokenizer (SmolLM2) leaves its
text predictions as they were; the CLI runs all three stages; a stage-2 run exported as a float16
delta rebuilds onto the text-only LM with the same predictions."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.errors import CheckpointError, ConfigError
from opengpt4.files import write_jsonl
from opengpt4.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from opengpt4.model.precision import autocast_dtype
from opengpt4.model.vision import preprocess
from opengpt4.train.sft import encode
from opengpt4.vision import align, bundle
from opengpt4.vision.data import build_visual_data, iter_images, read_visual_chats
from opengpt4.vision.reading import ReadConfig, build_reader_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

DIGIT = "images/train/000060.png"  # the test preset's first digit (after 60 synthetic images)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_visual_data(tmp_path_factory.mktemp("visual") / "data", "test")


@pytest.fixture(scope="module")
def lm(tmp_path_factory, tiny_model, tiny_tokenizer):
    """A tiny text-only LM (what SmolLM2 is to stage 1): the tiny model's decoder, with room for
    256-token rows (its sharpened head gives image tokens something to steer; a flat one would not)."""
    config = dataclasses.replace(tiny_model.config, vision=None, image_token_id=None, max_seq_len=256)
    text_only = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith(("vision.", "projector."))}
    model = build_model(config, text_only, "tiny_model", torch.float32)
    return save_checkpoint(tmp_path_factory.mktemp("lm") / "lm", model, tiny_tokenizer)


@pytest.fixture(scope="module")
def tower(tmp_path_factory, tiny_model, tiny_tokenizer):
    """A checkpoint whose ViT stage 1 takes (the tiny 32-pixel one)."""
    return save_checkpoint(tmp_path_factory.mktemp("tower") / "tower", tiny_model, tiny_tokenizer)


def small(cfg: align.AlignConfig, **changes) -> align.AlignConfig:
    settings = dict(seq_len=256, batch_size=8, micro_batch_size=4, warmup_steps=2, eval_every=0, ckpt_every=0,
                    eval_rows=4)
    return dataclasses.replace(cfg, **{**settings, **changes})


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, lm, tower, data_dir):
    out = tmp_path_factory.mktemp("run") / "stage1"
    cfg = small(align.stage_config(1), lr=1e-2)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        align.build_trainer(1, str(lm), data_dir, out, cfg, vision=str(tower), max_steps=20).run()
    return out


def evals(out):
    return [m["val"]["heldout"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "val" in m]


def test_stage1_lowers_the_caption_loss_with_the_lm_and_vit_bit_identical(stage1, lm, tower):
    losses = evals(stage1)
    assert losses[-1] < losses[0] - 0.02, losses
    trained, before, vit = (load_file(str(p / "model.safetensors")) for p in (stage1, lm, tower))
    for name, tensor in before.items():  # every LM tensor, bit for bit
        assert torch.equal(trained[name], tensor), name
    for name in [k for k in vit if k.startswith("vision.")]:
        assert torch.equal(trained[name], vit[name]), name
    projector = [k for k in trained if k.startswith("projector.")]
    assert projector and set(trained) == set(before) | {k for k in vit if k.startswith("vision.")} | set(projector)
    config = json.loads((stage1 / "config.json").read_text())
    assert config["model"]["vision"]["image_size"] == 32 and config["tokenizer"]["tokens_per_image"] == 4


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, stage1, data_dir):
    out = tmp_path_factory.mktemp("run") / "stage2"
    cfg = small(align.stage_config(2, lora_rank=4), probe_size=2, self_replay=4)
    trainer = align.build_trainer(2, str(stage1), data_dir, out, cfg, max_steps=6)
    trainer.run()
    return trainer


def test_stage2_lora_merges_into_a_plain_checkpoint_with_the_adapted_logits(stage2, stage1):
    trainer = stage2
    out = trainer.out
    probe = [m["probe"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "probe" in m]
    assert len(probe) == 2 and set(probe[-1]) == {"shapes", "charts", "ocr", "digits"}  # at step 0 and at the end
    objective = trainer.objective
    assert any(".lora_A" in k for k, _ in objective.model.named_parameters())
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    assert (out / "adapter.safetensors").is_file()
    start = load_file(str(stage1 / "model.safetensors"))
    assert not torch.equal(saved["projector.fc1.weight"], start["projector.fc1.weight"])
    assert torch.equal(saved["vision.patch_embed.weight"], start["vision.patch_embed.weight"])
    assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                           start["model.layers.0.self_attn.q_proj.weight"])

    batch = objective.heldout.batch([0])
    model, _ = load_checkpoint(out)
    objective.model.eval()
    with torch.no_grad():
        adapted = objective.model(batch.input_ids, batch.images, segments=batch.segments)
        merged = model(batch.input_ids, batch.images, segments=batch.segments)
    assert batch.images is not None and len(batch.images) > 0
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_the_checkpoint_answers_about_an_image_through_engine(stage1, data_dir):
    model, tokenizer = load_checkpoint(stage1)
    engine = Engine(model, tokenizer, pack=False)
    prompt = engine.chat_prompt([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(data_dir / DIGIT)}}, {"type": "text", "text": "What digit?"}]}])
    assert prompt.images.shape == (1, 3, 32, 32)
    assert prompt.ids.count(tokenizer.image_id) == tokenizer.tokens_per_image
    [[reply]] = engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0.0))
    assert len(reply.token_ids) > 0


def test_packed_rows_carry_their_conversations_images_in_placeholder_order(stage1, data_dir):
    model, tokenizer = load_checkpoint(stage1)
    chats = read_visual_chats(data_dir / "stage2.json")
    packed = align.PackedVisualChats(chats, tokenizer, 256, 0, model.config.vision)
    for row in range(len(packed)):
        batch = packed.batch([row])
        slots = int((batch.input_ids == tokenizer.image_id).sum())
        assert slots == (0 if batch.images is None else len(batch.images)) * tokenizer.tokens_per_image
    assert any(packed.batch([r]).images is None for r in range(len(packed))) or len(packed.row_images[0]) > 0


def test_adding_the_image_token_leaves_smollm2s_text_predictions_as_they_were(smollm2, tower):
    lm, tokenizer = load_checkpoint(smollm2)
    model, vision_tokenizer = align.attach_vision(smollm2, tower)
    assert vision_tokenizer.image_id == tokenizer.vocab_size == 49152 and model.config.vocab_size == 49153
    text = tokenizer.render_chat([{"role": "user", "content": "What is the capital of France?"}],
                                 add_generation_prompt=True).ids
    assert vision_tokenizer.render_chat([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True).ids == text
    ids = torch.tensor([text])
    with torch.no_grad():
        before, after = lm(ids), model(ids)
    torch.testing.assert_close(after[..., :49152], before, rtol=1e-5, atol=1e-5)
    assert model.model.embed_tokens.weight[49152].norm() > 0


def test_stage0_trains_a_captioner_from_scratch(lm, data_dir, tmp_path):
    """Stage 0: a fresh ViT + projector + small decoder on the LM's tokenizer (with <|image|>) learn
    the captions: the held-out caption loss falls from ~ln(vocab)."""
    cfg = small(align.stage_config(0), lr=1e-2, decoder_depth=1, eval_every=15)
    with torch.random.fork_rng():
        align.build_trainer(0, str(lm), data_dir, tmp_path, cfg, max_steps=30).run()
    losses = evals(tmp_path)
    model, tokenizer = load_checkpoint(tmp_path)
    assert model.config.n_layer == 1 and model.config.vision is not None and model.config.vision.conv_stem
    assert tokenizer.image_id == model.config.image_token_id and tokenizer.vocab_size > model.config.image_token_id
    assert losses[0] > 0.9 * math.log(model.config.vocab_size) and losses[-1] < 0.65 * losses[0], losses


def test_cli_runs_all_stages_into_a_vision_checkpoint(lm, tower, data_dir, tmp_path):
    """Without --vision, `--stage all` pretrains the ViT (stage 0), then stage 1, the image reader on stage 1's
    model, and stage 2 from the reader's checkpoint, the ViT frozen after stage 0."""
    quick = {s: [f"--set{s}", "seq_len=256", f"--set{s}", "batch_size=4", f"--set{s}", "eval_at_start=false",
                 f"--steps{s}", "2"] for s in "012"}
    fast = [*quick["0"], *quick["1"], *quick["2"], "--steps-read", "2",
            *(x for setting in ("batch_size=8", "hidden=32", "channels=4,8", "eval_every=0")
              for x in ("--set-read", setting))]
    run = subprocess.run([sys.executable, "-m", "opengpt4.cli", "vision", "align", "--lm", str(lm), "--data",
                          str(data_dir), "--out", str(tmp_path), "--lora", "4", "--set0", "decoder_depth=1", *fast],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    towers = []
    for stage in ("stage0", "stage1", "reader", "stage2"):
        state = json.loads((tmp_path / stage / "trainer_state.json").read_text())
        assert state["step"] == 2
        weights = load_file(str(tmp_path / stage / "model.safetensors"))
        towers.append({k: v for k, v in weights.items() if k.startswith("vision.")})
        assert any(k.startswith("reader.") for k in weights) == (stage in ("reader", "stage2")), stage
    assert json.loads((tmp_path / "stage2" / "trainer_state.json").read_text())["vision_align"]["base"] == str(
        tmp_path / "reader")
    assert towers[0] and all(torch.equal(towers[0][k], t[k]) for t in towers[1:] for k in towers[0])
    model, tokenizer = load_checkpoint(tmp_path / "stage2")
    assert model.config.vision is not None and tokenizer.image_id == model.config.image_token_id
    assert model.config.vision.reader is not None
    assert model.config.n_embd == load_checkpoint(lm)[0].config.n_embd  # the LM, not stage 0's decoder
    # --vision from a checkpoint with a reader takes its ViT alone: stage 1's model has no reader
    again = subprocess.run([sys.executable, "-m", "opengpt4.cli", "vision", "align", "--lm", str(lm), "--data",
                            str(data_dir), "--out", str(tmp_path / "again"), "--stage", "1", "--vision",
                            str(tmp_path / "stage2"), *quick["1"]],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    stage1 = load_file(str(tmp_path / "again" / "stage1" / "model.safetensors"))
    assert not any(k.startswith("reader.") for k in stage1)
    assert all(torch.equal(stage1[k], towers[0][k]) for k in towers[0])
    bad = subprocess.run([sys.executable, "-m", "opengpt4.cli", "vision", "align", "--lm", str(tower), "--data",
                          str(data_dir), "--out", str(tmp_path / "again"), "--stage", "1"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert bad.returncode == 1 and "already has a vision tower" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_a_shipped_delta_rebuilds_the_stage2_model_from_the_text_only_lm(stage2, lm, tmp_path):
    """`vision export` / `import` (vision/bundle.py): the ViT, projector and adapters in float16,
    merged back onto the text-only LM, give the same logits as stage 2's own checkpoint."""
    out = stage2.out
    delta = bundle.write_delta(out, tmp_path / "delta.safetensors")
    stored = load_file(str(delta))
    assert all(v.dtype == torch.float16 for v in stored.values())
    assert any(k.startswith("vision.") for k in stored) and any(k.endswith(".lora_A") for k in stored)
    assert not any(k.startswith("model.") and k.endswith(".weight") for k in stored)  # no LM weights
    rebuilt_dir = bundle.build_from_delta(lm, delta, tmp_path / "rebuilt")
    rebuilt, tokenizer = load_checkpoint(rebuilt_dir)
    reference, reference_tokenizer = load_checkpoint(out)
    assert tokenizer.image_id == reference_tokenizer.image_id and rebuilt.config == reference.config
    batch = stage2.objective.heldout.batch([0])
    with torch.no_grad():
        want = reference(batch.input_ids, batch.images, segments=batch.segments)
        got = rebuilt(batch.input_ids, batch.images, segments=batch.segments)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)  # float16 storage of the delta
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.99


def test_a_rebuilt_model_runs_its_adapters_only_for_sequences_with_an_image(stage2, lm, data_dir, tmp_path):
    """lora.route_to_images: the engine's model answers a text-only sequence with the LM's own weights
    and one with an image with the adapters, per row of a batch, through a KV cache's decoding steps,
    and per sequence on the server's flat batches, whose prefix cache keeps the two kinds apart."""
    from opengpt4.engine.scheduler import Scheduler
    from opengpt4.model import lora

    rebuilt = bundle.build_from_delta(lm, bundle.write_delta(stage2.out, tmp_path / "delta.safetensors"),
                                      tmp_path / "rebuilt")
    routed, tokenizer = load_checkpoint(rebuilt, route_image_adapters=True)
    folded, _ = load_checkpoint(rebuilt)
    assert routed.image_adapters and not folded.image_adapters
    engine = Engine(routed, tokenizer, pack=False)
    system = {"role": "system", "content": "You describe pictures and answer questions about them, briefly."}
    text = engine.chat_prompt([system, {"role": "user", "content": "What is two and two?"}])
    image = engine.chat_prompt([system, {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(data_dir / DIGIT)}}, {"type": "text", "text": "What digit?"}]}])
    n = min(len(text.ids), len(image.ids))
    ids = torch.tensor([image.ids[:n], text.ids[:n]])
    with torch.no_grad():
        both = routed(ids, image.images)
        with lora.adapters_off(routed):
            base_text = routed(ids[1:])
        alone_image, folded_both = routed(ids[:1], image.images), folded(ids, image.images)
    assert torch.equal(both[1], base_text[0])  # the LM itself, bit for bit, beside an image row
    torch.testing.assert_close(both[0], alone_image[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[0], folded_both[0], rtol=1e-4, atol=1e-4)  # image rows: the adapted model
    assert (both[1] - folded_both[1]).abs().max() > 1e-3  # and the adapters do change a text row

    # Decoding through a KV cache (Engine.generate) and the server's flat batches (Scheduler): each
    # sequence keeps its kind after its image, and the text request's cached blocks (the same system
    # prompt) are not reused by the image request, nor the other way round.
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True)
    solo = {name: engine.generate([p], params)[0][0] for name, p in (("text", text), ("image", image))}
    with lora.adapters_off(routed):
        plain_text = engine.generate([text], params)[0][0]
    assert solo["text"].token_ids == plain_text.token_ids
    assert [lp.logprob for lp in solo["text"].logprobs] == [lp.logprob for lp in plain_text.logprobs]
    scheduler = Scheduler(engine, max_batch=4, prefill_chunk=8)
    for order in (("text", "image"), ("image", "text"), ("both",)):
        for name in order:
            handles = {k: scheduler.submit(p, params) for k, p in (("text", text), ("image", image))
                       if name in (k, "both")}
            while not all(h.done.is_set() for h in handles.values()):
                scheduler.step()
            for k, handle in handles.items():
                deltas = list(handle.deltas())
                assert [d.token_id for d in deltas] == solo[k].token_ids, (order, k)
                got = [d.logprob.logprob for d in deltas]
                assert got == pytest.approx([lp.logprob for lp in solo[k].logprobs], abs=1e-4), (order, k)


def test_a_broken_delta_is_refused_with_its_name(lm, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        bundle.build_from_delta(lm, bad, tmp_path / "out")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not an opengpt4 vision delta"):
        bundle.build_from_delta(lm, plain, tmp_path / "out")
    assert not (tmp_path / "out").exists()




def test_self_replay_answers_with_the_lms_own_words_and_a_resume_reads_them_back(smollm2, data_dir, tmp_path):
    model, tokenizer = load_checkpoint(smollm2)
    text_chats = [c for c in read_visual_chats(data_dir / "stage2.json") if c.meta["kind"] == "text-only"]
    assert len(text_chats) > 3
    replayed = align.self_replay(model, tokenizer, text_chats, 3, tmp_path / align.REPLAY_FILE)

    # The first 3 chats' questions (system message and first user turn), in one batch as self_replay
    # asks them (the same shapes and dtype, so the same kernels), greedily answered.
    questions = [c.messages[: [m["role"] for m in c.messages].index("user") + 1] for c in text_chats[:3]]
    engine = Engine(model.to(autocast_dtype("auto", torch.device("cpu"))), tokenizer, pack=False)
    own = [c for (c,) in engine.generate([engine.chat_prompt(q) for q in questions],
                                         SamplingParams(max_tokens=align.REPLAY_MAX_TOKENS, temperature=0.0))]
    expected = [q + [{"role": "assistant", "content": c.text}] for q, c in zip(questions, own, strict=True)
                if c.finish_reason == "stop"]  # an answer cut off at REPLAY_MAX_TOKENS is dropped, not taught
    assert expected and [c.messages for c in replayed] == expected
    world_answers = {c.messages[-1]["content"] for c in text_chats}
    assert not world_answers & {c.messages[-1]["content"] for c in replayed}  # not the synthetic world's answers

    # A resumed run reads its checkpoint's answers instead of generating others (the model is not asked).
    write_jsonl(tmp_path / align.REPLAY_FILE, [{"messages": c.messages} for c in replayed[:1]])
    assert [c.messages for c in align.self_replay(None, tokenizer, text_chats, 3, tmp_path / align.REPLAY_FILE)] \
        == [replayed[0].messages]


def test_stage2_checkpoints_carry_the_replayed_chats_it_trains_on(stage2):
    trainer = stage2
    text_chats = [c for c in read_visual_chats(trainer.objective.data_file) if c.meta["kind"] == "text-only"]
    saved = align.self_replay(None, trainer.objective.tokenizer, text_chats, 4, trainer.out / align.REPLAY_FILE)
    assert [c.messages for c in saved] == [c.messages for c in trainer.objective.replayed]
    assert len(saved) <= 4 < len(text_chats)
    trained_on = {source for row in trainer.objective.train.sources for source in row}
    assert all(c.source in trained_on for c in trainer.objective.replayed)
    assert not any(c.source in trained_on for c in text_chats)  # the data's own answers are not trained on


def test_stage1_can_group_the_patches_into_fewer_tokens_and_refuses_a_grouping_that_does_not_tile(
        lm, tower, data_dir, tmp_path):
    """`pixel_shuffle` (stages 0 and 1) regroups the same ViT's patches: the tiny tower's 4x4 patch grid in
    2x2 blocks (its own config) gives 4 tokens an image, in one 4x4 block 1 token; the tokenizer expands
    <|image|> to match and the model runs on an image. A grouping that does not tile the grid, or one set
    for stage 2 (which keeps stage 1's projector), is a config error."""
    images = torch.zeros(1, 3, 32, 32)
    for s, tokens in ((0, 4), (4, 1)):
        model, tokenizer = align.attach_vision(lm, tower, pixel_shuffle=s)
        assert model.config.vision.tokens_per_image == tokens and tokenizer.tokens_per_image == tokens
        assert model.projector.fc1.in_features == model.config.vision.width * (s or 2) ** 2
        ids = tokenizer.render_chat([{"role": "user", "content": [{"type": "image", "image": "unread"},
                                                                 {"type": "text", "text": "What digit is this?"}]}],
                                    add_generation_prompt=True).ids
        assert ids.count(tokenizer.image_id) == tokens
        with torch.no_grad():
            logits = model(torch.tensor([ids]), images=images)
        assert logits.shape[1] == len(ids) and torch.isfinite(logits).all()
    with pytest.raises(ConfigError, match="pixel_shuffle"):
        align.attach_vision(lm, tower, pixel_shuffle=3)
    with pytest.raises(ConfigError, match="pixel_shuffle"):
        align.build_trainer(2, str(tower), data_dir, tmp_path, small(align.stage_config(2), pixel_shuffle=4),
                            max_steps=1)


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, stage2, lm):
    """Stage 2's run as a shipped model is: rebuilt from its delta, the image adapters kept apart."""
    where = tmp_path_factory.mktemp("rebuilt")
    return bundle.build_from_delta(lm, bundle.write_delta(stage2.out, where / "delta.safetensors"), where / "model")


@pytest.fixture(scope="module")
def reader_run(tmp_path_factory, rebuilt, data_dir):
    """`vision read` on the rebuilt model: a small reader, 20 steps."""
    out = tmp_path_factory.mktemp("run") / "reader"
    cfg = ReadConfig(batch_size=32, warmup_steps=2, eval_every=10, ckpt_every=0, hidden=64, channels="8,16")
    trainer = build_reader_trainer(str(rebuilt), data_dir, out, cfg, max_steps=20)
    trainer.run()
    return trainer


def ask(image, question="What digit is this?"):
    return [{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": question}]}]


def test_vision_read_trains_the_reader_alone_and_engine_writes_its_reading_after_the_image(reader_run, rebuilt,
                                                                                          data_dir):
    out = reader_run.out
    losses = evals(out)
    assert losses[-1] < 0.7 * losses[0], losses
    exact = [m["exact"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "exact" in m]
    assert set(exact[-1]) == {"scene", "chart", "text", "digit"}
    trained, before = load_file(str(out / "model.safetensors")), load_file(str(rebuilt / "model.safetensors"))
    added = set(trained) - set(before)
    assert added and all(k.startswith("reader.") for k in added)
    for name, tensor in before.items():  # the LM, the ViT and the projector, bit for bit
        assert torch.equal(trained[name], tensor), name
    kept = load_file(str(out / "image_adapters.safetensors"))  # still apart, as they were
    assert kept.keys() == load_file(str(rebuilt / "image_adapters.safetensors")).keys()
    assert json.loads((out / "config.json").read_text())["image_adapters"] == \
        json.loads((rebuilt / "config.json").read_text())["image_adapters"]

    model, tokenizer = load_checkpoint(out)
    pixels = preprocess([str(data_dir / DIGIT)], model.config.vision)
    [reading] = model.reader.read(pixels)
    assert reader_run.objective.model.reader.read(pixels) == [reading]  # the checkpoint reads as the run did
    engine = Engine(model, tokenizer, pack=False)
    prompt = engine.chat_prompt(ask(data_dir / DIGIT))
    typed = tokenizer.render_chat(ask(data_dir / DIGIT, reading + "\nWhat digit is this?"), add_generation_prompt=True)
    assert prompt.ids == typed.ids and torch.equal(prompt.images, pixels)
    [[reply]] = engine.generate([prompt], SamplingParams(max_tokens=3, temperature=0.0))
    assert len(reply.token_ids) > 0


def test_stage2_goes_on_training_the_image_adapters_on_the_readings_and_the_delta_carries_the_reader(
        reader_run, rebuilt, lm, data_dir, tmp_path):
    """Stage 2 from a checkpoint with a reader packs each chat with its images' readings (read in batches
    as Engine reads one image), starts its LoRA from the image adapters kept apart, leaves the reader as it
    was, and `vision export`/`import` carry the reader. Another LoRA rank than the adapters' is refused."""
    adapters = load_file(str(rebuilt / "image_adapters.safetensors"))
    with pytest.raises(ConfigError, match="rank 4"):
        align.build_trainer(2, str(reader_run.out), data_dir, tmp_path / "other", small(align.stage_config(2, 8)))
    cfg = small(align.stage_config(2, lora_rank=4), probe_size=0)
    trainer = align.build_trainer(2, str(reader_run.out), data_dir, tmp_path / "stage2", cfg, max_steps=1)
    model = trainer.objective.model
    for name, p in model.named_parameters():
        if name.endswith((".lora_A", ".lora_B")):
            assert torch.equal(p.detach(), adapters[name]), name

    chats = read_visual_chats(data_dir / "stage2.json")[:3]
    vision = model.config.vision
    packed = align.PackedVisualChats(chats, trainer.objective.tokenizer, 256, None, vision, model.reader)
    readings = [model.reader.read(preprocess([source], vision))[0] for c in chats for source in iter_images([c])]
    assert any(readings)
    for row, sources in enumerate(packed.sources):  # each row starts with its first conversation, read one by one
        first = next(c for c in chats if c.source == sources[0])
        ids = encode(trainer.objective.tokenizer, first, lambda s: model.reader.read(preprocess([s], vision))[0])[0]
        assert packed.input_ids[row][:len(ids)].tolist() == ids.tolist()

    trainer.run()
    saved = load_file(str(trainer.out / "model.safetensors"))
    reader = {k: v for k, v in load_file(str(reader_run.out / "model.safetensors")).items() if k.startswith("reader.")}
    assert all(torch.equal(saved[k], v) for k, v in reader.items())
    delta = bundle.write_delta(trainer.out, tmp_path / "delta.safetensors")
    assert set(reader) <= set(load_file(str(delta)))
    rebuilt, _ = load_checkpoint(bundle.build_from_delta(lm, delta, tmp_path / "rebuilt"))
    pixels = preprocess([str(data_dir / DIGIT)], vision)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.reader.eval()(pixels), model.reader.eval()(pixels), rtol=0, atol=2e-2)
