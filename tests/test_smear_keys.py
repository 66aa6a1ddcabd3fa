"""Smeared keys (ModelConfig.smear_keys): the same logits whether a sequence is scored whole, packed
beside another document, or decoded through the KV cache; and the mechanism does what it is for —
a one-layer model with them learns to copy from its context, where the same model without them
cannot (Olsson et al. 2022, section on smeared keys)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from opengpt4.engine.generate import Engine
from opengpt4.engine.scheduler import Scheduler
from opengpt4.errors import CheckpointError, ConfigError
from opengpt4.model import convert
from opengpt4.model.checkpoint import load_checkpoint, save_checkpoint
from opengpt4.model.transformer import IGNORE_INDEX, KVCache, Transformer
from opengpt4.scaling.family import byte_tokenizer, flops_per_token
from opengpt4.scaling.plan import DEFAULT_PLAN, Plan
from tests.helpers import tiny_config


def smeared_decoder(seed: int) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(dataclasses.replace(tiny_config(True), smear_keys=True)).eval()
    model.init_weights()
    for layer in model.model.layers:  # gates away from their even start, different per head
        layer.self_attn.smear_gate.data.normal_(0.0, 1.5)
    return model


def test_smeared_keys_change_the_logits_and_the_cache_reproduces_them():
    model = smeared_decoder(0)
    plain = Transformer(tiny_config(True)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "smear_gate" not in k})
    ids = torch.randint(0, 300, (3, 24))
    lengths = torch.tensor([24, 9, 17])
    with torch.no_grad():
        full = model(ids)
        assert (plain(ids) - full).abs().max() > 1e-3  # the gates are in the forward (100x the tolerance below)
        cache = KVCache(model.config, 3, 64)  # ragged prefill, then one token at a time
        model(ids[:, :8], cache=cache)
        steps = [model(ids[:, t : t + 1], cache=cache) for t in range(8, 24)]
    assert (torch.cat(steps, 1) - full[:, 8:]).abs().max() <= 1e-5
    with torch.no_grad():
        cache = KVCache(model.config, 3, 64)
        last = model(ids, cache=cache, num_valid=lengths, last_only=True)[:, 0]
        nxt = model(torch.tensor([[5], [6], [7]]), cache=cache)[:, 0]
        for b, n in enumerate(lengths.tolist()):
            assert (last[b] - full[b, n - 1]).abs().max() <= 1e-5
            alone = model(torch.cat([ids[b : b + 1, :n], torch.tensor([[5 + b]])], 1))[0, -1]
            assert (nxt[b] - alone).abs().max() <= 1e-5


def test_a_packed_document_does_not_smear_the_previous_documents_last_key():
    model = smeared_decoder(1)
    ids = torch.randint(0, 300, (2, 20))
    segments = torch.zeros(2, 20, dtype=torch.long)
    segments[:, 7:] = 1
    with torch.no_grad():
        packed = model(ids, segments=segments)
        second_alone = model(ids[:, 7:])
    assert (packed[:, 7:] - second_alone).abs().max() <= 1e-5


def test_the_gates_train_and_the_scaling_family_counts_the_same_flops_with_them():
    model = smeared_decoder(2).train()
    ids = torch.randint(0, 300, (2, 16))
    model(ids, targets=ids.roll(-1, 1)).backward()
    assert all(layer.self_attn.smear_gate.grad.abs().sum() > 0 for layer in model.model.layers)
    # The fifth attempt's family (smeared keys, 16-wide heads) against the built-in plan's, which a plan.json
    # from before the fields existed also loads as, so the earlier sweeps resume as they were
    old = json.loads(DEFAULT_PLAN.to_json())
    del old["smear_keys"], old["head_dim"]
    plain_plan = Plan.from_json_text(json.dumps(old))
    assert plain_plan == DEFAULT_PLAN
    fifth = dataclasses.replace(DEFAULT_PLAN, smear_keys=True, head_dim=16)
    smeared, plain = fifth.model_config("w64l2"), plain_plan.model_config("w64l2")
    assert (smeared.smear_keys, smeared.n_head, smeared.head_dim) == (True, 4, 16)
    assert (plain.smear_keys, plain.n_head, plain.head_dim) == (False, 2, 32)
    assert smeared.num_params() == plain.num_params() + smeared.n_layer * smeared.n_kv_head
    assert flops_per_token(smeared, 256) == flops_per_token(plain, 256)  # same matmuls, same attention FLOPs
    assert fifth.steps(fifth.target_run("w64l2")) == plain_plan.steps(plain_plan.target_run("w64l2"))


def test_the_paged_server_refuses_a_model_with_smeared_keys():
    engine = Engine(smeared_decoder(3), byte_tokenizer(), pack=False)
    with pytest.raises(ConfigError, match="smear_keys"):
        Scheduler(engine)


def test_a_checkpoint_keeps_its_gates_and_the_llama_export_refuses_it(tmp_path):
    model = smeared_decoder(4)
    save_checkpoint(tmp_path / "ck", model, byte_tokenizer())
    loaded, _ = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    with pytest.raises(CheckpointError, match="smear_keys"):
        convert.export_hf(tmp_path / "ck", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def copy_loss(smear: bool, steps: int = 150) -> float:
    """A one-layer model trained on rows of 30 random tokens where a 10-token sequence occurs twice, the
    first time 10-20 positions before the second (so no fixed-offset head can copy it): its loss on the
    second occurrence's last 9 tokens, each predictable from the first occurrence, on fresh rows."""
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(True), n_layer=1, vocab_size=64, smear_keys=smear)
    model = Transformer(config)
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, 64, (n, 30))
        for row, start in zip(ids, torch.randint(0, 11, (n,)).tolist(), strict=True):
            row[start : start + 10] = row[20:30]
        targets = torch.full_like(ids, IGNORE_INDEX)
        targets[:, 20:29] = ids[:, 21:30]
        return ids, targets

    for _ in range(steps):
        optimizer.zero_grad()
        ids, targets = batch(32)
        model(ids, targets=targets).backward()
        optimizer.step()
    with torch.no_grad():
        ids, targets = batch(256)
        return model(ids, targets=targets).item()


def test_one_layer_copies_from_its_context_only_with_smeared_keys():
    uniform = torch.log(torch.tensor(64.0)).item()  # 4.16 nats
    with_smear, without = copy_loss(True), copy_loss(False)
    assert with_smear < 0.5 * uniform  # it copies
    assert without > 0.8 * uniform  # one layer with no previous-token information cannot find what to copy
