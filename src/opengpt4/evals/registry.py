"""The eval registry: OpenAI Evals' YAML layout, read from the package and from user directories.

A registry directory holds `evals/*.yaml` (eval specs), `data/` (the samples they name) and
`modelgraded/*.yaml` (grader prompts). An eval is a base name pointing at a full name
`<name>.<split>.<version>` with `id:`, and the full name carries `class:` and `args:`:

    arithmetic: {id: arithmetic.dev.v0, description: ..., metrics: [accuracy]}
    arithmetic.dev.v0: {class: evals.elsuite.basic.match:Match, args: {samples_jsonl: arithmetic/samples.jsonl}}

Registries are searched in order, the package's first; a later one overrides an earlier one
name by name, and says so on stderr when it replaces one of the package's own. OpenAI Evals'
class paths map to our templates, so its specs load unchanged; its other classes (agents,
solvers, Hugging Face datasets) are refused by name before anything runs, as are spec
arguments that the class does not take.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from opengpt4.errors import EvalSpecError, OpenGPT4Error, UnsupportedEvalClass

from .api import CompletionFn, Eval
from .modelgraded import ModelGradedSpec, parse_modelgraded

# The package's own registry directory (not named "registry": that would shadow this module).
PACKAGE_REGISTRY = Path(__file__).parent / "registry_data"

OPENAI_EVALS_CLASSES = {
    "evals.elsuite.basic.match:Match": "opengpt4.evals.templates:Match",
    "evals.elsuite.basic.includes:Includes": "opengpt4.evals.templates:Includes",
    "evals.elsuite.basic.fuzzy_match:FuzzyMatch": "opengpt4.evals.templates:FuzzyMatch",
    "evals.elsuite.basic.json_match:JsonMatch": "opengpt4.evals.templates:JsonMatch",
    "evals.elsuite.basic.match_with_solvers:MatchWithSolvers": "opengpt4.evals.templates:MatchWithSolvers",
    "evals.elsuite.translate:Translate": "opengpt4.evals.templates:Translate",
    "evals.elsuite.test.match:TestMatch": "opengpt4.evals.templates:TestMatch",
    "evals.elsuite.modelgraded.classify:ModelBasedClassify": "opengpt4.evals.modelgraded:ModelBasedClassify",
}
OPENAI_EVALS_PACKAGE = "evals."  # class paths of OpenAI Evals' own package
PATH_ARGS = ("samples_jsonl", "few_shot_jsonl")  # resolved against the registry's data/ directory


@dataclass
class EvalSpec:
    name: str  # the full name, e.g. arithmetic.dev.v0
    cls: str  # the class path as written in the YAML
    args: dict[str, Any]  # as written (paths not yet resolved)
    base: str | None = None  # the base name that points here, if any
    description: str = ""
    metrics: list[str] = field(default_factory=list)
    registry: Path = PACKAGE_REGISTRY  # the registry directory that defines it
    file: Path | None = None


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans (only true/false): choice strings such as Yes / No / On stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise OpenGPT4Error(f"{file}: invalid YAML ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, (dict, str)) for v in data.values()):
        raise OpenGPT4Error(f"{file}: expected a mapping of names to specs")
    return data


def _load_kind(paths: list[Path], kind: str) -> dict[str, tuple[Any, Path, Path]]:
    """name -> (raw spec, registry dir, file), later registries overriding earlier ones. Replacing
    one of the package's own is said on stderr: OpenAI Evals' registry, for one, reuses names
    (hellaswag, lambada, fact) for specs of its own."""
    merged: dict[str, tuple[Any, Path, Path]] = {}
    for registry in paths:
        own: dict[str, Path] = {}
        folder = registry / kind
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
        for file in files:
            for name, spec in _read_yaml(file).items():
                name = str(name)
                if name in own:  # within one registry a name must be unique, as in OpenAI Evals
                    raise OpenGPT4Error(f"{file}: {name!r} is already defined in {own[name]}")
                own[name] = file
                if name in merged and merged[name][1] == PACKAGE_REGISTRY:
                    what = "eval" if kind == "evals" else "modelgraded spec"
                    print(f"warning: {file} replaces opengpt4's {what} {name!r}", file=sys.stderr)
                merged[name] = (spec, registry, file)
    return merged


class Registry:
    def __init__(self, paths: tuple[str | Path, ...] | list[str | Path] = ()) -> None:
        self.paths = [PACKAGE_REGISTRY]
        for p in paths:
            path = Path(p).expanduser()
            if not path.is_dir():
                raise OpenGPT4Error(f"{p}: no such registry directory")
            self.paths.append(path)

    @cached_property
    def _evals(self) -> dict[str, tuple[Any, Path, Path]]:
        return _load_kind(self.paths, "evals")

    @cached_property
    def _modelgraded(self) -> dict[str, tuple[Any, Path, Path]]:
        return _load_kind(self.paths, "modelgraded")

    # --- lookups -----------------------------------------------------------------------------
    def get_eval(self, name: str) -> EvalSpec:
        if name not in self._evals:
            near = difflib.get_close_matches(name, list(self._evals), n=5)
            hint = f"; did you mean {', '.join(near)}?" if near else "; `opengpt4 eval list` shows them all"
            raise OpenGPT4Error(f"unknown eval {name!r}{hint}")
        seen = [name]
        raw, registry, file = self._evals[name]
        while isinstance(raw, str) or "id" in raw:  # follow aliases: base name -> full name
            target = str(raw if isinstance(raw, str) else raw["id"])
            if target in seen or target not in self._evals:
                problem = "loops" if target in seen else f"points at unknown eval {target!r}"
                raise OpenGPT4Error(f"{file}: {seen[-1]!r} {problem}")
            seen.append(target)
            raw, registry, file = self._evals[target]
        full = seen[-1]
        # The base name holds description and metrics; found by its id when the full name was asked for.
        base = name if full != name else next(
            (n for n, (r, _, _) in self._evals.items() if isinstance(r, dict) and r.get("id") == full), None)
        head = self._evals[base][0] if base and isinstance(self._evals[base][0], dict) else {}
        if "class" not in raw:
            raise OpenGPT4Error(f"{file}: eval {full!r} has no 'class'")
        args = raw.get("args") or {}
        if not isinstance(args, dict):
            raise OpenGPT4Error(f"{file}: 'args' of {full!r} must be a mapping")
        return EvalSpec(name=full, cls=str(raw["class"]), args=dict(args), base=base,
                        description=str(head.get("description") or raw.get("description") or ""),
                        metrics=list(head.get("metrics") or raw.get("metrics") or []),
                        registry=registry, file=file)

    def get_modelgraded(self, name: str) -> ModelGradedSpec:
        if name not in self._modelgraded:
            near = difflib.get_close_matches(name, list(self._modelgraded), n=5)
            raise OpenGPT4Error(f"unknown modelgraded spec {name!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))
        raw, _, file = self._modelgraded[name]
        return parse_modelgraded(name, raw, file)

    def list_evals(self) -> list[dict[str, str]]:
        """One row per eval: its base name (or its full name if none points at it), full id,
        description and class. A broken entry is listed with its error, not hiding the others."""
        rows = []
        for name in sorted(self._evals):
            try:
                spec = self.get_eval(name)
            except OpenGPT4Error as e:
                rows.append({"name": name, "id": "", "description": f"error: {e}", "class": "",
                             "registry": str(self._evals[name][1])})
                continue
            if spec.base is None or spec.base == name:  # a full name with a base is listed under the base
                rows.append({"name": name, "id": spec.name, "description": spec.description, "class": spec.cls,
                             "registry": str(spec.registry)})
        return rows

    # --- instantiation -----------------------------------------------------------------------
    def resolve_data(self, spec: EvalSpec, relative: str) -> Path:
        """A data path of a spec: its own registry's data/ first, then the others (last first)."""
        path = Path(relative).expanduser()
        if path.is_absolute():
            return path
        candidates = [spec.registry / "data" / path] + [r / "data" / path for r in reversed(self.paths)]
        return next((c for c in candidates if c.exists()), candidates[0])

    def make_eval(self, spec: EvalSpec, completion_fn: CompletionFn, *, seed: int = 0, data_dir: str | None = None,
                  grader: CompletionFn | None = None) -> Eval:
        cls = load_class(spec)
        args = dict(spec.args)
        spec_data_dir = args.pop("data_dir", None)  # a spec may name one; --data-dir overrides it
        data_dir = data_dir if data_dir is not None else spec_data_dir
        for key in PATH_ARGS:
            if isinstance(args.get(key), str):
                args[key] = str(self.resolve_data(spec, args[key]))
        if isinstance(args.get("modelgraded_spec"), str):
            args["modelgraded_spec"] = self.get_modelgraded(args["modelgraded_spec"])
        # Only classes that grade with a model take a grader; a spec's own `grader:` names a model
        # and is replaced by the completion function the runner built for it.
        if grader is not None and "grader" in inspect.signature(cls.__init__).parameters:
            args["grader"] = grader
        try:
            return cls(completion_fn, seed=seed, data_dir=data_dir, **args)
        except EvalSpecError as e:  # raised by the class, which does not know its spec's name
            e.locate(spec.name, str(spec.file) if spec.file else None)
            raise
        except TypeError as e:  # e.g. a required argument missing
            raise OpenGPT4Error(f"{spec.file}: bad args for {spec.name} ({spec.cls}): {e}") from None


def load_class(spec: EvalSpec) -> type[Eval]:
    if spec.cls.startswith(OPENAI_EVALS_PACKAGE) and spec.cls not in OPENAI_EVALS_CLASSES:
        names = sorted(path.rsplit(":", 1)[1] for path in OPENAI_EVALS_CLASSES)
        raise UnsupportedEvalClass(spec.cls, names, spec.name, str(spec.file) if spec.file else None)
    path = OPENAI_EVALS_CLASSES.get(spec.cls, spec.cls)
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise OpenGPT4Error(f"{spec.file}: class of {spec.name} must be 'module:Class', got {spec.cls!r}")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise OpenGPT4Error(f"{spec.file}: cannot load class {spec.cls!r} of {spec.name}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Eval)):
        raise OpenGPT4Error(f"{spec.file}: {spec.cls} is not a subclass of opengpt4.evals.api.Eval")
    return cls


def list_evals(registries: tuple[str | Path, ...] | list[str | Path] = ()) -> list[dict[str, str]]:
    return Registry(registries).list_evals()
