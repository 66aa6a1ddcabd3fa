"""Preference pairs: reading TRL's formats and refusing bad rows by file:line, the response tokens, pairs
over the context; the Bradley-Terry reward model through the loop (it learns a marker word, saves,
loads and scores the same); DPO (its loss equals TRL's DPOTrainer's on one batch, a short run raises
the held-out margin, a resumed run equals one that never stopped); the commands."""

import json
import random
from pathlib import Path

import pytest
import torch

from opengpt4.cli import main
from opengpt4.errors import CheckpointError, DataFileError, PairTooLong
from opengpt4.model import convert
from opengpt4.model.checkpoint import load_checkpoint, save_checkpoint
from opengpt4.model.heads import HEAD_CONFIG, HeadConfig, HeadModel, save_head_checkpoint
from opengpt4.model.transformer import IGNORE_INDEX
from opengpt4.train import distributed
from opengpt4.train.preference import (
    ACKNOWLEDGEMENTS,
    DPO,
    DPOConfig,
    EncodedPairs,
    RewardConfig,
    RewardModel,
    dpo_rewards,
    each_row,
    encode_response,
    mismatched_pairs,
    read_pairs,
    response_logps,
    reward,
    train_reward_model,
)
from opengpt4.train.preference import build_dpo_trainer as dpo_trainer
from tests.helpers import WORDS

pytestmark = pytest.mark.usefixtures("one_thread")

MARKER = "blue"  # what every chosen response has and no rejected one does


def marker_pairs(n: int, seed: int) -> list[dict]:
    """Pairs of random word strings from the tiny tokenizer's corpus, the chosen one with MARKER somewhere in it."""
    rng = random.Random(seed)
    plain = [w for w in WORDS if w != MARKER]
    rows = []
    for i in range(n):
        thing = ("cat", "mat")[i % 2]
        chosen = [rng.choice(plain) for _ in range(rng.randint(3, 7))]
        chosen.insert(rng.randint(0, len(chosen)), MARKER)
        rejected = [rng.choice(plain) for _ in range(len(chosen))]
        rows.append({"prompt": [{"role": "user", "content": f"the {thing}?"}],
                     "chosen": [{"role": "assistant", "content": " ".join(chosen)}],
                     "rejected": [{"role": "assistant", "content": " ".join(rejected)}],
                     "meta": {"kind": thing, "rejected_because": "no_marker" if i % 3 else "other"}})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def stable(lines: list[dict]) -> list[dict]:
    """Metrics lines without the timings."""
    return [{k: v for k, v in m.items() if k not in ("tokens_per_s", "mfu")} for m in lines]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    write_jsonl(d / "pairs-train.jsonl", marker_pairs(192, seed=0))
    write_jsonl(d / "pairs-heldout.jsonl", marker_pairs(48, seed=1))
    return d


# --- reading pairs -----------------------------------------------------------------------------------
def test_reads_a_data_dir_by_split_and_trls_forms(tmp_path, pairs_dir):
    train, heldout = read_pairs(pairs_dir), read_pairs(pairs_dir, "heldout")
    assert len(train) == 192 and len(heldout) == 48
    assert train[0].source == f"{pairs_dir / 'pairs-train.jsonl'}:1" and train[0].meta["kind"] == "cat"
    row = marker_pairs(1, seed=0)[0]
    prompt, chosen, rejected = row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"]
    plain = {"prompt": prompt, "chosen": chosen, "rejected": rejected}  # responses as strings
    implicit = {"chosen": [*prompt, *row["chosen"]], "rejected": [*prompt, *row["rejected"]]}  # the prompt shared
    read = read_pairs(write_jsonl(tmp_path / "forms.jsonl", [row, plain, implicit]))
    assert [(p.prompt, p.chosen, p.rejected) for p in read] == [(prompt, row["chosen"], row["rejected"])] * 3


