"""What the report is made of: the artifacts found under the directories given to `opengpt4 report --runs`.

- eval runs: each `results.json` that `opengpt4 eval run` wrote (with its `log.jsonl` beside it);
- scaling: each `prediction.json` of `opengpt4 scaling fit` (with `target.json` and the PNGs of
  `scaling plot` beside it, when they exist);
- pipelines: each `pipeline.json` of `opengpt4 pipeline`, which names the model an eval run measured
  (base, SFT, RLHF, SmolLM2) and the wall time of every stage.

An eval run outside a pipeline is labelled by its model's identity (a hash of the weights), so two
runs of the same checkpoint land in the same column wherever they were made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opengpt4.errors import OpenGPT4Error

MODEL_ORDER = ("base", "SFT", "RLHF")  # the announcement's model versions, in this order; others follow


@dataclass(frozen=True)
class EvalRun:
    label: str  # the model: base, SFT, RLHF, SmolLM2, or its identity
    eval: str  # the spec's full name, e.g. safety-synthetic.heldout.v1
    base_eval: str  # e.g. safety-synthetic
    dir: Path
    results: dict[str, Any]

    @property
    def source(self) -> Path:
        return self.dir / "results.json"


@dataclass
class Artifacts:
    runs: list[EvalRun] = field(default_factory=list)
    predictions: list[Path] = field(default_factory=list)  # prediction.json files
    pipelines: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    def labels(self) -> list[str]:
        seen = list(dict.fromkeys(r.label for r in self.runs))
        return [m for m in MODEL_ORDER if m in seen] + [m for m in seen if m not in MODEL_ORDER]

    def find(self, base_eval: str, label: str) -> EvalRun | None:
        """The run of `base_eval` on model `label`; the last one found when there are several."""
        found = [r for r in self.runs if r.base_eval == base_eval and r.label == label]
        return found[-1] if found else None

    def by_eval(self, eval_name: str) -> list[EvalRun]:
        """Runs of a full eval name (variants such as visual_shapes.blind.v1 share a base)."""
        return [r for r in self.runs if r.eval == eval_name]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OpenGPT4Error(f"{path}: cannot read ({e})") from None


def collect(dirs: list[str | Path]) -> Artifacts:
    """Every artifact under `dirs` (searched recursively), in the order given; a dir that does not exist
    is an error, a dir without artifacts is not (its sections say what is missing)."""
    found = Artifacts()
    labels: dict[Path, str] = {}  # eval stage dir -> model label, from the pipelines
    files: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise OpenGPT4Error(f"--runs {d}: not a directory")
        files += sorted(d.resolve().rglob("*.json"))
    for path in files:
        if path.name == "pipeline.json":
            summary = _read_json(path)
            found.pipelines.append((path, summary))
            for stage in summary.get("stages", []):
                if stage.get("model"):
                    labels[(path.parent / stage["name"]).resolve()] = stage["model"]
        elif path.name == "prediction.json" and "predicted_bpb" in _read_json(path):
            found.predictions.append(path)
    for path in files:
        if path.name != "results.json":
            continue
        results = _read_json(path)
        if not isinstance(results, dict) or not {"eval", "model", "metrics"} <= set(results):
            continue  # another tool's results.json
        label = next((labels[p] for p in path.parents if p in labels), results["model"])
        found.runs.append(EvalRun(label, results["eval"], results.get("base_eval") or results["eval"].split(".")[0],
                                  path.parent, results))
    return found
