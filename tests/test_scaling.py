"""The scaling family, its FLOP count, the corpus checks and the fits (no training: test_scaling_sweep.py)."""

import json
import math

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from opengpt4.config import TrainConfig, apply_overrides, get_preset
from opengpt4.errors import ConfigError
from opengpt4.model.transformer import Transformer
from opengpt4.scaling import fit as F
from opengpt4.scaling.data import Decontamination, compression_floors, encode, window_hashes
from opengpt4.scaling.family import BYTE_OFFSET, SHAPES, byte_tokenizer, flops_per_token, model_config
from opengpt4.scaling.measure import compiles, neg_mean_log_pass_rate, problems, program
from opengpt4.scaling.plan import DEFAULT_PLAN, Plan
from opengpt4.train.optim import lr_at


def test_flop_count_matches_torchs_flop_counter():
    config = model_config("w64l2", 128)
    model = Transformer(config)
    model.init_weights()
    x = torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (2, 129))
    # The math backend runs attention as matmuls the counter sees (the fused CPU kernel it does not count).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x[:, :-1], None, targets=x[:, 1:], reduction="sum").backward()
    counted = counter.get_total_flops()
    ours = flops_per_token(config, 128)["total"] * x[:, :-1].numel()
    assert abs(ours - counted) / counted < 0.05, (ours, counted)
    assert flops_per_token(config, 128)["total"] == config.flops_per_token(128)  # one count, two readers


def test_family_spans_the_sizes_the_sweep_needs():
    params = [model_config(name, 256).num_params() for name in SHAPES]
    assert params == sorted(params) and params[0] < 50_000 and params[-1] > 3_000_000
    assert all(32 <= s.width <= 256 and 1 <= s.layers <= 6 for s in SHAPES.values())
    assert all(b / a < 2.2 for a, b in zip(params, params[1:], strict=False))  # no jump like d1 -> d2's 7x


def test_byte_tokenizer_is_bytes_plus_an_offset():
    tok = byte_tokenizer()
    text = "def f(x):\n\treturn x  # héllo \x00 ✓"
    ids = tok.encode(text)
    assert ids == list(encode([text.encode()], tok.bos_id)[1:])
    assert tok.decode(ids) == text and tok.vocab_size == BYTE_OFFSET + 256


def test_window_hashes_match_a_direct_computation():
    data = bytes(np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8))
    for width in (1, 7, 50, 200):
        h = window_hashes(data, width)
        assert len(h) == len(data) - width + 1
        for i in (0, 13, len(h) - 1):
            expected = sum((data[i + j] + 1) * pow(0x100000001B3, width - 1 - j, 2**64) for j in range(width)) % 2**64
            assert int(h[i]) == expected


def test_decontamination_finds_a_planted_overlap():
    rng = np.random.default_rng(1)
    heldout = bytes(rng.integers(97, 123, 5000, dtype=np.uint8))
    clean = bytes(rng.integers(97, 123, 20000, dtype=np.uint8))
    check = Decontamination([heldout])
    check.add_training(clean)
    assert check.share() == 0.0
    check.add_training(clean[:100] + heldout[1000:1120] + clean[100:200])  # 120 bytes: 71 of the 50-byte windows
    assert check.share() == pytest.approx(71 / (5000 - 49))
    assert not check.shares_span(clean + heldout[2000:2199])  # 199 bytes in common: kept
    assert check.shares_span(clean + heldout[2000:2200])  # 200: dropped


def test_compression_floors_are_bits_per_byte():
    text = b"def add(a, b):\n    return a + b\n" * 50
    floors = compression_floors([text])
    assert set(floors) == {"gzip-9", "xz-9e"} and all(0 < v < 8 for v in floors.values())


def test_power_law_fit_recovers_known_parameters_from_noisy_points():
    rng = np.random.default_rng(0)
    c = np.geomspace(3e11, 3e13, 6)
    a, b, e, target = 0.9, -0.12, 1.1, 3e14
    loss = a * (c / target) ** b + e
    fit = F.fit_power_law(c, loss * np.exp(rng.normal(0, 0.003, len(c))), target)
    assert fit["b"] == pytest.approx(b, abs=0.04) and fit["c"] == pytest.approx(e, abs=0.15)
    assert float(F.power_law(fit, target)) == pytest.approx(a + e, rel=0.02)  # the prediction is what matters


def test_the_frontier_keeps_the_irreducible_term_only_where_the_minima_show_it():
    rng = np.random.default_rng(0)
    target = 3e14
    # four minima on a straight line in log-log, with noise: c is not identified, the pure power law predicts
    c = np.array([1e12, 3e12, 1e13, 3e13])
    straight = 2.8 * (c / 1e12) ** -0.085 * np.exp(rng.normal(0, 0.01, len(c)))
    fit = F.fit_frontier(c, straight, target, delta=F.noise_scaled_delta(0.03, straight))
    assert fit["form"] == "a C^b" and fit["c"] == 0.0 and fit["f_test"]["p"] > 0.05
    assert float(F.power_law(fit, target)) == pytest.approx(2.8 * 300 ** -0.085, rel=0.03)
    # eight minima over three decades, bending towards c = 1.1: the F-test keeps it
    c = np.geomspace(3e10, 3e13, 8)
    bent = 0.9 * (c / target) ** -0.3 + 1.1
    fit = F.fit_frontier(c, bent * np.exp(rng.normal(0, 0.002, len(c))), target, delta=F.noise_scaled_delta(0.005, bent))
    assert fit["form"] == "a C^b + c" and fit["f_test"]["p"] < 0.05 and fit["c"] == pytest.approx(1.1, abs=0.15)
    # three minima leave no degree of freedom to test c with
    assert F.fit_frontier(c[:3], bent[:3], target)["f_test"]["p"] is None


