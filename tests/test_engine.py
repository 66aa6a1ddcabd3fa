"""The inference engine against naive full-sequence decoding, plus sampling, stops, streaming and logprobs."""

import pytest
import torch
from PIL import Image

from opengpt4.engine.detokenize import IncrementalDecoder
from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.sampling import SamplingParams, apply_penalties, next_token, truncate


def naive_greedy(model, ids: list[int], steps: int) -> list[int]:
    """The reference: re-run the whole sequence for every token, no cache."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


@pytest.fixture
def engine(tiny_model, tiny_tokenizer):
    return Engine(tiny_model, tiny_tokenizer)


def prompts(tok):
    return [tok.encode(t) for t in ["the cat sat", "seven blue birds sang about 42 apples and", "def add(a, b):"]]


def test_greedy_matches_naive_decoding_and_batching(engine, tiny_model, tiny_tokenizer):
    ps = prompts(tiny_tokenizer)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    batched = engine.generate(ps, params)
    for p, [c] in zip(ps, batched, strict=True):
        assert c.token_ids == naive_greedy(tiny_model, p, 12)
        assert c.finish_reason == "length"
        assert c.text == tiny_tokenizer.decode(c.token_ids, skip_special=True)
    assert len({tuple(c.token_ids) for [c] in batched}) > 1  # the prompts matter


def test_seeded_sampling_is_reproducible_and_n_samples_differ(engine, tiny_tokenizer):
    p = prompts(tiny_tokenizer)[0]
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=123, n=3, ignore_eos=True)
    a = engine.generate([p], params)[0]
    b = engine.generate([p], params)[0]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) > 1
    # n samples share one prefill but sample independently: sample j equals a run that is alone
    other = engine.generate([p, prompts(tiny_tokenizer)[1]], params)[0]
    assert [c.token_ids for c in other] == [c.token_ids for c in a]


def test_any_integer_is_a_seed_and_reproduces(engine, tiny_tokenizer):
    """The API puts no bound on `seed`: seeds far beyond 64 bits (or negative) sample, and
    reproduce, instead of overflowing torch's generator."""
    p = prompts(tiny_tokenizer)[0]
    for seed in (2**70, -(2**80), 2**64 - 1):
        params = SamplingParams(max_tokens=6, temperature=1.0, seed=seed, ignore_eos=True)
        first, again = (engine.generate([p], params)[0][0].token_ids for _ in range(2))
        assert len(first) == 6 and first == again


def test_top_k_1_and_tiny_top_p_are_greedy(engine, tiny_tokenizer):
    p = prompts(tiny_tokenizer)[1]
    greedy = engine.generate([p], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0][0].token_ids
    for params in (SamplingParams(max_tokens=8, top_k=1, seed=1, ignore_eos=True),
                   SamplingParams(max_tokens=8, top_p=1e-6, seed=2, ignore_eos=True)):
        assert engine.generate([p], params)[0][0].token_ids == greedy


def test_truncate_masks_outside_top_k_top_p_and_penalties_subtract_exactly():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(truncate(logits, 2, 1.0)[2:]).all() and torch.isfinite(truncate(logits, 2, 1.0)[:2]).all()
    probs = logits.softmax(-1)  # [0.64, 0.24, 0.09, 0.03]
    kept = torch.isfinite(truncate(logits, 0, 0.8))
    assert kept.tolist() == [True, True, False, False] and probs[0] < 0.8
    counts = torch.tensor([0.0, 1.0, 3.0, 0.0])
    assert apply_penalties(logits, counts, 0.5, 0.25).tolist() == [3.0, 2.0 - 0.75, 1.0 - 1.25, 0.0]


def test_frequency_penalty_reduces_repetition(engine, tiny_tokenizer):
    p = prompts(tiny_tokenizer)[0]
    plain = engine.generate([p], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0][0].token_ids
    penal = engine.generate([p], SamplingParams(max_tokens=40, temperature=0, frequency_penalty=2.0,
                                                ignore_eos=True))[0][0].token_ids
    assert max(penal.count(t) for t in penal) < max(plain.count(t) for t in plain)


