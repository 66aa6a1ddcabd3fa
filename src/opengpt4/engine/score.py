"""Scoring text: the log-probability of given tokens, batched. The one scoring path.

Everything that asks "how likely is this text" comes here: multiple-choice evals
(log P(continuation | context), `loglikelihood`), the server's `echo` + `logprobs` (every
prompt token with its most likely alternatives, `Engine.prompt_logprobs`), and the reward
model, DPO and graders after them. A scored sequence is token ids plus the index `start` of
the first token to score; `score_tokens` gives each token from there its log-probability
given the tokens before it, whether it is the most likely token there, and optionally the
top-k alternatives.

Requests repeat themselves in two ways that this module turns into saved work:

- The same context with several continuations (ARC's four answers, MMLU's " A".." D"):
  each distinct context is run once and its KV cache copied to the rows of its
  continuations; requests whose model input is identical (one-token continuations of one
  context: MMLU's letters) share one row outright, as lm-eval does.
- A long prefix shared by many contexts (MMLU 5-shot: every question of a subject starts
  with the same ~500-token few-shot block): each batch runs its common prefix once and the
  contexts' remaining tokens against it, so a question costs about its own tokens.

A sequence's tokens go through three stages of right-padded forwards with a KV cache that
keeps a length per row: (A) the batch's shared prefix, once; (B) each distinct context's
remaining tokens except the last; (C) the last context token plus the scored tokens but the
last, whose logits are exactly the ones read. Only stage C computes logits over the
vocabulary for more than one position. A and B run in chunks of a few hundred tokens, the
size at which a CPU runs fastest per token. The result equals one plain forward per
sequence (`score_tokens_naive`, the reference) up to float rounding.

`LoglikRequest`s are tokenized by their boundary rule (`tokenize_request`); when the context
is empty and the tokenizer adds no BOS, the BOS token is put first anyway (the first token
needs something to be predicted from; lm-eval uses its end-of-text token the same way).
`ChatLoglikRequest`s score a reply as a chat model's next turn, after the chat template.
Requests longer than the model's context lose tokens from the left of the context, as in
lm-eval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from opengpt4.errors import ContextLengthExceeded
from opengpt4.model.transformer import KVCache, Transformer
from opengpt4.tokenizer import Tokenizer

if TYPE_CHECKING:
    from opengpt4.engine.generate import Engine

# A prefix shared by a batch is prefilled once when at least this long (below it, the extra
# forward call costs more than it saves); also the bar for grouping contexts into clusters.
SHARED_PREFIX_MIN = 32


@dataclass(frozen=True)
class LoglikRequest:
    """log P(continuation | context) for raw text (no chat template).

    Token boundary rule, shared by every implementation so that local and HTTP scores agree:
    tokenize `context + continuation` as one string (BOS first when the tokenizer adds one);
    the continuation's tokens are those from the first token whose character span ends after
    `len(context)` to the end.
    """

    context: str
    continuation: str


@dataclass(frozen=True)
class ChatLoglikRequest:
    """log P(reply | conversation) for a chat model: `continuation` scored as the assistant's next
    turn, its text and its end-of-turn token, after the `context` messages ((role, content)
    pairs) in the model's chat template. Chat control tokens are never text, so a chat reply
    cannot be scored as a `LoglikRequest`; a tuple keeps the request hashable."""

    context: tuple[tuple[str, str], ...]
    continuation: str


@dataclass
class Loglik:
    logprob: float  # sum of the continuation tokens' log-probabilities
    num_tokens: int  # continuation tokens
    is_greedy: bool  # every continuation token is the argmax at its position


@dataclass
class TokenScores:
    """The scored tokens of one sequence, each read against the distribution that predicts it."""

    ids: list[int]
    logprobs: list[float]
    greedy: list[bool]  # no other token is more likely there (ties count as greedy)
    top: list[list[tuple[int, float]]]  # per token: the `top` most likely (id, logprob), best first

    def loglik(self) -> Loglik:
        return Loglik(sum(self.logprobs), len(self.ids), all(self.greedy))


@dataclass(frozen=True)
class Row:
    """One model input: `ctx` (stages A/B) then `tail` (stage C), whose logits score `tail[1:] + (last,)`."""

    ctx: tuple[int, ...]
    tail: tuple[int, ...]


def tokenize_request(tokenizer: Tokenizer, request: LoglikRequest | ChatLoglikRequest,
                     max_seq_len: int) -> tuple[list[int], int]:
    """The token ids of context + continuation and the index of the first continuation token."""
    if isinstance(request, ChatLoglikRequest):
        ids, start = _chat_tokens(tokenizer, request)
    else:
        ids, offsets = tokenizer.encode_with_offsets(request.context + request.continuation)
        boundary = len(request.context)
        start = next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
        if tokenizer.add_bos or (start == 0 and ids):
            ids, start = [tokenizer.bos_id, *ids], start + 1
    excess = len(ids) - 1 - max_seq_len  # the model reads all ids but the last
    if excess > 0:
        if excess >= start:  # the continuation alone is longer than the context
            raise ContextLengthExceeded(max_seq_len, len(ids) - start)
        ids, start = ids[excess:], start - excess
    return ids, start


def _chat_tokens(tokenizer: Tokenizer, request: ChatLoglikRequest) -> tuple[list[int], int]:
    """The conversation with the reply as its last assistant turn, up to the reply's end-of-turn
    token; the scored tokens are that turn's loss-mask run, exactly what SFT trains on."""
    messages = [{"role": role, "content": content} for role, content in request.context]
    encoding = tokenizer.render_chat([*messages, {"role": "assistant", "content": request.continuation}])
    mask = encoding.loss_mask
    end = len(mask) - mask[::-1].index(1)  # just past the reply's <|im_end|>
    start = end - 1
    while mask[start - 1]:
        start -= 1
    return encoding.ids[:end], start


