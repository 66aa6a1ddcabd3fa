"""The paged KV cache: blocks as tokens arrive, shared prefixes, and logits equal to the unpaged path;
and a served model's packed weights held once."""


import pytest
import torch
from PIL import Image

from opengpt4.engine.generate import Engine, Prompt
from opengpt4.engine.kv_cache import BlockPool, PagedStep, Sequence, block_names, worst_case_blocks
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import Scheduler
from opengpt4.errors import ContextLengthExceeded, ImageError, InvalidRequest
from opengpt4.model.transformer import Linear, Transformer

ATOL = 1e-5


def random_ids(n):
    """Ordinary token ids (the special ones, the image placeholder among them, are ids 0-4)."""
    return torch.randint(20, 300, (n,)).tolist()


def reference_logits(model, ids):
    """Every position's logits of `ids` alone, without a cache."""
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0]


def pool_for(model, max_blocks=64, block_size=4):
    return BlockPool(model.config, max_blocks, block_size=block_size, initial_blocks=2)


def run(model, pool, decoding, chunks):
    """One flat forward; logits of each entry's last token. Allocates the blocks first, as the scheduler does."""
    for seq, _ in decoding:
        seq.grow(1)
    for seq, ids in chunks:
        seq.grow(len(ids))
    step = PagedStep(pool, decoding, chunks)
    with torch.inference_mode():
        logits = model.forward_flat(step, step.last)
    step.commit()
    return logits


def test_prompts_of_different_lengths_prefill_together_then_decode_as_alone(tiny_model):
    torch.manual_seed(1)
    prompts = [random_ids(n) for n in (3, 9, 17)]
    pool = pool_for(tiny_model)
    seqs = [Sequence(pool) for _ in prompts]
    logits = run(tiny_model, pool, [], list(zip(seqs, prompts, strict=True)))
    for p, row in zip(prompts, logits, strict=True):
        torch.testing.assert_close(row, reference_logits(tiny_model, p)[-1], atol=ATOL, rtol=0)
    # Decode rows of different lengths in one forward, next to the second chunk of a longer prompt.
    long_prompt = random_ids(11)
    late = Sequence(pool)
    run(tiny_model, pool, [], [(late, long_prompt[:6])])
    nexts = [70, 80, 90]
    logits = run(tiny_model, pool, list(zip(seqs, nexts, strict=True)), [(late, long_prompt[6:])])
    for p, t, row in zip(prompts, nexts, logits[:3], strict=True):
        torch.testing.assert_close(row, reference_logits(tiny_model, p + [t])[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[-1], reference_logits(tiny_model, long_prompt)[-1], atol=ATOL, rtol=0)
    assert [s.length for s in seqs] == [4, 10, 18] and pool.capacity < pool.max_blocks  # grown, not preallocated


def test_a_prefix_cache_hit_reuses_blocks_and_gives_the_same_logits(tiny_model):
    torch.manual_seed(2)
    system = random_ids(10)
    a_ids, b_ids = system + [50, 60, 70], system + [80, 90]
    pool = pool_for(tiny_model)
    a = Sequence(pool)
    run(tiny_model, pool, [], [(a, a_ids)])
    b = Sequence(pool)
    assert b.reuse(b_ids, block_names(b_ids, pool.block_size)) == 2
    hits = list(b.blocks)
    assert hits == a.blocks[:2]  # the two full blocks of the shared 10 tokens (block size 4)
    allocated_before = pool.capacity - len(pool.free)
    [logits] = run(tiny_model, pool, [], [(b, b_ids[b.length:])])
    torch.testing.assert_close(logits, reference_logits(tiny_model, b_ids)[-1], atol=ATOL, rtol=0)
    assert pool.capacity - len(pool.free) == allocated_before + 1  # 12 tokens: one block of its own
    assert all(pool.refs[block] == 2 for block in hits)
    a.free()
    b.free()
    assert pool.stats()["in_use"] == 0 and len(pool.evictable) == len(pool.cached) > 0  # kept, unreferenced


def test_an_idle_pool_shrinks_to_its_most_recent_cached_blocks_which_still_hit(tiny_model):
    pool = pool_for(tiny_model)
    seqs = [Sequence(pool) for _ in range(3)]
    prompts = [random_ids(17) for _ in seqs]
    run(tiny_model, pool, [], list(zip(seqs, prompts, strict=True)))
    for seq in seqs:
        seq.free()
    assert pool.capacity == 16 and len(pool.cached) == 12
    pool.trim(4)
    assert pool.capacity == 4 and all(t.shape[0] == 4 * 4 for t in pool.k + pool.v)  # the memory went back
    again = Sequence(pool)  # the last prompt's 4 blocks were the most recent: all kept
    assert again.reuse(prompts[2], block_names(prompts[2][:-1], 4)) == 4
    [logits] = run(tiny_model, pool, [], [(again, prompts[2][16:])])
    torch.testing.assert_close(logits, reference_logits(tiny_model, prompts[2])[-1], atol=ATOL, rtol=0)


def test_freed_blocks_return_and_named_ones_are_evicted_least_recent_first(tiny_model):
    pool = pool_for(tiny_model, max_blocks=4)
    first, second = Sequence(pool), Sequence(pool)
    run(tiny_model, pool, [], [(first, list(range(100, 108)))])  # two full, named blocks
    first.free()
    assert pool.available == 4 and len(pool.evictable) == 2
    run(tiny_model, pool, [], [(second, list(range(120, 134)))])  # four blocks: both cached ones evicted
    assert not pool.cached.keys() & set(block_names(list(range(100, 108)), 4))
    with pytest.raises(RuntimeError, match="exhausted"):  # the scheduler's reservations keep this from happening
        pool.allocate()
    second.free()
    assert pool.available == 4


def test_the_pool_reuses_cached_blocks_past_its_cache_share_instead_of_growing(tiny_model):
    pool = BlockPool(tiny_model.config, 64, block_size=4, initial_blocks=2, cached_blocks=1)
    for start in range(100, 180, 8):  # ten finished requests of two full, named blocks each
        seq = Sequence(pool)
        run(tiny_model, pool, [], [(seq, list(range(start, start + 8)))])
        seq.free()
    assert pool.capacity == 4  # the working set (2 blocks) and its doubling, not 20 blocks
    assert pool.cached.keys() & set(block_names(list(range(172, 180)), 4))  # the most recent stays cached


def test_fork_shares_full_blocks_and_copies_the_partial_one(tiny_model):
    torch.manual_seed(3)
    prompt = random_ids(6)
    pool = pool_for(tiny_model)
    parent = Sequence(pool)
    run(tiny_model, pool, [], [(parent, prompt)])
    child, allocated = parent.fork()
    assert allocated == 1 and child.blocks[0] == parent.blocks[0] and child.blocks[1] != parent.blocks[1]
    logits = run(tiny_model, pool, [(parent, 110), (child, 120)], [])
    for t, row in zip((110, 120), logits, strict=True):
        torch.testing.assert_close(row, reference_logits(tiny_model, prompt + [t])[-1], atol=ATOL, rtol=0)


def test_worst_case_blocks_counts_samples_after_the_shared_prompt():
    assert worst_case_blocks(prompt=10, max_new=6, n=1, block_size=4) == 4
    assert worst_case_blocks(prompt=10, max_new=6, n=3, block_size=4, hits=2) == 2 + 2 * (4 - 2)


# --- through the scheduler ---------------------------------------------------------------------
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer):
    return Engine(tiny_model, tiny_tokenizer, pack=False)