def test_stop_strings_never_leak(engine, tiny_tokenizer):
    p = prompts(tiny_tokenizer)[2]
    base = engine.generate([p], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0][0]
    assert len(base.text) > 12
    stop = base.text[5:9]  # a stop string from the middle of what the model says
    expected = base.text[: base.text.find(stop)]
    params = SamplingParams(max_tokens=30, temperature=0, stop=["zzzz-never", stop], ignore_eos=True)
    [c] = engine.generate([p], params)[0]
    assert c.text == expected and c.finish_reason == "stop"
    deltas = [d.text for d in engine.stream([p], params)]
    assert "".join(deltas) == expected
    assert not any(stop in d for d in deltas)


def test_incremental_decoder_never_splits_characters(tiny_tokenizer):
    text = "naïve café 🌍 世界 e\u0301 👩‍👩‍👧 ok"
    ids = tiny_tokenizer.encode(text)
    assert len(ids) > len(text) // 2  # many characters are byte tokens in this ASCII-ish vocab
    dec = IncrementalDecoder(tiny_tokenizer)
    deltas = [dec.push(i) for i in ids] + [dec.finish()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    # a stop string spanning many byte tokens is cut cleanly
    dec = IncrementalDecoder(tiny_tokenizer, stop=["世界"])
    out = "".join(dec.push(i) for i in ids) + dec.finish()
    assert out == "naïve café 🌍 " and dec.stopped


def test_logprobs_match_full_forward(engine, tiny_model, tiny_tokenizer):
    p = prompts(tiny_tokenizer)[0]
    [c] = engine.generate([p], SamplingParams(max_tokens=5, temperature=0.7, seed=5, logprobs=True,
                                              top_logprobs=3, ignore_eos=True))[0]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(torch.tensor([p + c.token_ids]))[0], -1)
    for i, lp in enumerate(c.logprobs):
        pos = len(p) - 1 + i
        assert lp.token_id == c.token_ids[i]
        assert abs(lp.logprob - logp[pos, lp.token_id].item()) < 1e-4
        assert [t for t, _, _ in lp.top] == torch.topk(logp[pos], 3).indices.tolist()
        assert lp.top[0][2] >= lp.logprob - 1e-6


def test_stops_at_a_stop_token_or_the_context_end_and_rejects_long_prompts(engine, tiny_model, tiny_tokenizer):
    p = prompts(tiny_tokenizer)[0]
    [c] = engine.generate([p], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[0]
    forced_eos = c.token_ids[3]  # pretend the 4th token ends the turn
    [d] = engine.generate([p], SamplingParams(max_tokens=50, temperature=0, stop_token_ids=[forced_eos]))[0]
    assert d.finish_reason == "stop" and d.token_ids == c.token_ids[: c.token_ids.index(forced_eos) + 1]
    limit = tiny_model.config.max_seq_len
    long_prompt = (p * 200)[: limit - 3]
    [e] = engine.generate([long_prompt], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[0]
    assert e.finish_reason == "length" and len(e.token_ids) == 3
    with pytest.raises(ValueError, match="maximum context length is 128 tokens"):
        engine.check_prompt(Prompt(p * 100), 10)


def test_chat_prompt_expands_an_image_to_placeholders_that_reach_the_logits(engine, tiny_tokenizer):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (20, 20), "red")},
                                             {"type": "text", "text": "the cat"}]}]
    prompt = engine.chat_prompt(messages)
    assert prompt.images.shape[0] == 1
    assert prompt.ids.count(tiny_tokenizer.image_id) == engine.config.vision.tokens_per_image
    [c] = engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    blue = engine.chat_prompt([messages[0], {"role": "user", "content": [
        {"type": "image", "image": Image.new("RGB", (20, 20), "blue")}, {"type": "text", "text": "the cat"}]}])
    with torch.no_grad():
        a = engine.model(torch.tensor([prompt.ids]), prompt.images)[0, -1]
        b = engine.model(torch.tensor([blue.ids]), blue.images)[0, -1]
    assert not torch.allclose(a, b)  # the image reaches the logits
    assert len(c.token_ids) == 4


def test_bad_sampling_params_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=3)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=["a", "b", "c", "d", "e"])


def test_sampling_follows_the_distribution():
    """Inverse-CDF sampling: frequencies match softmax(logits / T); masked tokens never come out."""
    logits = torch.tensor([0.0, 1.0, 2.0, float("-inf"), 0.5])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(20_000):
        counts[next_token(logits, SamplingParams(temperature=0.8), None, generator)] += 1
    expected = (logits / 0.8).softmax(-1)
    assert counts[3] == 0
    assert torch.allclose(counts / counts.sum(), expected, atol=0.015)
