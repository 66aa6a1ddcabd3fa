"""Continuous batching: requests that join and leave a running batch get Engine's own results."""

import threading

import pytest

from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import Scheduler
from opengpt4.errors import QueueFull

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer):
    return Engine(tiny_model, tiny_tokenizer, pack=False)


def prompts(tokenizer, k):
    texts = ["the cat sat on a mat", "seven blue birds", "def add(a, b): return a + b", "héllo wörld",
             "1337 pears in Paris while", "naïve café", "the mat", "42 apples and"]
    return [tokenizer.encode(texts[i % len(texts)]) for i in range(k)]


def collect(handle):
    """Texts and token ids per sample index, from the handle's deltas."""
    texts, ids, reasons = {}, {}, {}
    for d in handle.deltas():
        assert d.prompt_index == 0
        texts[d.sample_index] = texts.get(d.sample_index, "") + d.text
        ids.setdefault(d.sample_index, []).append(d.token_id)
        if d.finish_reason:
            reasons[d.sample_index] = d.finish_reason
    return texts, ids, reasons


def solo(engine, prompt, params):
    return engine.generate([prompt], params)[0]


def run_until_done(scheduler, handles):
    while not all(h.done.is_set() for h in handles):
        scheduler.step()


def assert_all_returned(scheduler):
    """Nothing left running, no row or block still promised, no block still referenced."""
    assert scheduler.num_decoding == 0 and scheduler.reserved == 0 and scheduler.outstanding == 0
    assert not scheduler.prefilling and scheduler.pool.stats()["in_use"] == 0


def test_requests_joining_mid_flight_equal_solo_greedy(engine, tiny_tokenizer):
    ps = prompts(tiny_tokenizer, 5)
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in (12, 5, 9, 7, 12)]
    scheduler = Scheduler(engine, max_batch=4, prefill_chunk=4)
    handles = [scheduler.submit(p, sp) for p, sp in zip(ps[:3], params[:3], strict=True)]
    for _ in range(3):
        scheduler.step()
    handles += [scheduler.submit(p, sp) for p, sp in zip(ps[3:], params[3:], strict=True)]  # one waits for a free row
    run_until_done(scheduler, handles)
    for p, sp, h in zip(ps, params, handles, strict=True):
        expected = solo(engine, p, sp)[0]
        texts, ids, reasons = collect(h)
        assert ids[0] == expected.token_ids and texts[0] == expected.text and reasons[0] == "length"
        assert h.prompt_tokens == len(p) and h.completion_tokens == sp.max_tokens
    assert_all_returned(scheduler)


