"""RLHF (train/rl.py): PPO and GRPO learn a toy reward with a bounded KL, GAE and group advantages
match hand computations, a killed run resumes exactly, and bad input fails with a typed error."""

import json
import math

import pytest
import torch

from opengpt4.errors import CheckpointError, ConfigError, DataFileError
from opengpt4.model.checkpoint import load_checkpoint, save_checkpoint
from opengpt4.safety.graders import OracleGrader
from opengpt4.tokenizer import Tokenizer
from opengpt4.train import rl
from tests.helpers import corpus

TARGET = "blue"  # the toy task: reward 1 when the response contains this word


class ContainsWord:
    """The toy reward: 1.0 where the response contains TARGET (a RewardFn, as a reward model is)."""

    def __call__(self, prompts, responses):
        return {"word": torch.tensor([float(TARGET in r) for r in responses])}


@pytest.fixture(scope="module")
def policy(tmp_path_factory, tiny_model, tiny_tokenizer):
    path = tmp_path_factory.mktemp("rl") / "policy"
    save_checkpoint(path, tiny_model, tiny_tokenizer)
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about item {i}."}]}) + "\n"
                            for i in range(64)))
    return path


def toy_config(algo: str, **kw) -> rl.RLConfig:
    settings = dict(algo=algo, samples_per_prompt=8 if algo == "grpo" else 1, lr=3e-3, max_new_tokens=8,
                    batch_size=32, minibatches=2, ppo_epochs=2, kl_coef=0.01, dtype="float32", eval_every=0,
                    missing_eos_penalty=0.0) | kw
    return rl.RLConfig(**settings)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_learns_the_toy_reward_with_a_bounded_kl(algo, policy, prompts, tmp_path):
    # GRPO at PPO's 3e-3 learns as fast but, once every group scores 1 (all advantages 0), the KL
    # term alone is left and Adam's normalised steps pull it back hard: measured 1.0 -> 0.66 by step 57.
    cfg = toy_config(algo, lr=3e-3 if algo == "ppo" else 1e-3)
    trainer = rl.build_trainer(policy, ContainsWord(), prompts, tmp_path / algo, cfg, heldout=prompts, max_steps=60)
    trainer.run()
    steps = [line for line in trainer.metrics.lines if "word" in line]
    first, last = steps[0], steps[-8:]  # each rollout is logged on its 4 steps: the last two rollouts
    assert first["word"] < 0.2 and first["kl_k1"] == pytest.approx(0.0, abs=1e-5)
    assert sum(s["word"] for s in last) / len(last) > 0.8
    kl = [s["kl_k3"] for s in steps]
    assert all(k == k and k < 40 for k in kl), kl  # 8 tokens a response: bounded, not running away
    evals = [line["rl_eval"] for line in trainer.metrics.lines if "rl_eval" in line]
    assert evals[-1]["eval_word"] > 0.8  # greedy answers to the held-out prompts too
    assert (tmp_path / algo / "rl.png").stat().st_size > 0
    model, _ = load_checkpoint(tmp_path / algo)  # a plain checkpoint: what the engine and evals load
    assert not any(name.startswith("value") for name in model.state_dict())


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_killed_run_resumes_mid_rollout_with_the_same_updates(policy, prompts, tmp_path, lora_rank):
    # 4 steps a rollout: stop at 3, inside the first. With LoRA the reference is the policy with its
    # adapters off, and a resume starts from the base and the saved adapters.
    cfg = toy_config("ppo", minibatches=2, ppo_epochs=2, lora_rank=lora_rank)
    straight = rl.build_trainer(policy, ContainsWord(), prompts, tmp_path / "a", cfg, max_steps=6)
    straight.run()
    rl.build_trainer(policy, ContainsWord(), prompts, tmp_path / "b", cfg, max_steps=3).run()
    resumed = rl.build_trainer(policy, ContainsWord(), prompts, tmp_path / "b", cfg, max_steps=6, resume=True)
    resumed.run()
    a, _ = load_checkpoint(tmp_path / "a")
    b, _ = load_checkpoint(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    losses = [[line["loss"] for line in t.metrics.lines if "loss" in line] for t in (straight, resumed)]
    assert losses[0] == losses[1]
    assert all(set(line) > {"step", "tokens"} for line in straight.metrics.lines)  # no held-out prompts: no empty eval line
    first = next(line for line in straight.metrics.lines if "kl_k1" in line)
    assert first["kl_k1"] == 0.0  # the policy is its reference before the first update, bit for bit
    assert (straight.objective.reference is None) == bool(lora_rank)
    base, _ = load_checkpoint(policy)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), base.state_dict().values(), strict=True))