def loglikelihood(engine: Engine, requests: Sequence[LoglikRequest | ChatLoglikRequest], batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None, *,
                  max_batch_tokens: int = 16384, max_forward_tokens: int = 512) -> list[Loglik]:
    """Loglik of each request, in order (the arguments are `score_tokens`')."""
    max_seq_len = engine.model.config.max_seq_len
    sequences = [tokenize_request(engine.tokenizer, r, max_seq_len) for r in requests]
    scores = score_tokens(engine, sequences, batch_size=batch_size, progress=progress,
                          max_batch_tokens=max_batch_tokens, max_forward_tokens=max_forward_tokens)
    return [s.loglik() for s in scores]


def loglikelihood_naive(engine: Engine, requests: Sequence[LoglikRequest | ChatLoglikRequest]) -> list[Loglik]:
    """The reference for `loglikelihood`: one plain forward (no cache, no batching) per request."""
    max_seq_len = engine.model.config.max_seq_len
    sequences = [tokenize_request(engine.tokenizer, r, max_seq_len) for r in requests]
    return [s.loglik() for s in score_tokens_naive(engine, sequences)]


@torch.inference_mode()
def score_tokens(engine: Engine, sequences: Sequence[tuple[Sequence[int], int]], top: int = 0, *,
                 batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                 max_batch_tokens: int = 16384, max_forward_tokens: int = 512) -> list[TokenScores]:
    """Scores of `ids[start:]` for each (ids, start), in order; `top` alternatives per token.

    batch_size: distinct contexts per batch (each with all its continuations). max_batch_tokens
    caps rows x longest row, the KV cache's size. max_forward_tokens: tokens per forward, about
    (long contexts go in chunks; it also bounds the logits held at once). progress(done,
    total) is called after each batch, counting sequences.
    """
    model: Transformer = engine.model
    results: list[TokenScores | None] = [None] * len(sequences)
    row_index: dict[Row, int] = {}
    rows: list[Row] = []
    users: list[list[tuple[int, int]]] = []  # per row: (sequence index, last target token)
    for i, (ids, start) in enumerate(sequences):
        check_fits(ids, start, model.config.max_seq_len)
        if start >= len(ids):  # nothing to score
            results[i] = TokenScores([], [], [], [])
            continue
        row = Row(tuple(ids[: start - 1]), tuple(ids[start - 1 : -1]))
        if row not in row_index:
            row_index[row] = len(rows)
            rows.append(row)
            users.append([])
        users[row_index[row]].append((i, ids[-1]))

    done = len(sequences) - sum(len(u) for u in users)
    for batch in plan_batches(rows, batch_size, max_batch_tokens):
        for group, logits in run_rows(model, [rows[r] for r in batch], engine.tokenizer.pad_id, max_forward_tokens):
            for b, r in enumerate(batch[g] for g in group):
                tail = rows[r].tail
                targets = [[*tail[1:], last] for _, last in users[r]]
                for (index, _), scores in zip(users[r], read_scores(logits[b, : len(tail)], targets, top), strict=True):
                    results[index] = scores
                done += len(users[r])
        if progress is not None:
            progress(done, len(sequences))
    return results  # type: ignore[return-value]  # every entry is filled above


