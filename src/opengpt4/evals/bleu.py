"""BLEU as sacrebleu computes it by default, for OpenAI Evals' Translate (sacrebleu is no dependency).

sacrebleu's defaults: mteval-v13a tokenization, n-grams up to 4 clipped by their largest count
in any one reference, the reference length closest to the hypothesis (the shorter on a tie),
NIST's exponential smoothing of zero precisions, scores in 0..100. Sentence BLEU uses the
effective order (orders past the last one the hypothesis has are left out), corpus BLEU not.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

MAX_ORDER = 4

# mteval-v13a's language-dependent rules: symbols apart, periods and commas apart unless between
# digits, a dash apart after a digit.
_RULES = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
          (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
          (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
          (re.compile(r"([0-9])(-)"), r"\1 \2 ")]


def tokenize_13a(line: str) -> list[str]:
    line = line.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def ngrams(tokens: list[str]) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, MAX_ORDER + 1) for i in range(len(tokens) - n + 1))


def segment_stats(hypothesis: str, references: Sequence[str]) -> list[int]:
    """[hypothesis length, reference length, matches per order..., n-grams per order...]."""
    hyp = tokenize_13a(hypothesis)
    refs = [tokenize_13a(r) for r in references]
    most: Counter[tuple[str, ...]] = Counter()
    for ref in refs:
        for gram, count in ngrams(ref).items():
            most[gram] = max(most[gram], count)
    ref_len = min((len(r) for r in refs), key=lambda n: (abs(n - len(hyp)), n))
    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    for gram, count in ngrams(hyp).items():
        total[len(gram) - 1] += count
        correct[len(gram) - 1] += min(count, most[gram])
    return [len(hyp), ref_len, *correct, *total]


def score(stats: Sequence[int], effective_order: bool) -> float:
    sys_len, ref_len, correct, total = stats[0], stats[1], stats[2:2 + MAX_ORDER], stats[2 + MAX_ORDER:]
    brevity = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    if not any(correct):
        return 0.0
    precisions, smooth, order = [0.0] * MAX_ORDER, 1.0, MAX_ORDER
    for n in range(MAX_ORDER):
        if total[n] == 0:
            break
        if effective_order:
            order = n + 1
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    # sacrebleu floors log(0) at -9999999999 rather than failing: such a score is 0.
    logs = [math.log(p) if p > 0 else -9999999999 for p in precisions[:order]]
    return brevity * math.exp(sum(logs) / order)


def sentence_bleu(hypothesis: str, references: Sequence[str]) -> float:
    return score(segment_stats(hypothesis, references), effective_order=True)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """`references[i]`: the references of hypothesis i."""
    stats = [segment_stats(h, r) for h, r in zip(hypotheses, references, strict=True)]
    return score([sum(column) for column in zip(*stats, strict=True)], effective_order=False)