def test_chinchilla_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    n = np.geomspace(2e4, 2e6, 12)
    d = np.geomspace(1e7, 1e5, 12)[rng.permutation(12)]
    true = {"E": 1.2, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}
    loss = np.array([F.chinchilla(true, ni, di) for ni, di in zip(n, d, strict=True)]) * np.exp(rng.normal(0, 0.002, 12))
    fit = F.fit_chinchilla(n, d, loss)
    for ni, di in [(1e6, 3e7), (5e4, 1e6)]:
        assert F.chinchilla(fit, ni, di) == pytest.approx(F.chinchilla(true, ni, di), rel=0.03)


def test_isoflop_minimum_is_the_parabolas_vertex():
    results = [{"budget": 1e12, "params": n, "bpb": 2.0 + 0.1 * (math.log(n) - math.log(1e5)) ** 2, "flops": 1e12,
                "model": str(n), "seed": 0} for n in (3e4, 6e4, 2e5, 5e5)]
    (m,) = F.isoflop_minima(results)
    assert m["interior"] and m["n_opt"] == pytest.approx(1e5, rel=1e-6) and m["bpb_opt"] == pytest.approx(2.0)
    assert F.seed_sd(results + [dict(results[0], bpb=results[0]["bpb"] + 0.02)])["sd"] == pytest.approx(0.02 / 2**0.5)


def test_the_fit_leaves_out_minima_at_the_edge_of_the_sizes_tried():
    def budget(c, ns):  # a parabola in log N around 1e5 parameters, sampled at the sizes ns
        return [{"budget": c, "params": n, "bpb": 2.0 + 0.1 * (math.log(n) - math.log(1e5)) ** 2, "flops": c,
                 "model": str(n), "seed": 0} for n in ns]
    bracketed = (3e4, 6e4, 2e5, 5e5)
    minima = F.isoflop_minima(budget(1e11, (3e5, 6e5, 1e6)) + [r for c in (1e12, 1e13, 1e14) for r in budget(c, bracketed)])
    assert [m["interior"] for m in minima] == [False, True, True, True]
    assert [m["budget"] for m in F.fitted_minima(minima)] == [1e12, 1e13, 1e14]
    assert F.fitted_minima(minima[:3]) == minima[:3]  # two interior: too few for 3 parameters, so all


def test_default_plan_meets_the_issue():
    budgets = sorted(map(float, DEFAULT_PLAN.budgets))
    assert len(budgets) >= 5 and budgets[0] == 3e11 and budgets[-1] == 3e13
    assert all(3 <= len(sizes) <= 4 for sizes in DEFAULT_PLAN.budgets.values())
    runs = DEFAULT_PLAN.runs()
    assert {r.seed for r in runs if r.budget <= budgets[1]} == {0, 1} and {r.seed for r in runs if r.budget > budgets[1]} == {0}
    assert all(DEFAULT_PLAN.steps(r) >= 400 for r in runs)  # every run long enough that its length is not what it measures
    assert Plan.from_json_text(DEFAULT_PLAN.to_json()) == DEFAULT_PLAN
    # a new attempt on the same data starts at other seeds, its target too
    moved = Plan(**{**json.loads(DEFAULT_PLAN.to_json()), "first_seed": 10})
    assert {r.seed for r in moved.runs() if r.budget <= budgets[1]} == {10, 11}
    assert {r.seed for r in moved.runs() if r.budget > budgets[1]} == {10} and moved.target_run("w192l5").seed == 10


def test_trainer_settings_the_sweep_needs():
    model = get_preset("d4")
    apply_overrides(model, ["vision=null"])  # a text-only model from the command line
    assert model.vision is None
    with pytest.raises(ConfigError):
        apply_overrides(model, ["n_layer=null"])  # only optional settings take null
    cfg = TrainConfig(lr=1.0, warmup_fraction=0.1, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert [lr_at(cfg, s, s / 100, warmup_steps=10) for s in (0, 9, 10, 79, 90)] == \
        pytest.approx([0.1, 1.0, 1.0, 1.0, 0.5])


def test_capability_problems_are_solvable_and_checked():
    todo = problems()
    assert len(todo) == 25 and len({p["name"] for p in todo}) == 25
    from opengpt4.data.tasks import FUNCTIONS, Function

    functions = {Function.of(f, k).name: Function.of(f, k) for f in FUNCTIONS for k in f[-1]}
    from opengpt4.evals.sandbox import run_many

    right = [program(p, functions[p["name"]].solution) for p in todo[:3]]
    wrong = [program(p, "    return None\n") for p in todo[:3]]
    assert all(compiles(s) for s in right) and not compiles(program(todo[0], "    return (\n"))
    assert [r.status for r in run_many(right + wrong, timeout=10)] == ["passed"] * 3 + ["failed"] * 3
    rates = {"a": {"passed": 100, "samples": 100}, "b": {"passed": 0, "samples": 100}}
    assert neg_mean_log_pass_rate(rates) == pytest.approx(-(math.log(100.5 / 101) + math.log(0.5 / 101)) / 2)