@torch.inference_mode()
def score_tokens_naive(engine: Engine, sequences: Sequence[tuple[Sequence[int], int]], top: int = 0) -> list[TokenScores]:
    """The reference for `score_tokens`: one plain forward (no cache, no batching) per sequence."""
    model: Transformer = engine.model
    device = model.model.embed_tokens.weight.device
    out = []
    for ids, start in sequences:
        check_fits(ids, start, model.config.max_seq_len)
        if start >= len(ids):
            out.append(TokenScores([], [], [], []))
            continue
        logits = model(torch.tensor([list(ids[:-1])], device=device))[0]
        out += read_scores(logits[start - 1 :], [list(ids[start:])], top)
    return out


def check_fits(ids: Sequence[int], start: int, max_seq_len: int) -> None:
    if start < 1 and ids:  # a bug in the caller: even BOS cannot be scored
        raise ValueError("the first token has nothing before it to be predicted from: score from index 1 on")
    if len(ids) - 1 > max_seq_len:  # the model reads all ids but the last
        raise ContextLengthExceeded(max_seq_len, len(ids))


def read_scores(logits: Tensor, targets: list[list[int]], top: int) -> list[TokenScores]:
    """Each target sequence read against the logits (T, V) that predict its T tokens. The
    sequences sharing one row differ only in their last token, so the distributions (and
    the alternatives) are computed once for all of them."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = logprobs.max(dim=-1).values
    alternatives: list[list[tuple[int, float]]] = [[] for _ in range(len(logits))]
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]), dim=-1)
        alternatives = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    out = []
    for tokens in targets:
        chosen = logprobs.gather(-1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0]
        # Compared by value, as a client reading echoed logprobs can only do: tied tokens are all greedy.
        out.append(TokenScores(tokens, chosen.tolist(), (chosen >= best).tolist(), alternatives))
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def plan_batches(rows: list[Row], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Row indices per batch: contexts with a long common prefix together, then by length.

    Sorted lexicographically, contexts that share a prefix are neighbours; a run of
    neighbours sharing >= SHARED_PREFIX_MIN tokens with enough contexts to fill a good part
    of a batch is a cluster, batched on its own so that its batches have the prefix in
    common. The rest form one pool. Within each, the longest contexts come first (little
    padding), and the rows of one context stay together in one batch."""
    if not rows:
        return []
    order = sorted(range(len(rows)), key=lambda i: rows[i].ctx + rows[i].tail)
    clusters = [[order[0]]]
    for prev, cur in zip(order, order[1:], strict=False):
        if common_prefix(rows[prev].ctx, rows[cur].ctx) >= SHARED_PREFIX_MIN:
            clusters[-1].append(cur)
        else:
            clusters.append([cur])
    min_contexts = max(2, batch_size // 4)
    big = [len({rows[i].ctx for i in c}) >= min_contexts for c in clusters]
    groups = [c for c, b in zip(clusters, big, strict=True) if b]
    groups.append([i for c, b in zip(clusters, big, strict=True) if not b for i in c])
    batches = []
    for group in groups:
        group.sort(key=lambda i: (-len(rows[i].ctx), rows[i].ctx, -len(rows[i].tail), rows[i].tail))
        batch: list[int] = []
        contexts, longest = 0, 0
        for i in group:
            new_context = not batch or rows[batch[-1]].ctx != rows[i].ctx
            size = len(rows[i].ctx) + len(rows[i].tail)
            if batch and new_context and (contexts >= batch_size
                                          or (len(batch) + 1) * max(longest, size) > max_batch_tokens):
                batches.append(batch)
                batch, contexts, longest = [], 0, 0
            contexts += new_context
            batch.append(i)
            longest = max(longest, size)
        if batch:
            batches.append(batch)
    return batches


def padded(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """(B, T) right-padded ids and (B,) lengths."""
    lengths = [len(s) for s in seqs]
    batch = torch.full((len(seqs), max(max(lengths), 1)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return batch.to(device), torch.tensor(lengths, device=device)


def run_rows(model: Transformer, rows: list[Row], pad_id: int,
             max_forward_tokens: int) -> Iterator[tuple[list[int], Tensor]]:
    """(row positions, their logits (B, T, V) at the tail positions), a group of rows at a time
    (stages A, B, C of the module docstring)."""
    device = model.model.embed_tokens.weight.device
    dtype = model.model.embed_tokens.weight.dtype
    contexts = list(dict.fromkeys(r.ctx for r in rows))  # distinct, in order
    shared = min(common_prefix(contexts[0], c) for c in contexts) if len(contexts) > 1 else 0
    if shared < SHARED_PREFIX_MIN:
        shared = 0
    cache_len = max(len(r.ctx) + len(r.tail) for r in rows)
    cache = KVCache(model.config, len(contexts), cache_len, device=device, dtype=dtype)
    if shared:  # stage A: once, then broadcast into every context's row
        prefix = KVCache(model.config, 1, shared, device=device, dtype=dtype)
        prefill(model, [contexts[0][:shared]], prefix, pad_id, max_forward_tokens)
        cache.k[:, :, :, :shared] = prefix.k[:, :, :, :shared]  # without the prefix's scratch slot
        cache.v[:, :, :, :shared] = prefix.v[:, :, :, :shared]
        cache.lengths.fill_(shared)
    prefill(model, [c[shared:] for c in contexts], cache, pad_id, max_forward_tokens)  # stage B

    # Stage C, in groups of about max_forward_tokens tokens: that bounds the logits held. A
    # context with one row is extended in place; one with several is copied for each row, so
    # those rows may go in any order: longest tails first, for the least padding.
    unique = len(contexts) == len(rows)
    where = {c: i for i, c in enumerate(contexts)}
    order = list(range(len(rows))) if unique else sorted(range(len(rows)), key=lambda i: -len(rows[i].tail))
    start = 0
    while start < len(order):
        end, longest = start + 1, len(rows[order[start]].tail)
        while end < len(order) and (end + 1 - start) * max(longest, len(rows[order[end]].tail)) <= max_forward_tokens:
            longest = max(longest, len(rows[order[end]].tail))
            end += 1
        group = order[start:end]
        group_cache = cache.view(start, end) if unique else cache.select([where[rows[i].ctx] for i in group])
        ids, lengths = padded([rows[i].tail for i in group], pad_id, device)
        yield group, model(ids, cache=group_cache, num_valid=lengths)
        start = end


def prefill(model: Transformer, seqs: list[Sequence[int]], cache: KVCache, pad_id: int, max_tokens: int) -> None:
    """Append each row's tokens to its cache row, in forwards of about max_tokens tokens.

    On a CPU a forward of a few hundred tokens runs fastest per token (larger ones fall out of
    the caches), so long contexts go through in chunks, which the KV cache makes exact.
    last_only: these logits are never read, so the vocabulary projection is skipped."""
    if not any(seqs):
        return
    ids, lengths = padded(seqs, pad_id, cache.lengths.device)
    step = max(1, max_tokens // len(seqs))
    for start in range(0, ids.shape[1], step):
        chunk = ids[:, start : start + step]
        model(chunk, cache=cache, num_valid=(lengths - start).clamp(0, chunk.shape[1]), last_only=True)