def test_long_prefill_does_not_stall_decoding_rows(engine, tiny_tokenizer):
    scheduler = Scheduler(engine, max_batch=4, prefill_chunk=8)
    short = [scheduler.submit(p, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
             for p in prompts(tiny_tokenizer, 2)]
    scheduler.step()
    long_prompt = sum(prompts(tiny_tokenizer, 8), [])[:40]  # five chunks of 8
    long = scheduler.submit(long_prompt, GREEDY)
    before = [h._deltas.qsize() for h in short]
    steps = 0
    while scheduler.prefilling or steps == 0:
        scheduler.step()
        steps += 1
        now = [h._deltas.qsize() for h in short]
        assert now == [b + 1 for b in before], "every decoding row gets a token on every step"
        before = now
    assert steps == 5
    run_until_done(scheduler, short + [long])
    assert collect(long)[1][0] == solo(engine, long_prompt, GREEDY)[0].token_ids
    for p, h in zip(prompts(tiny_tokenizer, 2), short, strict=True):
        assert collect(h)[1][0] == solo(engine, p, SamplingParams(max_tokens=30, temperature=0.0,
                                                                  ignore_eos=True))[0].token_ids


def test_n_samples_share_one_prefill_and_seeds_reproduce(engine, tiny_tokenizer, monkeypatch):
    p, other = prompts(tiny_tokenizer, 2)
    sampled = SamplingParams(max_tokens=10, temperature=1.0, seed=7, n=2, ignore_eos=True)
    scheduler = Scheduler(engine, max_batch=4, prefill_chunk=64)
    prefilled = []  # the prompt tokens of each forward
    forward = type(engine.model).forward_flat
    monkeypatch.setattr(type(engine.model), "forward_flat", lambda m, step, *a, **k:
                        prefilled.append(step.ids[step.num_decoding:]) or forward(m, step, *a, **k))
    busy = scheduler.submit(other, GREEDY)
    scheduler.step()
    h = scheduler.submit(p, sampled)
    run_until_done(scheduler, [busy, h])
    assert prefilled.count(p) == 1  # one prefill for both samples
    expected = solo(engine, p, sampled)
    _, ids, _ = collect(h)
    assert [ids[0], ids[1]] == [c.token_ids for c in expected] and ids[0] != ids[1]


def test_cancel_frees_the_row_and_others_finish(engine, tiny_tokenizer):
    ps = prompts(tiny_tokenizer, 3)
    params = SamplingParams(max_tokens=15, temperature=0.0, ignore_eos=True)
    scheduler = Scheduler(engine, max_batch=2)
    a, b = scheduler.submit(ps[0], params), scheduler.submit(ps[1], params)
    c = scheduler.submit(ps[2], params)  # waits: no free row
    for _ in range(3):
        scheduler.step()
    assert not c._deltas.qsize()
    a.cancel()
    scheduler.step()
    # One forward a step, one token a step: the first step's from the prompt's logits.
    assert a.done.is_set() and len(list(a.deltas())) == 3
    assert c._deltas.qsize() == 1  # the freed row went to the waiting request in the same step
    run_until_done(scheduler, [b, c])
    for p, h in zip(ps[1:], (b, c), strict=True):
        assert collect(h)[1][0] == solo(engine, p, params)[0].token_ids


def test_queue_full_and_context_checked_before_work(engine, tiny_tokenizer):
    scheduler = Scheduler(engine, max_batch=1, max_queue=2)
    p = prompts(tiny_tokenizer, 1)[0]
    scheduler.submit(p, GREEDY)
    scheduler.submit(p, GREEDY)
    with pytest.raises(QueueFull):
        scheduler.submit(p, GREEDY)
    limit = engine.config.max_seq_len
    with pytest.raises(ValueError, match=f"maximum context length is {limit} tokens. However, you requested "
                                         f"{len(p) + limit} tokens"):
        scheduler.submit(p, SamplingParams(max_tokens=limit))
    short = Scheduler(engine, max_context=16)
    with pytest.raises(ValueError, match="maximum context length is 16 tokens"):
        short.submit(p, SamplingParams(max_tokens=16))
    assert not short.waiting and not scheduler.prefilling


def test_stop_strings_never_leak(engine, tiny_tokenizer):
    p = prompts(tiny_tokenizer, 1)[0]
    free = solo(engine, p, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert stop.strip(), "the tiny model's greedy text should be long enough to cut"
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, stop=[stop])
    scheduler = Scheduler(engine)
    h = scheduler.submit(p, params)
    run_until_done(scheduler, [h])
    texts, _, reasons = collect(h)
    assert stop not in texts[0] and texts[0] == solo(engine, p, params)[0].text and reasons[0] == "stop"


def test_background_thread_with_concurrent_submitters(engine, tiny_tokenizer):
    ps = prompts(tiny_tokenizer, 8)
    scheduler = Scheduler(engine, max_batch=3, prefill_chunk=4)
    scheduler.start()
    results, errors = {}, []

    def client(k):
        try:
            for i in (k, k + 4):
                results[i] = collect(scheduler.submit(ps[i], GREEDY))[1][0]
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    scheduler.stop()
    assert not errors
    assert [results[i] for i in range(8)] == [c[0].token_ids for c in engine.generate(ps, GREEDY)]


def test_a_request_that_cannot_start_fails_alone(engine, tiny_tokenizer, monkeypatch):
    """Whatever happens to a request as it starts decoding (here a fault injected into building
    its decoding state), it ends: its handle closes, and the batch around it runs on."""
    build_row = engine.new_row

    def faulty(prompt_index, sample_index, params, max_new):
        if params.seed == 666:
            raise RuntimeError("injected fault")
        return build_row(prompt_index, sample_index, params, max_new)

    monkeypatch.setattr(engine, "new_row", faulty)
    p = prompts(tiny_tokenizer, 1)[0]
    scheduler = Scheduler(engine, max_batch=4)
    ok = scheduler.submit(p, GREEDY)
    odd = scheduler.submit(p, SamplingParams(max_tokens=4, seed=666))
    run_until_done(scheduler, [ok, odd])
    assert collect(ok)[1][0] == solo(engine, p, GREEDY)[0].token_ids
    assert_all_returned(scheduler)
