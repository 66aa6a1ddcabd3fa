"""The world's held-out system-constraint eval: does the model obey what the system message asks?

Samples: `per_type` held-out conversations of each of the 17 constraint types of
`opengpt4.data.chat.constraints` (IFEval's instruction ids where they overlap, plus a persona
and the Socratic tutor), generated from the seeded world at load time exactly as `opengpt4 data
chat` writes them into constraints-heldout.jsonl, or read from that file when `data_dir` is a
chat data dir. Held out means a system-message phrasing, a subject and (for end phrases and
keywords) a value that no training conversation has; some user turns ask for the opposite of
the system message ("Just tell me the answer."), and the system message must win.

Each prompt (system + user) is answered greedily. Score: 1 when the reply passes every
constraint's checker. Reported per constraint type with a Wilson 95% interval, and the mean
over types (the acceptance number); the same for the conflicting samples alone; and whether
the answer is still correct: the ideal (the fact's value in the language asked for, or the
arithmetic result) appears in the reply as a whole word, case-insensitively. Socratic replies
must not state the answer, so they are left out of correctness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opengpt4.data.chat.constraints import check
from opengpt4.data.chat.conversations import heldout_constraint_samples
from opengpt4.data.chat.text import contains
from opengpt4.data.world import SIZES, World
from opengpt4.errors import DataFileError, InvalidEvalArgument
from opengpt4.evals.api import Decoding, Eval, SampleResult
from opengpt4.evals.stats import wilson
from opengpt4.files import iter_jsonl

FILE = "constraints-heldout.jsonl"
WITHHOLDS_ANSWER = {"opengpt4:socratic"}


def read_samples(path: Path) -> list[dict[str, Any]]:
    """constraints-heldout.jsonl lines; a line without messages, constraints or ideal names file:line."""
    rows = []
    for line, row in iter_jsonl(path):
        missing = [k for k in ("messages", "constraints", "ideal") if k not in row]
        if missing or not row["constraints"]:
            raise DataFileError(f"{path}:{line}: a system-constraint sample needs messages, constraints and ideal "
                                f"(missing: {', '.join(missing) or 'constraints are empty'})")
        rows.append(row)
    return rows


def rate(hits: list[bool]) -> dict[str, Any]:
    """A proportion with its Wilson 95% interval."""
    ci = wilson(sum(hits), len(hits))
    return {"rate": sum(hits) / len(hits) if hits else None, "n": len(hits), "ci95": list(ci) if ci else None}


class SystemConstraints(Eval):
    batch_size = 16
    metric = "compliance"

    def __init__(self, completion_fn, *, seed: int = 0, data_dir: str | None = None, world_size: str = "mini",
                 world_seed: int = 0, per_type: int = 40, max_tokens: int = 160, **args: Any) -> None:
        super().__init__(completion_fn, seed=seed, data_dir=data_dir, **args)
        if world_size not in SIZES:
            raise InvalidEvalArgument("world_size", f"{world_size!r} is not a world size ({', '.join(SIZES)})")
        self.world_size, self.world_seed, self.per_type = world_size, world_seed, per_type
        self.decoding = Decoding(max_tokens=max_tokens, temperature=0.0)

    def load_samples(self) -> list[dict[str, Any]]:
        file = Path(self.data_dir) / FILE if self.data_dir else None
        if file is not None and file.is_file():
            rows = read_samples(file)
        else:
            rows = heldout_constraint_samples(World.generate(self.world_seed, self.world_size), self.world_seed,
                                              self.per_type)
        return [{"sample_id": f"system_constraints/{i}", **row} for i, row in enumerate(rows)]

    def run_batch(self, samples: list[dict[str, Any]]) -> list[SampleResult]:
        completions = self.completion_fn.complete([s["messages"] for s in samples], self.decoding)
        results = []
        for sample, completion in zip(samples, completions, strict=True):
            reply = completion.texts[0]
            followed = {c["id"]: check(c["id"], c["kwargs"], reply) for c in sample["constraints"]}
            ids = [c["id"] for c in sample["constraints"]]
            correct = None if WITHHOLDS_ANSWER & set(ids) else contains(reply, str(sample["ideal"]))
            results.append(SampleResult(
                sample_id=sample["sample_id"], prompt=sample["messages"], output=reply, parsed=followed,
                ideal=sample["ideal"], score=float(all(followed.values())),
                usage={"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
                extra={"type": ids[0], "correct": correct, "conflict": bool(sample.get("meta", {}).get("conflict"))}))
        return results

    def aggregate(self, results: list[SampleResult]) -> dict[str, Any]:
        types = sorted({r.extra["type"] for r in results})
        by_type = {t: rate([r.score == 1 for r in results if r.extra["type"] == t]) for t in types}
        conflict = [r for r in results if r.extra["conflict"]]
        by_type_conflict = {t: rate([r.score == 1 for r in conflict if r.extra["type"] == t]) for t in types
                            if any(r.extra["type"] == t for r in conflict)}
        scored = [r for r in results if r.extra["correct"] is not None]
        return {
            "compliance_mean_over_types": sum(v["rate"] for v in by_type.values()) / len(by_type) if by_type else None,
            "compliance": rate([r.score == 1 for r in results]),
            "compliance_by_type": by_type,
            "conflict_compliance": rate([r.score == 1 for r in conflict]),
            "conflict_compliance_by_type": by_type_conflict,
            "answer_correct": rate([r.extra["correct"] for r in scored]),
            "answer_correct_by_type": {t: rate([r.extra["correct"] for r in scored if r.extra["type"] == t])
                                       for t in types if t not in WITHHOLDS_ANSWER},
            "compliant_and_correct": rate([r.score == 1 and r.extra["correct"] for r in scored]),
        }
