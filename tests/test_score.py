"""The one scoring path: batched scores equal one plain forward per request, save the work
they claim to, and the server's echo reports the same numbers as `Engine.loglikelihood`."""

import random
import threading

import pytest
import torch

from opengpt4.engine.generate import Engine
from opengpt4.engine.score import (
    SHARED_PREFIX_MIN,
    ChatLoglikRequest,
    LoglikRequest,
    Row,
    loglikelihood,
    loglikelihood_naive,
    plan_batches,
    score_tokens,
    score_tokens_naive,
    tokenize_request,
)
from opengpt4.errors import ContextLengthExceeded
from opengpt4.evals.completion import loglik_from_echo
from opengpt4.serve.responses import echo_logprobs
from opengpt4.tokenizer import Tokenizer
from tests.helpers import WORDS


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer):
    return Engine(tiny_model, tiny_tokenizer, pack=False)


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def mixed_requests(seed: int = 0) -> list[LoglikRequest]:
    """Ragged contexts, shared few-shot prefixes, one-token letter choices, multi-token
    continuations, an empty context and continuation, unicode, and one too long for the model."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(2):  # MMLU-like: a long prefix per subject, questions, letters
        shots = sentence(rng, 40)
        for _ in range(5):
            context = f"{shots}\n{sentence(rng, rng.randint(2, 12))}\nAnswer:"
            reqs += [LoglikRequest(context, f" {letter}") for letter in "ABCD"]
    for _ in range(6):  # ARC-like: one context, choices of several tokens
        context = "Question: " + sentence(rng, rng.randint(3, 15)) + "?"
        reqs += [LoglikRequest(context, " " + sentence(rng, rng.randint(1, 5))) for _ in range(3)]
    reqs += [
        LoglikRequest("", "the cat sat"),
        LoglikRequest("the cat", ""),
        LoglikRequest("the ca", "t sat on a mat"),
        LoglikRequest("héllo wörld naï", "ve café"),
        LoglikRequest(sentence(rng, 200), " seven blue birds"),  # longer than max_seq_len: left-truncated
    ]
    rng.shuffle(reqs)
    return reqs


def assert_same(batched, naive):
    assert len(batched) == len(naive)
    for b, n in zip(batched, naive, strict=True):
        assert b.num_tokens == n.num_tokens
        assert b.is_greedy == n.is_greedy
        assert abs(b.logprob - n.logprob) < 1e-4, (b, n)


@pytest.mark.parametrize(("batch_size", "max_forward_tokens"), [(4, 512), (32, 512), (8, 20)])
def test_batched_loglikelihood_equals_one_plain_forward_per_request(engine, batch_size, max_forward_tokens):
    reqs = mixed_requests()
    calls = []
    batched = loglikelihood(engine, reqs, batch_size=batch_size, progress=lambda d, t: calls.append((d, t)),
                            max_forward_tokens=max_forward_tokens)
    naive = loglikelihood_naive(engine, reqs)
    assert_same(batched, naive)
    assert calls[-1] == (len(reqs), len(reqs))
    diff = max(abs(b.logprob - n.logprob) for b, n in zip(batched, naive, strict=True))
    print(f"max |batched - naive| = {diff:.2e}")


def test_without_bos_an_empty_context_is_conditioned_on_bos(tiny_model, tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer.backend, add_bos=False)
    engine = Engine(tiny_model, tokenizer, pack=False)
    reqs = mixed_requests(seed=1)
    assert_same(engine.loglikelihood(reqs, batch_size=8), loglikelihood_naive(engine, reqs))
    ids, start = tokenize_request(tokenizer, LoglikRequest("", "the cat"), 128)
    assert start == 1 and ids[0] == tokenizer.bos_id  # an empty context still conditions on something


def test_continuation_starts_at_the_first_token_ending_past_the_context(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, start = tokenize_request(tok, LoglikRequest("the cat", " sat"), 128)
    assert ids == [tok.bos_id, *tok.encode("the cat sat")]
    assert tok.decode(ids[start:]) == " sat"
    # A continuation that begins inside a token takes the whole token: " cat" ends after "the ca".
    ids, start = tokenize_request(tok, LoglikRequest("the ca", "t sat"), 128)
    assert tok.decode(ids[start:]) == " cat sat"
    # A character split over several byte tokens is all continuation (each token spans all of it).
    ids, start = tokenize_request(tok, LoglikRequest("the", "🦀"), 128)
    assert len(ids) - start > 1 and tok.decode(ids[start:]) == "🦀"


def test_a_request_longer_than_the_context_loses_context_from_the_left(tiny_tokenizer):
    tok = tiny_tokenizer
    context = " ".join(["the cat"] * 50)
    ids, start = tokenize_request(tok, LoglikRequest(context, " sat on a mat"), 16)
    assert len(ids) == 17 and tok.decode(ids[start:]) == " sat on a mat"  # the model reads 16
    assert ids == tok.encode(context + " sat on a mat")[-17:]
    with pytest.raises(ContextLengthExceeded) as e:  # the continuation alone does not fit
        tokenize_request(tok, LoglikRequest("the", " cat" * 20), 16)
    assert (e.value.limit, e.value.prompt_tokens) == (16, 20)


def test_a_chat_reply_is_scored_as_the_assistant_turn_sft_trains_on(engine, tiny_tokenizer):
    tok = tiny_tokenizer
    conversation = (("system", "Be brief."), ("user", "Where was the cat born?"))
    request = ChatLoglikRequest(conversation, "The cat was born in Paris.")
    ids, start = tokenize_request(tok, request, 512)
    rendered = tok.render_chat([{"role": r, "content": c} for r, c in conversation]
                               + [{"role": "assistant", "content": request.continuation}])
    # The prompt is what generation sees; the scored tokens are the SFT loss mask's: the reply and <|im_end|>.
    assert ids[:start] == tok.render_chat([{"role": r, "content": c} for r, c in conversation],
                                          add_generation_prompt=True).ids
    assert ids == rendered.ids[:len(ids)] and ids[-1] == tok.im_end_id
    assert ids[start:] == [t for t, m in zip(rendered.ids, rendered.loss_mask, strict=True) if m]
    assert tok.decode(ids[start:]) == "The cat was born in Paris.<|im_end|>"
    texts = [LoglikRequest("Question: Where was the cat born?\nAnswer:", " Paris")]
    chats = [ChatLoglikRequest(conversation[1:], reply) for reply in ("Paris.", "It was born in Rome.", "")]
    reqs = texts + chats + [request] + texts
    assert_same(engine.loglikelihood(reqs, batch_size=2), loglikelihood_naive(engine, reqs))


def test_is_greedy_only_when_every_continuation_token_is_the_argmax(engine, tiny_tokenizer):
    tok = tiny_tokenizer
    found = 0
    for context in ["the cat sat on", "seven blue birds", "def add(a, b):", "apples and", "in Paris"]:
        ids = [tok.bos_id, *tok.encode(context)]
        with torch.inference_mode():
            logits = engine.model(torch.tensor([ids]))[0, -1]
        best, worst = int(logits.argmax()), int(logits.argmin())
        for token, greedy in ((best, True), (worst, False)):
            continuation = tok.decode([token])
            full, start = tokenize_request(tok, LoglikRequest(context, continuation), 128)
            if full[start:] != [token]:  # the token does not survive re-tokenization here
                continue
            found += 1
            [result] = engine.loglikelihood([LoglikRequest(context, continuation)])
            assert result.is_greedy is greedy and result.num_tokens == 1
    assert found >= 4


def test_shared_prefix_is_run_once_per_batch_not_once_per_question(engine):
    """MMLU 5-shot shape: the few-shot block is run once per batch, not once per question."""
    rng = random.Random(2)
    shots = sentence(rng, 60)
    questions = [f"{shots}\n{sentence(rng, 5)}\nAnswer:" for _ in range(16)]
    reqs = [LoglikRequest(q, f" {c}") for q in questions for c in "ABCD"]
    naive = loglikelihood_naive(engine, reqs)
    tokens = []  # tokens per forward
    hook = engine.model.register_forward_pre_hook(lambda _m, args: tokens.append(args[0].numel()))
    try:
        assert_same(loglikelihood(engine, reqs, batch_size=16), naive)
        assert len(tokens) == 3  # prefix, questions, letters: one batch, four letters sharing one row
        naive_tokens = sum(len(tokenize_request(engine.tokenizer, r, 128)[0]) - 1 for r in reqs)
        assert sum(tokens) < 0.1 * naive_tokens
        tokens.clear()
        assert_same(loglikelihood(engine, reqs, batch_size=16, max_forward_tokens=64), naive)
        assert max(tokens) <= 64 and len(tokens) > 3  # the same, in chunks
    finally:
        hook.remove()


def test_plan_batches_groups_shared_prefixes_longest_first_within_budget():
    prefix_a, prefix_b = tuple(range(100, 100 + SHARED_PREFIX_MIN)), tuple(range(200, 200 + SHARED_PREFIX_MIN))
    rows = [Row(p + (i,) * (i % 5 + 1), (7,)) for i in range(12) for p in (prefix_a, prefix_b)]
    rows += [Row((i,) * (i + 1), (7, 8)) for i in range(5)]  # no shared prefix: the pool
    batches = plan_batches(rows, batch_size=8, max_batch_tokens=10_000)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    for b in batches:
        starts = {rows[i].ctx[:SHARED_PREFIX_MIN] for i in b}
        assert len(starts) == 1 or all(len(rows[i].ctx) < SHARED_PREFIX_MIN for i in b)
        lengths = [len(rows[i].ctx) for i in b]
        assert lengths == sorted(lengths, reverse=True)
    budget = 3 * (SHARED_PREFIX_MIN + 6)
    for b in plan_batches(rows, batch_size=8, max_batch_tokens=budget):
        assert len(b) * max(len(rows[i].ctx) + len(rows[i].tail) for i in b) <= budget


def test_token_scores_and_alternatives_equal_one_plain_forward_per_sequence(engine, tiny_tokenizer):
    """Per-token scores (what echo reports) come from the same batched path as log-likelihoods."""
    rng = random.Random(3)
    bos = tiny_tokenizer.bos_id
    shared = [bos, *tiny_tokenizer.encode(sentence(rng, 30))]  # a shared prefix, stage A
    sequences = [([bos, *tiny_tokenizer.encode(sentence(rng, rng.randint(2, 20)))], 1) for _ in range(4)]
    sequences += [([*shared, *tiny_tokenizer.encode(" " + sentence(rng, 3))], len(shared)) for _ in range(4)]
    sequences += [([*shared, last], len(shared)) for last in (5, 6, 7)]  # one row, three last tokens
    sequences += [([bos], 1), ([], 1)]  # nothing to score
    batched = score_tokens(engine, sequences, top=3, batch_size=4, max_forward_tokens=24)
    naive = score_tokens_naive(engine, sequences, top=3)
    for (ids, start), b, n in zip(sequences, batched, naive, strict=True):
        assert b.ids == n.ids == list(ids[start:])
        assert b.logprobs == pytest.approx(n.logprobs, abs=1e-4)
        assert b.greedy == n.greedy
        assert [[t for t, _ in top] for top in b.top] == [[t for t, _ in top] for top in n.top]
        assert all(len(top) == 3 and top[0][1] >= lp for top, lp in zip(b.top, b.logprobs, strict=True))


def test_prompt_logprobs_are_each_tokens_score_given_the_tokens_before_it(engine, tiny_tokenizer):
    ids = [tiny_tokenizer.bos_id, *tiny_tokenizer.encode("the cat sat on a mat")]
    scored = engine.prompt_logprobs(ids, top=2)
    with torch.inference_mode():
        logprobs = torch.log_softmax(engine.model(torch.tensor([ids]))[0, :-1].float(), dim=-1)
    assert [t.token_id for t in scored] == ids[1:]
    assert [t.logprob for t in scored] == pytest.approx(logprobs[range(len(ids) - 1), ids[1:]].tolist(), abs=1e-5)
    assert [t.top[0][0] for t in scored] == logprobs.argmax(-1).tolist()
    assert "".join(t.token for t in scored) == "the cat sat on a mat"
    too_long = [tiny_tokenizer.bos_id] * (engine.config.max_seq_len + 2)
    with pytest.raises(ContextLengthExceeded) as e:
        engine.prompt_logprobs(too_long)
    assert (e.value.limit, e.value.prompt_tokens) == (engine.config.max_seq_len, len(too_long))


def test_server_echo_and_engine_loglikelihood_agree(engine):
    """What `/v1/completions` with echo + logprobs returns, read with the boundary rule as an
    HTTP completion function reads it, is what `Engine.loglikelihood` computes locally."""
    requests = [r for r in mixed_requests(seed=4)
                if len(tokenize_request(engine.tokenizer, r, 10_000)[0]) <= engine.config.max_seq_len]
    assert len(requests) > 40
    local = engine.loglikelihood(requests)
    lock = threading.Lock()
    for request, want in zip(requests, local, strict=True):
        text = request.context + request.continuation
        echoed = echo_logprobs(engine, lock, text, engine.text_prompt(text), 1)
        got = loglik_from_echo(echoed.model_dump(), text, len(request.context))
        assert (got.num_tokens, got.is_greedy) == (want.num_tokens, want.is_greedy), request
        assert got.logprob == pytest.approx(want.logprob, abs=1e-5), request