def finish(scheduler, handles):
    while not all(h.done.is_set() for h in handles):
        scheduler.step()
    return [[d.token_id for d in h.deltas()] for h in handles]


def solo(engine, ids, params=GREEDY):
    return engine.generate([ids], params)[0][0].token_ids


def test_a_shared_system_prompt_is_prefilled_once(engine, monkeypatch):
    torch.manual_seed(4)
    system = random_ids(40)
    first, second = system + random_ids(5), system + random_ids(7)
    prefilled = []
    forward = type(engine.model).forward_flat
    monkeypatch.setattr(type(engine.model), "forward_flat", lambda m, step, *a, **k:
                        prefilled.append(len(step.ids) - step.num_decoding) or forward(m, step, *a, **k))
    scheduler = Scheduler(engine, max_batch=4, block_size=8)
    [a] = finish(scheduler, [scheduler.submit(first, GREEDY)])
    prefilled.clear()
    [b] = finish(scheduler, [scheduler.submit(second, GREEDY)])
    assert a == solo(engine, first) and b == solo(engine, second)
    assert sum(prefilled) == len(second) - 40  # its 5 full blocks of 8 came from the cache
    assert scheduler.pool.stats()["in_use"] == 0 and scheduler.pool.stats()["cached"] >= 5


def test_prompts_arriving_together_share_the_blocks_computed_before_their_turn(engine, monkeypatch):
    torch.manual_seed(7)
    system = random_ids(16)
    prompts = [system + random_ids(3) for _ in range(3)]
    prefilled = []
    forward = type(engine.model).forward_flat
    monkeypatch.setattr(type(engine.model), "forward_flat", lambda m, step, *a, **k:
                        prefilled.append(len(step.ids) - step.num_decoding) or forward(m, step, *a, **k))
    scheduler = Scheduler(engine, max_batch=4, block_size=4, prefill_chunk=12)
    handles = [scheduler.submit(p, GREEDY) for p in prompts]  # all admitted at once: none is cached yet
    assert finish(scheduler, handles) == [solo(engine, p) for p in prompts]
    # The first prompt's 4 blocks of the shared 16 tokens are computed once; the second started
    # in the first step (before they existed) and took what was there at its second chunk.
    assert sum(prefilled) < sum(map(len, prompts)) - 16
    assert_returned(scheduler)