def test_old_logprobs_are_those_of_the_tempered_distribution_the_rollout_was_sampled_from(policy, tmp_path):
    # One prompt, 512 one-token replies sampled at temperature 0.3: each token's frequency is what
    # the rollout's log-prob says. (Scored untempered, the most likely token, drawn 54% of the time,
    # read 3%.)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": [{"role": "user", "content": "Tell me about item 3."}]}) + "\n")
    cfg = toy_config("grpo", samples_per_prompt=512, batch_size=256, minibatches=2, max_new_tokens=1, temperature=0.3)
    objective = rl.build_trainer(policy, ContainsWord(), one, tmp_path / "t", cfg).objective
    rollout = objective.make_rollout(0)
    start = int(rollout.mask[0].nonzero()[0])  # the position that scores the reply's token
    tokens = rollout.input_ids[:, start + 1]
    logprob = {int(t): float(lp) for t, lp in zip(tokens, rollout.old_logprobs[:, start], strict=True)}
    assert len(logprob) > 1  # at 0.3 the tiny model still varies
    counts = torch.bincount(tokens).tolist()
    top = max(logprob, key=logprob.get)
    for token, lp in logprob.items():  # binomial standard error at 512 draws: <= 0.022
        assert abs(counts[token] / len(tokens) - math.exp(lp)) < 0.07, (token, counts[token], math.exp(lp))
    assert math.exp(logprob[top]) > 0.3
    with pytest.raises(ConfigError):
        toy_config("ppo", temperature=0.0)


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.5, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 0.2, 0.4, 0.6, 9.0]])  # positions outside the mask must not leak in
    mask = torch.tensor([[False, True, True, True, False]])
    gamma, lam = 0.9, 0.8
    d3 = 1.0 - 0.6
    d2 = 0.0 + gamma * 0.6 - 0.4
    d1 = 0.5 + gamma * 0.4 - 0.2
    a3, a2 = d3, d2 + gamma * lam * d3
    expected = torch.tensor([[0.0, d1 + gamma * lam * a2, a2, a3, 0.0]])
    assert torch.allclose(rl.gae(rewards, values, mask, gamma, lam), expected)


def test_group_advantages_standardise_within_each_prompts_group():
    adv = rl.group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 3.0, 3.0, 3.0, 3.0]), 4)
    assert torch.allclose(adv[:4].mean(), torch.tensor(0.0)) and adv[0] > 0 > adv[1]
    assert torch.equal(adv[4:], torch.zeros(4))  # all alike: nothing to prefer


def test_group_advantages_keep_the_scores_scale_unless_asked_to_standardise_per_group():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 10.01, 10.0, 10.0, 10.0])  # a tiny spread in the second group
    group = rl.group_advantages(scores, 4, "group")
    assert group[4] > group[0]  # standardised: a 0.01 difference outweighs the first group's 1.0
    none = rl.group_advantages(scores, 4, "none")
    assert torch.allclose(none, torch.tensor([0.5, -0.5, 0.5, -0.5, 0.0075, -0.0025, -0.0025, -0.0025]), atol=1e-5)
    batch = rl.group_advantages(scores, 4, "batch")
    assert torch.allclose(batch, none / scores.std(), atol=1e-4)
    with pytest.raises(ConfigError, match="scale_rewards"):
        rl.RLConfig(algo="grpo", samples_per_prompt=2, scale_rewards="std")


def test_the_rbrm_reward_goes_only_to_the_families_asked_for():
    class Constant:
        def score(self, messages, responses):
            return torch.zeros(len(responses))

    prompts = [rl.PromptRow([{"role": "user", "content": "How do I kill a Python process?"}], "allowed", "homonyms", "x:1"),
               rl.PromptRow([{"role": "user", "content": "What is 2 + 2?"}], None, "", "x:2")]
    refusal = ["I'm sorry, but I can't help with that.", "I'm sorry, but I can't help with that."]
    full = rl.PreferenceReward(Constant(), OracleGrader(), 0.5, ("allowed",))(prompts, refusal)
    assert full["rbrm"].tolist() == [-0.5, 0.0]  # over-refusal on the look-alike; no family: no safety reward
    assert rl.rbrm_by_family(prompts, full["rbrm"]) == {"rbrm_allowed": -0.5}  # logged per family
    ablated = rl.PreferenceReward(Constant(), OracleGrader(), 0.5, ("disallowed",))(prompts, refusal)
    assert ablated["rbrm"].tolist() == [0.0, 0.0]


def test_the_held_out_eval_sample_gives_each_family_an_equal_share():
    def row(family, i):
        return rl.PromptRow([{"role": "user", "content": f"q{i}"}], family, "", f"x:{i}")

    rows = [row("disallowed", i) for i in range(300)] + [row("allowed", i) for i in range(300, 310)] + \
           [row(None, i) for i in range(310, 1000)]
    picked = rl.stratified_sample(rows, 30, seed=0)
    families = [rows[i].family for i in picked]
    assert len(set(picked)) == 30 and picked == sorted(picked)
    assert (families.count("disallowed"), families.count("allowed"), families.count(None)) == (10, 10, 10)
    assert rl.stratified_sample(rows, 30, seed=0) == picked != rl.stratified_sample(rows, 30, seed=1)
    few = rl.stratified_sample(rows, 40, seed=0)  # the allowed family runs out: the others fill its turns
    assert len(few) == 40 and sum(rows[i].family == "allowed" for i in few) == 10
    assert len(rl.stratified_sample(rows[:5], 64, seed=0)) == 5


def test_bad_input_fails_with_a_typed_error_naming_the_problem(policy, prompts, tmp_path, tiny_tokenizer):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": "word " * 200}) + "\n")
    with pytest.raises(DataFileError, match=f"{long}:2"):
        rl.build_trainer(policy, ContainsWord(), long, tmp_path / "o", toy_config("ppo"))
    ends_with_assistant = tmp_path / "a.jsonl"
    ends_with_assistant.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(DataFileError, match=f"{ends_with_assistant}:1"):
        rl.read_prompts(ends_with_assistant)
    other = Tokenizer.train(corpus(), vocab_size=300)
    with pytest.raises(CheckpointError):
        rl.build_trainer(policy, ContainsWord(), prompts, tmp_path / "o", toy_config("ppo"), reward_tokenizer=other)
    rl.build_trainer(policy, ContainsWord(), prompts, tmp_path / "o", toy_config("ppo"), reward_tokenizer=tiny_tokenizer)
    with pytest.raises(ConfigError):
        toy_config("grpo", samples_per_prompt=1)
    with pytest.raises(ConfigError):
        toy_config("ppo", rbrm_families="disallowed,unsafe")