@pytest.mark.parametrize("bad", [
    {"chosen": "a", "rejected": "a"},  # the same response twice
    {"chosen": [{"role": "assistant", "content": "a"}], "rejected": "a"},  # the same, in two spellings
    {"prompt": "hi"},
    {"prompt": []},
    {"prompt": [{"role": "user"}]},
    {"prompt": [{"role": "robot", "content": "hi"}]},
    {"rejected": ""},
    {"rejected": [{"role": "user", "content": "b"}]},
    {"chosen": None},
    "not json",
    "[1, 2]",
])
def test_bad_pairs_are_refused_naming_the_file_and_line(tmp_path, bad):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    file = write_jsonl(tmp_path / "bad.jsonl", [good, bad if isinstance(bad, str) else {**good, **bad}])
    with pytest.raises(DataFileError) as e:
        read_pairs(file)
    assert f"{file}:2" in str(e.value)


# --- encoding ----------------------------------------------------------------------------------------
def test_only_the_response_and_its_im_end_are_scored(tiny_tokenizer):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat?"},
              {"role": "assistant", "content": "a mat."}, {"role": "user", "content": "and the birds?"}]
    response = [{"role": "assistant", "content": "seven blue birds"}]
    ids, targets = encode_response(tiny_tokenizer, prompt, response, "here:1")
    full = tiny_tokenizer.render_chat([*prompt, *response]).ids
    assert ids == full[: len(ids)] and ids[-1] == tiny_tokenizer.im_end_id and len(full) > len(ids)  # not the "\n"
    scored = [t for t in targets if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(scored) == "seven blue birds<|im_end|>"  # not the prompt's assistant turn
    first = next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)
    assert targets[first:-1] == ids[first + 1 :] and targets[-1] == IGNORE_INDEX