def test_image_prompts_batch_together_and_a_broken_one_fails_alone(engine):
    """Images of several prompts go through one flat forward in order; blocks holding image
    placeholders are never named (the ids do not say which picture); a prompt whose placeholders
    have no pixels fails alone, the others in its step run on."""
    def chat(color, text):
        return engine.chat_prompt([{"role": "user", "content": [
            {"type": "image", "image": Image.new("RGB", (20, 20), color)}, {"type": "text", "text": text}]}])

    red, blue = chat("red", "the cat"), chat("blue", "the cat")
    broken = Prompt(list(red.ids))  # placeholders, no pixels
    scheduler = Scheduler(engine, max_batch=4, block_size=4)
    handles = [scheduler.submit(p, GREEDY) for p in (red, broken, blue)]
    while not all(h.done.is_set() for h in handles):
        scheduler.step()
    with pytest.raises(ImageError):
        list(handles[1].deltas())
    for prompt, handle in ((red, handles[0]), (blue, handles[2])):
        assert [d.token_id for d in handle.deltas()] == solo(engine, prompt)
    assert_returned(scheduler)
    image_id = engine.tokenizer.image_id
    assert len(scheduler.pool.cached) == red.ids.index(image_id) // 4  # only the blocks before the image


def assert_returned(scheduler):
    assert scheduler.pool.stats()["in_use"] == 0 and scheduler.outstanding == 0 and scheduler.reserved == 0


def test_a_cancelled_request_returns_its_blocks(engine):
    torch.manual_seed(5)
    scheduler = Scheduler(engine, max_batch=4, block_size=4)
    keep = scheduler.submit(random_ids(9), SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    gone = scheduler.submit(random_ids(30), SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, n=2))
    for _ in range(3):
        scheduler.step()
    assert scheduler.num_decoding == 3
    gone.cancel()
    scheduler.step()
    [kept] = scheduler.decoding
    assert gone.done.is_set() and scheduler.pool.stats()["in_use"] == len(kept.seq.blocks)
    finish(scheduler, [keep])
    assert_returned(scheduler)


def test_a_full_pool_queues_requests_and_one_that_never_fits_is_refused(engine):
    torch.manual_seed(6)
    prompts = [random_ids(10) for _ in range(3)]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    scheduler = Scheduler(engine, max_batch=8, kv_tokens=32, block_size=4)  # two requests of 16 tokens at a time
    assert scheduler.pool.nbytes == 0  # nothing allocated before the first request
    handles = [scheduler.submit(p, params) for p in prompts]
    scheduler.step()
    assert len(scheduler.prefilling) + scheduler.num_decoding == 2 and len(scheduler.waiting) == 1
    assert finish(scheduler, handles) == [solo(engine, p, params) for p in prompts]
    assert scheduler.max_context == 32
    with pytest.raises(ContextLengthExceeded):
        scheduler.submit(random_ids(30), params)
    with pytest.raises(InvalidRequest, match="KV cache"):
        scheduler.submit(random_ids(10), SamplingParams(max_tokens=6, n=4))  # 4 blocks, 2 more per extra choice
    assert scheduler.pool.capacity == 8 and scheduler.pool.stats()["in_use"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_held_once_keep_logits_and_state_dict(tiny_tokenizer, tiny_model, dtype):
    # A model of its own, not a copy: the session's tiny_model may carry an engine's packed weights.
    model = Transformer(tiny_model.config).to(dtype).eval()
    model.load_state_dict(tiny_model.state_dict())
    ids = torch.randint(20, 300, (2, 9))
    with torch.no_grad():
        plain, state = model(ids), {k: v.clone() for k, v in model.state_dict().items()}
        if model.pack_for_cpu_inference(only_if_faster=False, release_plain=True) == 0:
            pytest.skip(f"oneDNN cannot pack {dtype} weights on this CPU")
        released = [m for m in model.modules() if isinstance(m, Linear) and m.released]
        assert released and all(m.weight.untyped_storage().nbytes() == dtype.itemsize for m in released)
        torch.testing.assert_close(model(ids), plain, atol=1e-4 if dtype == torch.float32 else 0.1, rtol=0)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights come back whole
    with pytest.raises(RuntimeError, match="inference only"):
        model(ids, targets=ids)
