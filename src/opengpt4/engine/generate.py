"""Batched generation with a KV cache: prefill once, then one token per row per step.

Prompts of different lengths share one right-padded prefill (the cache keeps a length
per row). `n` samples of a prompt share its prefill: the cache rows are copied after it.
Rows leave the batch as soon as they finish, so the remaining ones run at their own size.
`stream` yields one `Delta` per row per step; `generate` collects them into `Completion`s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from opengpt4.engine import score
from opengpt4.engine.detokenize import IncrementalDecoder
from opengpt4.engine.grammar import GrammarTokenizer, Matcher
from opengpt4.engine.sampling import SamplingParams, next_token, token_logprobs
from opengpt4.errors import ContextLengthExceeded, InvalidRequest
from opengpt4.model.precision import apply_precision, load_dtype, precision_of
from opengpt4.model.transformer import KVCache, Transformer
from opengpt4.model.vision import preprocess
from opengpt4.tokenizer import Tokenizer


@dataclass
class Prompt:
    ids: list[int]
    images: Tensor | None = None  # (N, 3, S, S) preprocessed pixels for its <|image|> placeholders

    @property
    def has_images(self) -> bool:
        return self.images is not None and len(self.images) > 0


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """What one step produced for one choice of one prompt."""

    prompt_index: int
    sample_index: int
    text: str
    token_id: int | None = None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None  # "stop" or "length" on the last delta of a choice


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Row:
    prompt_index: int
    sample_index: int
    params: SamplingParams
    max_new: int  # max_tokens, capped by the context left after the prompt
    decoder: IncrementalDecoder
    generator: torch.Generator | None
    counts: Tensor | None  # generated-token counts, only when a penalty needs them
    generated: int = 0
    grammar: Matcher | None = None  # where the output is in its grammar (params.grammar)


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, pack: bool = True,
                 own_weights: bool = False) -> None:
        """pack: prepack the weights for oneDNN on CPU where that decodes faster. own_weights: the
        model was loaded for this engine alone, so packed weights drop their plain copy (held
        once, not twice; the model can no longer be trained)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        if pack:
            model.pack_for_cpu_inference(release_plain=own_weights)
        self._token_texts: list[str] | None = None
        self._grammar_tokenizer: GrammarTokenizer | None = None

    @classmethod
    def load(cls, model: str, precision: str = "auto") -> Engine:
        """An engine for a checkpoint dir or imported model name at an inference precision
        (`auto`, float32, bf16-weights or bfloat16: see model/precision.py)."""
        from opengpt4.model.checkpoint import load_checkpoint

        m, tok = load_checkpoint(model, dtype=load_dtype(precision), route_image_adapters=True)
        return cls(apply_precision(m, precision), tok, own_weights=True)

    @property
    def precision(self) -> str:
        """The precision mode the weights are in (what an eval cache key must include)."""
        return precision_of(self.model)

    def text_prompt(self, text: str) -> Prompt:
        """Raw text, no chat template: BOS first when the tokenizer's model was trained so."""
        return Prompt(self.tokenizer.encode(text, add_bos=self.tokenizer.add_bos))

    @property
    def token_texts(self) -> list[str]:
        """Each token's text on its own; built on first use."""
        if self._token_texts is None:
            self._token_texts = [self.tokenizer.decode([i]) for i in range(self.config.vocab_size)]
        return self._token_texts

    @property
    def grammar_tokenizer(self) -> GrammarTokenizer:
        """The vocabulary as constrained decoding sees it; built on first use."""
        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = GrammarTokenizer(self.tokenizer, self.config.vocab_size)
        return self._grammar_tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.embed_tokens.weight.dtype

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    response_schema: dict[str, Any] | None = None) -> Prompt:
        """Render chat messages (OpenAI format, images included) into a prompt for the assistant's
        turn; `tools`: OpenAI tool definitions the assistant may call; `response_schema`: the JSON
        schema its reply must follow (see Tokenizer.render_chat)."""
        pixels: list[Tensor] = []  # each image decoded once: read (with a reader), then seen

        def read_image(source: Any) -> str:
            pixels.append(preprocess([source], self.config.vision))
            return self.model.reader.read(pixels[-1])[0]

        reader = self.config.vision is not None and self.config.vision.reader is not None
        encoding = self.tokenizer.render_chat(messages, tools=tools, response_schema=response_schema,
                                              add_generation_prompt=True, read_image=read_image if reader else None)
        images = None
        if encoding.images:
            images = torch.cat(pixels) if reader else preprocess(encoding.images, self.config.vision)
        return Prompt(encoding.ids, images)

    def check_prompt(self, prompt: Prompt, max_tokens: int | None = 0, limit: int | None = None) -> None:
        """Raises ContextLengthExceeded when prompt + max_tokens exceed `limit` (default and cap: the
        model's context). max_tokens None: the prompt is scored, not continued, so it alone must fit;
        otherwise it needs room for at least one new token."""
        limit = min(limit or self.config.max_seq_len, self.config.max_seq_len)
        if not prompt.ids:
            raise InvalidRequest("empty prompt: nothing to condition on")
        if len(prompt.ids) + (0 if max_tokens is None else max(max_tokens, 1)) > limit:
            raise ContextLengthExceeded(limit, len(prompt.ids), max_tokens)

    # --- scoring (engine/score.py) --------------------------------------------------------
    def prompt_logprobs(self, ids: list[int], top: int = 0) -> list[TokenLogprob]:
        """Score a text: for each token after the first, its logprob given the tokens before it
        (and the `top` most likely alternatives). What `echo` + `logprobs` report."""
        [scores] = score.score_tokens(self, [(ids, 1)], top)
        name = self.tokenizer.decode
        return [TokenLogprob(token, name([token]), lp, [(t, name([t]), v) for t, v in alternatives])
                for token, lp, alternatives in zip(scores.ids, scores.logprobs, scores.top, strict=True)]

    def loglikelihood(self, requests: Sequence[score.LoglikRequest | score.ChatLoglikRequest], batch_size: int = 32,
                      progress: Callable[[int, int], None] | None = None) -> list[score.Loglik]:
        """log P(continuation | context) of each request, batched; progress(done, total) after each batch."""
        return score.loglikelihood(self, requests, batch_size, progress)

    # --- generation ----------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt | list[int]], params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        """For each prompt, its `n` completions."""
        prompts, params = self._normalize(prompts, params)
        out = [[Completion("", [], "", len(p.ids), [] if sp.logprobs else None) for _ in range(sp.n)]
               for p, sp in zip(prompts, params, strict=True)]
        for d in self.stream(prompts, params):
            c = out[d.prompt_index][d.sample_index]
            c.text += d.text
            if d.token_id is not None:
                c.token_ids.append(d.token_id)
            if d.logprob is not None and c.logprobs is not None:
                c.logprobs.append(d.logprob)
            if d.finish_reason is not None:
                c.finish_reason = d.finish_reason
        return out

    @torch.inference_mode()
    def stream(self, prompts: Sequence[Prompt | list[int]], params: SamplingParams | Sequence[SamplingParams]) -> Iterator[Delta]:
        prompts, params = self._normalize(prompts, params)
        for p in prompts:
            self.check_prompt(p)
        limit = self.config.max_seq_len
        rows: list[Row] = []
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
            rows += [self.new_row(i, j, sp, min(sp.max_tokens, limit - len(p.ids))) for j in range(sp.n)]

        logits, cache = self._prefill(prompts, max(len(prompts[r.prompt_index].ids) + r.max_new for r in rows))
        expand = [r.prompt_index for r in rows]
        if expand != list(range(len(prompts))):
            cache, logits = cache.select(expand), logits[expand]
        stop_ids = set(self.tokenizer.stop_ids)
        while rows:
            next_ids, keep = [], []
            for b, row in enumerate(rows):
                delta = self.step_row(row, logits[b], stop_ids)
                yield delta
                if delta.finish_reason is None:
                    next_ids.append(delta.token_id)
                    keep.append(b)
            if not keep:
                return
            if len(keep) < len(rows):
                cache = cache.select(keep)
                rows = [rows[b] for b in keep]
            ids = torch.tensor(next_ids, device=self.device)[:, None]
            logits = self.model(ids, cache=cache)[:, -1]

    def _normalize(self, prompts, params) -> tuple[list[Prompt], list[SamplingParams]]:
        prompts = [p if isinstance(p, Prompt) else Prompt(list(p)) for p in prompts]
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        return prompts, list(params)

    def _prefill(self, prompts: list[Prompt], cache_len: int) -> tuple[Tensor, KVCache]:
        """Run all prompts in one right-padded batch; logits (P, V) of each one's last token."""
        lengths = [len(p.ids) for p in prompts]
        batch = torch.full((len(prompts), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            batch[i, : len(p.ids)] = torch.tensor(p.ids)
        images = [p.images for p in prompts if p.has_images]
        pixels = torch.cat(images).to(self.device, self.dtype) if images else None
        cache = KVCache(self.config, len(prompts), min(cache_len, self.config.max_seq_len), device=self.device, dtype=self.dtype)
        num_valid = torch.tensor(lengths, device=self.device)
        logits = self.model(batch.to(self.device), pixels, cache=cache, num_valid=num_valid, last_only=True)
        return logits[:, -1], cache

    def new_row(self, prompt_index: int, sample_index: int, params: SamplingParams, max_new: int) -> Row:
        """One choice's decoding state. A seeded choice has its own generator, seeded from the
        request's seed and its index, so it samples the same tokens whatever else is in the batch."""
        generator = None
        if not params.greedy:
            # Any integer is a valid seed (the API puts no bound on it); torch's generator takes 64 bits.
            seed = (params.seed * 1_000_003 + sample_index) % 2**64 if params.seed is not None \
                else int(torch.randint(2**62, ()))
            generator = torch.Generator().manual_seed(seed)
        counts = None
        if params.presence_penalty or params.frequency_penalty:
            counts = torch.zeros(self.config.vocab_size)
        return Row(prompt_index, sample_index, params, max_new, IncrementalDecoder(self.tokenizer, params.stop),
                   generator, counts, grammar=self.grammar_tokenizer.matcher(params.grammar) if params.grammar else None)

    def step_row(self, row: Row, logits: Tensor, stop_ids: set[int]) -> Delta:
        """Sample one token for `row` from its raw logits (V,) and say what it adds."""
        sp = row.params
        # A generated image placeholder would have no image behind it.
        allowed = row.grammar.allowed() if row.grammar is not None else None
        token = next_token(logits, sp, row.counts, row.generator, banned=self.tokenizer.image_id, allowed=allowed)
        if row.grammar is not None and token not in stop_ids:
            row.grammar.consume(token)
        logprob = None
        if sp.logprobs:
            lp, top = token_logprobs(logits, token, sp.top_logprobs)
            name = self.tokenizer.decode
            logprob = TokenLogprob(token, name([token]), lp, [(t, name([t]), v) for t, v in top])
        row.generated += 1
        if row.counts is not None:
            row.counts[token] += 1
        if (token in stop_ids and not sp.ignore_eos) or token in sp.stop_token_ids:
            return Delta(row.prompt_index, row.sample_index, row.decoder.finish(), token, logprob, "stop")
        text = row.decoder.push(token)
        if row.decoder.stopped:
            return Delta(row.prompt_index, row.sample_index, text, token, logprob, "stop")
        if row.generated >= row.max_new:
            return Delta(row.prompt_index, row.sample_index, text + row.decoder.finish(), token, logprob, "length")
        return Delta(row.prompt_index, row.sample_index, text, token, logprob)