def test_a_pair_over_the_context_is_an_error_naming_it_unless_skipping_is_asked(tmp_path, tiny_tokenizer, tiny_checkpoint,
                                                                                 capsys):
    long = " ".join(["seven blue birds sang"] * 40)  # well over the tiny model's 128 tokens
    rows = marker_pairs(3, seed=2)
    rows[1]["rejected"] = long
    file = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(PairTooLong) as e:
        EncodedPairs(read_pairs(file), tiny_tokenizer, limit=128)
    assert e.value.where == f"{file}:2" and e.value.tokens > e.value.limit == 128
    assert isinstance(e.value, DataFileError)
    skipping = EncodedPairs(read_pairs(file), tiny_tokenizer, limit=128, skip_too_long=True)
    assert len(skipping) == 2 and skipping.skipped == 1 and skipping.first_skipped == f"{file}:2"

    assert main(["reward", "train", "--model", str(tiny_checkpoint), "--pairs", str(file), "--out", str(tmp_path / "rm")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{file}:2" in err
    assert not (tmp_path / "rm").exists()


# --- the reward model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_checkpoint, pairs_dir):
    out = tmp_path_factory.mktemp("rm") / "reward"
    # mismatched=0: the marker pairs alone, so 20 steps show the Bradley-Terry fit (mismatched_pairs has its own test)
    cfg = RewardConfig(batch_size=8, lr=3e-3, warmup_steps=3, eval_every=10, eval_rows=48, dtype="float32",
                       mismatched=0)
    return out, train_reward_model(tiny_checkpoint, pairs_dir, out, cfg, max_steps=20)


def test_the_reward_model_learns_which_response_is_preferred(trained_rm):
    out, _ = trained_rm
    lines = metrics(out)
    evals = [m for m in lines if "val" in m]
    assert [m["step"] for m in evals] == [0, 10, 20]
    first, last = evals[0], evals[-1]
    assert first["probe"]["accuracy"] < 0.75 and last["probe"]["accuracy"] >= 0.9, (first["probe"], last["probe"])
    assert last["val"]["heldout"] < first["val"]["heldout"] and last["margin"] > first["margin"]
    assert set(last["probe"]) == {"accuracy", "cat", "mat"} and set(last["rejected_because"]) == {"no_marker", "other"}
    assert json.loads((out / HEAD_CONFIG).read_text())["kind"] == "scalar" and (out / "loss.png").is_file()
    load_checkpoint(out)  # still a plain language-model checkpoint too


def test_a_saved_reward_model_loads_and_scores_the_same(trained_rm, pairs_dir):
    out, trainer = trained_rm
    trained = trainer.objective.model
    rm = RewardModel.load(out, batch_size=5)
    pairs = read_pairs(pairs_dir, "heldout")
    prompts, responses = [p.prompt for p in pairs], [p.chosen[0]["content"] for p in pairs]
    scores = rm.score(prompts, responses)
    assert scores.dtype == torch.float32 and scores.shape == (48,) and not rm.model.training
    rows = EncodedPairs(pairs, rm.tokenizer, 128).rows
    torch.testing.assert_close(scores, each_row(reward, trained, rows, 7)[:48], rtol=0, atol=1e-5)
    alone = torch.cat([rm.score([prompts[i]], [responses[i]]) for i in range(3)])
    torch.testing.assert_close(scores[:3], alone, rtol=0, atol=1e-5)  # batched by length = one by one
    chosen, rejected = rm.score_pairs(pairs)
    torch.testing.assert_close(chosen, scores)
    final = metrics(out)[-1]  # the last eval: the whole held-out file, in the same float32
    assert float((chosen > rejected).float().mean()) == final["probe"]["accuracy"]
    assert abs(float((chosen - rejected).mean()) - final["margin"]) < 1e-4


def test_only_a_scalar_head_is_a_reward_model(tmp_path, tiny_model, tiny_tokenizer, tiny_checkpoint):
    classifier = save_head_checkpoint(tmp_path / "rbrm", HeadModel(tiny_model, HeadConfig("classifier", ("A", "B"))),
                                      tiny_tokenizer)
    for path in (classifier, tiny_checkpoint):  # an RBRM classifier; a plain decoder
        with pytest.raises(CheckpointError):
            RewardModel.load(path)


def test_reward_commands(tmp_path, tiny_checkpoint, pairs_dir, trained_rm, capsys):
    out = tmp_path / "cli-rm"
    assert main(["reward", "train", "--model", str(tiny_checkpoint), "--pairs", str(pairs_dir), "--out", str(out),
                 "--max-steps", "2", "--set", "batch_size=8", "--set", "eval_rows=8"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 2
    capsys.readouterr()

    report = tmp_path / "score.json"
    assert main(["reward", "score", "--model", str(trained_rm[0]), "--pairs", str(pairs_dir), "--out",
                 str(report)]) == 0
    printed, result = capsys.readouterr().out, json.loads(report.read_text())
    assert result["n"] == 48 and set(result["kind"]) == {"cat", "mat"} and sum(s["n"] for s in result["kind"].values()) == 48
    assert f"pairwise accuracy {result['accuracy']:.3f}, mean margin {result['margin']:.3f}" in printed
    assert main(["reward", "score", "--model", str(trained_rm[0]), "--pairs", str(pairs_dir), "--limit", "10"]) == 0
    assert "10 of 48 pairs" in capsys.readouterr().out

    assert main(["reward", "score", "--model", str(tiny_checkpoint), "--pairs", str(pairs_dir)]) == 1  # no head
    assert capsys.readouterr().err.count("\n") == 1


# --- DPO ---------------------------------------------------------------------------------------------
def test_dpo_loss_equals_trls_dpo_trainer_on_one_batch(tmp_path, tiny_checkpoint, pairs_dir, capsys, monkeypatch):
    """The acceptance test of the loss: our objective's loss, and its implicit rewards, on four pairs against
    TRL's DPOTrainer.compute_loss on the same pairs, both models exported to transformers' Llama."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach the hub
    transformers = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    cfg = DPOConfig(batch_size=4, micro_batch_size=4, eval_rows=4, dtype="float32", beta=0.5)
    objective = DPO(tiny_checkpoint, pairs_dir, tmp_path / "unused", cfg, distributed.init(), None)
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that differs from its reference, so that the loss is not log 2
        for p in objective.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    policy = objective.model.eval()
    batch = objective.train.batch([0, 1, 2, 3])
    with torch.no_grad():
        ours = float(objective.loss(policy, batch)) / objective.count(batch)
    assert abs(ours - 0.6931) > 0.01, ours

    hf_dir = convert.export_hf(save_checkpoint(tmp_path / "policy", policy, objective.tokenizer), tmp_path / "hf-policy")
    hf_policy = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf_reference = transformers.LlamaForCausalLM.from_pretrained(convert.export_hf(tiny_checkpoint, tmp_path / "hf-reference"),
                                                                 dtype=torch.float32)
    capsys.readouterr()  # the exports' warnings about the vision tower they leave out
    pairs = objective.train.pairs[:4]
    trainer = trl.DPOTrainer(
        model=hf_policy, ref_model=hf_reference, processing_class=transformers.AutoTokenizer.from_pretrained(hf_dir),
        args=trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=cfg.beta, report_to="none", use_cpu=True,
                           bf16=False, per_device_train_batch_size=4),
        train_dataset=datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                                  for p in pairs]))

    # TRL tokenizes the pairs as we do, but for the newline its template writes after <|im_end|>.
    newline, rows, n = objective.tokenizer.encode("\n"), objective.train.rows, len(objective.train)
    examples = []
    for i, row in enumerate(trainer.train_dataset):
        for side, ours_ids in (("chosen", rows.ids[i]), ("rejected", rows.ids[n + i])):
            assert row["prompt_ids"] + row[f"{side}_ids"] == ours_ids + newline
        targets = rows.targets[i]
        first_scored = next(j for j, t in enumerate(targets) if t != IGNORE_INDEX)  # predicts the response's first token
        assert len(row["prompt_ids"]) == first_scored + 1
        examples.append({"prompt_ids": row["prompt_ids"], "chosen_ids": row["chosen_ids"][: -len(newline)],
                         "rejected_ids": row["rejected_ids"][: -len(newline)]})
    inputs = DataCollatorForPreference(pad_token_id=objective.tokenizer.pad_id)(examples)
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, inputs))
    assert abs(ours - theirs) <= 1e-5, (ours, theirs)

    logged = trainer._metrics["train" if trainer.model.training else "eval"]
    with torch.no_grad():
        chosen, rejected = dpo_rewards(response_logps(policy, batch), response_logps(objective.reference, batch),
                                       cfg.beta)
    for name, value in (("rewards/chosen", chosen.mean()), ("rewards/rejected", rejected.mean()),
                        ("rewards/margins", (chosen - rejected).mean()),
                        ("rewards/accuracies", (chosen > rejected).float().mean())):
        assert abs(float(value) - logged[name][-1]) <= 1e-5, (name, float(value), logged[name])


def test_dpo_raises_the_held_out_margin_and_writes_a_plain_checkpoint(tmp_path, tiny_checkpoint, pairs_dir):
    out = tmp_path / "dpo"
    cfg = DPOConfig(batch_size=8, lr=3e-3, warmup_steps=3, eval_every=10, eval_at_start=True, ckpt_every=0,
                    eval_rows=48, dtype="float32")
    dpo_trainer(tiny_checkpoint, pairs_dir, out, cfg, max_steps=20).run()
    evals = [m for m in metrics(out) if "val" in m]
    assert [m["step"] for m in evals] == [0, 10, 20]
    first, last = evals[0], evals[-1]
    assert first["rewards/margins"] == 0 and abs(first["val"]["heldout"] - 0.6931) < 1e-3  # the policy is the reference
    assert last["rewards/margins"] > 0.5 and last["rewards/accuracies"] >= 0.85, last
    assert last["rewards/chosen"] > last["rewards/rejected"] and last["val"]["heldout"] < 0.5
    assert set(last["probe"]) == {"rewards/accuracies", "cat", "mat"}
    assert not (out / HEAD_CONFIG).exists() and load_checkpoint(out)[0].config == load_checkpoint(tiny_checkpoint)[0].config


def test_dpo_with_lora_learns_against_its_own_base_with_the_adapters_off(tmp_path, tiny_checkpoint, pairs_dir):
    out = tmp_path / "dpo-lora"
    cfg = DPOConfig(batch_size=8, lr=3e-2, warmup_steps=3, eval_every=10, eval_at_start=True, ckpt_every=0,
                    eval_rows=48, dtype="float32", lora_rank=4)
    trainer = dpo_trainer(tiny_checkpoint, pairs_dir, out, cfg, max_steps=20)
    assert trainer.objective.reference is None  # no second copy of the weights
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trainer.param_names)
    trainer.run()
    first, last = [m for m in metrics(out) if "val" in m][::2]
    assert first["rewards/margins"] == 0 and abs(first["val"]["heldout"] - 0.6931) < 1e-3  # B = 0: the reference
    assert last["rewards/margins"] > 0.2 and last["rewards/chosen"] > last["rewards/rejected"], last
    merged, original = load_checkpoint(out)[0].state_dict(), load_checkpoint(tiny_checkpoint)[0].state_dict()
    moved = {k for k in merged if not torch.equal(merged[k], original[k])}
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert moved and all(k.endswith(tuple(f"{p}.weight" for p in projections)) for k in moved), moved


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_dpo_resumes_exactly_and_only_on_its_own_data(tmp_path, tiny_checkpoint, pairs_dir, lora_rank):
    """A run that dies right after its step-4 checkpoint, continued, equals one that never stopped
    (with LoRA: from the base and its saved adapters)."""
    cfg = DPOConfig(batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=2, eval_every=4, ckpt_every=4,
                    eval_rows=8, dtype="float32", lora_rank=lora_rank)
    dpo_trainer(tiny_checkpoint, pairs_dir, tmp_path / "straight", cfg, max_steps=8).run()
    dying = dpo_trainer(tiny_checkpoint, pairs_dir, tmp_path / "stopped", cfg, max_steps=8)
    save = dying.save

    def save_and_die():
        save()
        raise KeyboardInterrupt

    dying.save = save_and_die
    with pytest.raises(KeyboardInterrupt):
        dying.run()
    assert json.loads((tmp_path / "stopped" / "trainer_state.json").read_text())["step"] == 4
    other = tmp_path / "other"
    other.mkdir()
    write_jsonl(other / "pairs-train.jsonl", marker_pairs(32, seed=5))
    with pytest.raises(CheckpointError):
        dpo_trainer(tiny_checkpoint, other, tmp_path / "stopped", cfg, resume=True)
    dpo_trainer(tiny_checkpoint, pairs_dir, tmp_path / "stopped", cfg, resume=True).run()
    assert stable(metrics(tmp_path / "stopped")) == stable(metrics(tmp_path / "straight"))
    a, b = (load_checkpoint(tmp_path / d)[0].state_dict() for d in ("straight", "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_command(tmp_path, tiny_checkpoint, pairs_dir, capsys):
    out = tmp_path / "cli-dpo"
    args = ["dpo", "--policy", str(tiny_checkpoint), "--pairs", str(pairs_dir), "--out", str(out), "--set", "batch_size=8",
            "--set", "eval_rows=8", "--set", "beta=0.5"]
    assert main([*args, "--max-steps", "2"]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["train_config"]["beta"] == 0.5 and state["dpo"]["pairs"] == 192
    assert "rewards/margins" in capsys.readouterr().out
    assert main([*args, "--max-steps", "3", "--resume"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 3


def test_mismatched_pairs_reject_replies_that_do_not_answer(pairs_dir):
    pairs = read_pairs(pairs_dir)
    extra = mismatched_pairs(pairs, 2, seed=0)
    assert 0.9 * 2 * len(pairs) <= len(extra) <= 2 * len(pairs)  # a draw of the pair's own reply is dropped
    by_reason = {p.meta["rejected_because"] for p in extra}
    assert by_reason == {"off_topic", "non_answer"}
    chosen = {json.dumps(p.chosen) for p in pairs}
    for p in extra:
        assert p.rejected != p.chosen and p.prompt in [q.prompt for q in pairs]
        reply = p.rejected[0]["content"]
        if p.meta["rejected_because"] == "non_answer":
            assert reply in ACKNOWLEDGEMENTS and reply != "Sure."  # held out: what RL found
        else:
            assert json.dumps(p.rejected) in chosen
    assert mismatched_pairs(pairs, 2, seed=0) == extra and mismatched_pairs(pairs, 0, seed=0) == []
