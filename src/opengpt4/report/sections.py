"""The report's sections, one function each, in the order of the GPT-4 announcement's report.

Each reads only artifacts (eval results, pipeline summaries, scaling predictions, the model
registry) and returns a `Section`; a section with nothing to read says so in one line.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opengpt4.report.collect import Artifacts, EvalRun
from opengpt4.report.document import Figure, Numbers, Section, Table
from opengpt4.report.plots import grouped_bars

# The academic table: (eval, name, shots as the eval runs it).
BENCHMARKS = (
    ("mmlu", "MMLU", "5-shot"), ("arc_easy", "ARC-Easy", "0-shot"), ("arc_challenge", "ARC-Challenge", "0-shot"),
    ("piqa", "PIQA", "0-shot"), ("winogrande", "WinoGrande", "0-shot, partial scoring"),
    ("hellaswag", "HellaSwag", "0-shot"), ("hellaswag_text", "HellaSwag (llama.cpp's text version)", "0-shot"),
    ("truthfulqa_mc1", "TruthfulQA MC1", "0-shot"),
    ("gsm8k", "GSM8K", "5-shot chain of thought"), ("humaneval", "HumanEval", "0-shot, pass@1"),
)
EXAMS = ("world_exam", "world_exam_cloze")
LANGUAGE_EVALS = ("world_languages", "world_languages_chat")
SAFETY_EVALS = ("safety-synthetic", "safety", "safety-real", "safety-modelgraded")
SAFETY_RATES = (("disallowed_content_rate", "disallowed content"), ("refusal_rate", "refusal of disallowed"),
                ("do_not_answer_refusal_rate", "Do-Not-Answer refusal"),
                ("xstest_unsafe_refusal_rate", "XSTest-unsafe refusal"),
                ("sensitive_compliance_rate", "sensitive, policy-compliant"), ("over_refusal_rate", "over-refusal"))
IFEVALS = ("ifeval", "ifeval_system", "ifeval512", "ifeval_system512")
IFEVAL_METRICS = ("prompt_level_strict", "inst_level_strict", "prompt_level_loose", "inst_level_loose")


class Context:
    def __init__(self, art: Artifacts, numbers: Numbers, figures: Path, registry: Path | None) -> None:
        self.art, self.numbers, self.figures, self.registry = art, numbers, figures, registry

    def rate(self, run: EvalRun, keys: tuple[str, ...], label: str, with_n: bool = True) -> str:
        """'0.250 [0.120, 0.449] (n 24)' from a {rate, ci95, n} entry of the run's results."""
        entry = _dig(run.results, keys)
        if not isinstance(entry, dict) or entry.get("rate") is None:
            return "-"
        cite = self.numbers.cite
        text = cite(entry["rate"], run.source, (*keys, "rate"), label)
        if entry.get("ci95"):
            text += (f" [{cite(entry['ci95'][0], run.source, (*keys, 'ci95', 0), label + ' ci low')}, "
                     f"{cite(entry['ci95'][1], run.source, (*keys, 'ci95', 1), label + ' ci high')}]")
        return text + f" (n {cite(entry['n'], run.source, (*keys, 'n'), label + ' n', '{}')})" if with_n else text

    def score(self, run: EvalRun, label: str) -> str:
        """The run's headline score with its bootstrap interval and sample count."""
        r, cite = run.results, self.numbers.cite
        if r.get("score") is None:
            return "-"
        text = cite(r["score"], run.source, ("score",), label)
        if r.get("ci95"):
            text += (f" [{cite(r['ci95'][0], run.source, ('ci95', 0), label + ' ci low')}, "
                     f"{cite(r['ci95'][1], run.source, ('ci95', 1), label + ' ci high')}]")
        return text + f" (n {cite(r['n'], run.source, ('n',), label + ' n', '{}')})"

    def value(self, run: EvalRun, keys: tuple[str, ...], label: str, fmt: str = "{:.3f}") -> str:
        v = _dig(run.results, keys)
        return "-" if not isinstance(v, int | float) else self.numbers.cite(v, run.source, keys, label, fmt)

    def figure(self, name: str) -> Path:
        return self.figures / name


def _dig(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _point(run: EvalRun | None, keys: tuple[str, ...]) -> tuple[float, float, float] | None:
    entry = _dig(run.results, keys) if run else None
    if not isinstance(entry, dict) or entry.get("rate") is None:
        return None
    lo, hi = entry.get("ci95") or (entry["rate"], entry["rate"])
    return entry["rate"], lo, hi


def _runs(ctx: Context, evals: tuple[str, ...]) -> list[EvalRun]:
    return [r for label in ctx.art.labels() for e in evals if (r := ctx.art.find(e, label))]


def _missing(evals: tuple[str, ...] | str, how: str) -> str:
    names = evals if isinstance(evals, str) else " / ".join(evals)
    return f"no {names} runs among the given directories ({how})."


# --- sections ----------------------------------------------------------------------------------
def headline(ctx: Context) -> Section:
    s = Section("Headline")
    columns = [("world_exam_cloze", ("metrics", "accuracy"), "world exam (cloze)"),
               ("world_truthfulqa", ("metrics", "mc1"), "truthful mc1 (base)"),
               ("world_truthfulqa_chat", ("metrics", "mc1"), "truthful mc1 (chat)"),
               ("safety-synthetic", ("metrics", "disallowed_content_rate"), "disallowed content"),
               ("safety-synthetic", ("metrics", "sensitive_compliance_rate"), "sensitive, compliant"),
               ("safety-synthetic", ("metrics", "over_refusal_rate"), "over-refusal"),
               ("system_constraints", ("metrics", "compliance"), "system-message compliance")]
    present = [c for c in columns if any(ctx.art.find(c[0], m) for m in ctx.art.labels())]
    if not present:
        s.missing = "none of the world's evals (exam, truthfulness, safety, steerability) among the given runs."
        return s
    rows = []
    for model in ctx.art.labels():
        cells = []
        for name, keys, title in present:
            run = ctx.art.find(name, model)
            cells.append(ctx.rate(run, keys, f"{model} {title}", with_n=False) if run else "-")
        if any(c != "-" for c in cells):
            rows.append([model, *cells])
    s.blocks.append(Table(["model", *(t for _, _, t in present)], rows))
    s.blocks.append("Rates with Wilson 95% intervals; the sections below give each with its sample count.")
    return s


def exams(ctx: Context) -> Section:
    s = Section("Exam results")
    runs = _runs(ctx, EXAMS)
    if not runs:
        s.missing = _missing(EXAMS, "`opengpt4 eval run world_exam_cloze --model M --data-dir DATA`")
        return s
    rows = [[r.label, r.base_eval, ctx.rate(r, ("metrics", "accuracy"), f"{r.label} {r.base_eval} accuracy"),
             ctx.value(r, ("metrics", "random_baseline"), f"{r.label} {r.base_eval} chance"),
             ctx.value(r, ("metrics", "majority_baseline", "rate"), f"{r.label} {r.base_eval} majority")]
            for r in runs]
    s.blocks.append("The world's multiple-choice exam: 200 facts stated only in pretraining text, asked in five "
                    "languages; `world_exam` shows the options as letters (MMLU's layout), `world_exam_cloze` "
                    "scores each option's text (for models too small to map letters to options).")
    s.blocks.append(Table(["model", "eval", "accuracy [95% CI]", "chance", "majority letter"], rows))
    for name in EXAMS:
        series = {r.label: [_point(r, ("metrics", "accuracy"))] for r in runs if r.base_eval == name}
        if series:
            grouped_bars([name], series, ctx.figure(f"exam-{name}.png"), "accuracy", f"{name} by model",
                         chance=_dig(runs[0].results, ("metrics", "random_baseline")))
            s.blocks.append(Figure(f"exam-{name}.png", f"{name}: accuracy per model, 95% intervals; dashed: chance."))
    return s


def benchmarks(ctx: Context) -> Section:
    s = Section("Academic benchmarks")
    names = tuple(b[0] for b in BENCHMARKS)
    models = [m for m in ctx.art.labels() if any(ctx.art.find(n, m) for n in names)]
    if not models:
        s.missing = _missing("academic benchmark (MMLU, ARC, PIQA, ...)",
                             "`opengpt4 eval run mmlu --model M`; data from $OPENGPT4_DATA_DIR, see the README's Evals")
        return s
    rows = []
    for name, title, shots in BENCHMARKS:
        found = {m: ctx.art.find(name, m) for m in models}
        if any(found.values()):
            metric = next(r.results["metric"] for r in found.values() if r)
            rows.append([title, shots, metric, *(ctx.score(r, f"{m} {name}") if r else "-" for m, r in found.items())])
    limits = sorted({r.results.get("limit") for m in models for n in names if (r := ctx.art.find(n, m))} - {None})
    s.blocks.append("Each cell: score [bootstrap 95% CI] (questions scored)"
                    + (f"; a seeded subset of at most {', '.join(map(str, limits))} questions per benchmark "
                       "(`--limit`), not the full test sets." if limits else "."))
    s.blocks.append(Table(["benchmark", "shots", "metric", *models], rows))
    return s


def _exam_breakdown(ctx: Context, title: str, key: str, what: str, figure: str, order=None) -> Section:
    """A section of the exam's accuracy broken down by `key` (by_lang, by_category): a table of models
    side by side and the grouped bar chart."""
    s = Section(title)
    exam = next((e for e in ("world_exam_cloze", "world_exam") if _runs(ctx, (e,))), None)
    if exam is None:
        s.missing = _missing(EXAMS, f"their accuracy per {what} is this section")
        return s
    runs = _runs(ctx, (exam,))
    groups = sorted({g for r in runs for g in (_dig(r.results, ("metrics", key)) or {})}, key=order)
    rows = [[g, *(ctx.rate(r, ("metrics", key, g), f"{r.label} {exam} {g}") for r in runs)] for g in groups]
    s.blocks.append(f"`{exam}` accuracy per {what}, per model version; chance "
                    f"{ctx.value(runs[0], ('metrics', 'random_baseline'), 'chance')} (an option at random).")
    s.blocks.append(Table([what, *(r.label for r in runs)], rows))
    grouped_bars(groups, {r.label: [_point(r, ("metrics", key, g)) for g in groups] for r in runs},
                 ctx.figure(figure), "accuracy", f"{exam} by {what}",
                 chance=_dig(runs[0].results, ("metrics", "random_baseline")))
    s.blocks.append(Figure(figure, f"Accuracy per {what} and model, 95% intervals; dashed: chance."))
    return s


def _english_first(lang: str) -> tuple[bool, str]:
    return lang != "en", lang  # English: the reference bar of the announcement's languages figure


def multilingual(ctx: Context) -> Section:
    """The same facts asked in every language, beside the subject-blind guess; then the exam by language."""
    exam = _exam_breakdown(ctx, "Multilingual", "by_lang", "language", "multilingual-exam.png", order=_english_first)
    runs = _runs(ctx, LANGUAGE_EVALS)
    if not runs:
        how = "`opengpt4 eval run world_languages --model M --data-dir DATA` (world_languages_chat for a chat model)"
        if exam.missing:
            exam.missing = _missing(LANGUAGE_EVALS + EXAMS, how)
        else:
            exam.blocks.insert(0, f"No {' / '.join(LANGUAGE_EVALS)} runs ({how}): only the exam by language.")
        return exam
    s = Section("Multilingual")
    key = ("metrics", "accuracy_by_lang")
    langs = sorted({g for r in runs for g in (_dig(r.results, key) or {})}, key=_english_first)
    blind = ("metrics", "blind_baseline_by_lang")
    rows = [[lang, ctx.value(runs[0], (*blind, lang, "rate"), f"{lang} subject-blind guess"),
             *(ctx.rate(r, (*key, lang), f"{r.label} {r.base_eval} {lang}") for r in runs)] for lang in langs]
    s.blocks.append("The same facts, only stated in pretraining (never asked), asked in each language with a "
                    "training phrasing of that language (`world_languages`: greedy answer, exact first line; "
                    "`world_languages_chat`: the first value of the asked attribute the reply names). The subject-blind guess "
                    "always answers the attribute's most common value: a model must beat it to show it knows "
                    "whose fact it is.")
    s.blocks.append(Table(["language", "subject-blind guess", *(f"{r.label} ({r.base_eval})" for r in runs)], rows))
    grouped_bars(langs, {r.label: [_point(r, (*key, lang)) for lang in langs] for r in runs},
                 ctx.figure("multilingual.png"), "accuracy", "world facts by language",
                 baseline=("subject-blind guess", [(_point(runs[0], (*blind, lang)) or (None,))[0] for lang in langs]))
    s.blocks.append(Figure("multilingual.png", "Accuracy per language and model, 95% intervals; black tick: the "
                                               "subject-blind guess."))
    if not exam.missing:
        s.blocks += exam.blocks
    return s


def visual(ctx: Context) -> Section:
    s = Section("Visual inputs")
    runs = [r for r in ctx.art.runs if r.base_eval.startswith("visual_")]
    if not runs:
        s.missing = _missing("visual_*", "`opengpt4 eval run visual_digits --model M` and its .blank / .blind "
                                         "baselines; see the README's Vision")
        return s
    rows = []
    for task in sorted({r.eval.split(".")[0] for r in runs}):
        for model in ctx.art.labels():
            variants = {r.eval.split(".")[1]: r for r in runs if r.eval.split(".")[0] == task and r.label == model}
            if variants:
                rows.append([task, model, *(ctx.score(variants[v], f"{model} {task} {v}") if v in variants else "-"
                                           for v in ("heldout", "blank", "blind"))])
    s.blocks.append("Held-out images and phrasings; baselines: a blank image, and another question's image (blind).")
    s.blocks.append(Table(["task", "model", "score", "blank image", "blind (mismatched image)"], rows))
    return s


def factual(ctx: Context) -> Section:
    # The announcement's internal factual eval figure: nine categories, one bar per model version.
    return _exam_breakdown(ctx, "Factual accuracy by category", "by_category", "category", "factual.png")


def truthfulness(ctx: Context) -> Section:
    s = Section("TruthfulQA-style misconceptions")
    evals = ("world_truthfulqa", "world_truthfulqa_chat")
    runs = _runs(ctx, evals)
    if not runs:
        s.missing = _missing(evals, "`opengpt4 eval run world_truthfulqa --model M --data-dir DATA`")
        return s
    rows = [[r.label, r.base_eval, ctx.rate(r, ("metrics", "mc1"), f"{r.label} {r.base_eval} mc1"),
             ctx.value(r, ("metrics", "mc2", "mean"), f"{r.label} {r.base_eval} mc2"),
             ctx.rate(r, ("metrics", "myth_rate"), f"{r.label} {r.base_eval} myth"),
             ctx.value(r, ("metrics", "random_baseline"), f"{r.label} {r.base_eval} chance")] for r in runs]
    s.blocks.append("The world's popular misconceptions: mc1 = the true answer scores highest; mc2 = the "
                    "probability mass on true answers; myth rate = the myth's false answer scores highest. Base "
                    "models are asked in plain text (`world_truthfulqa`), chat models in the chat template "
                    "(`world_truthfulqa_chat`).")
    s.blocks.append(Table(["model", "eval", "mc1 [95% CI]", "mc2", "myth rate", "chance"], rows))
    grouped_bars(["mc1"], {f"{r.label} ({r.base_eval})": [_point(r, ("metrics", "mc1"))] for r in runs},
                 ctx.figure("truthfulness.png"), "mc1", "misconceptions, mc1")
    s.blocks.append(Figure("truthfulness.png", "mc1 per model, 95% intervals."))
    return s


def calibration(ctx: Context) -> Section:
    from opengpt4.evals.calibration import reliability_diagrams, run_confidences

    s = Section("Calibration")
    runs = [r for r in _runs(ctx, EXAMS) if "ece" in r.results and (r.dir / "log.jsonl").is_file()]
    if not runs:
        s.missing = _missing(EXAMS, "multiple-choice runs with their log.jsonl; their confidences are this section")
        return s
    rows = [[r.label, r.base_eval, ctx.value(r, ("ece",), f"{r.label} {r.base_eval} ECE"),
             ctx.value(r, ("metrics", "mean_confidence"), f"{r.label} {r.base_eval} confidence"),
             ctx.rate(r, ("metrics", "accuracy"), f"{r.label} {r.base_eval} accuracy")] for r in runs]
    s.blocks.append("Confidence = the softmax over the options' log-likelihoods; expected calibration error over 10 "
                    "equal-width bins (the announcement: worse after post-training).")
    s.blocks.append(Table(["model", "eval", "ECE", "mean confidence", "accuracy"], rows))
    panels = [(f"{r.label} ({r.base_eval})", *run_confidences(r.dir)[1:]) for r in runs]
    reliability_diagrams(panels, ctx.figure("calibration.png"))
    s.blocks.append(Figure("calibration.png", "Reliability diagrams side by side; bars: accuracy per confidence bin."))
    return s


def safety(ctx: Context) -> Section:
    s = Section("Safety")
    runs = _runs(ctx, SAFETY_EVALS)
    if not runs:
        s.missing = _missing(SAFETY_EVALS, "`opengpt4 eval run safety-synthetic --model M`")
        return s
    for name in SAFETY_EVALS:
        group = [r for r in runs if r.base_eval == name]
        if not group:
            continue
        rates = [(k, t) for k, t in SAFETY_RATES if any(_dig(r.results, ("metrics", k)) for r in group)]
        rows = [[r.label, *(ctx.rate(r, ("metrics", k), f"{r.label} {name} {t}") for k, t in rates)] for r in group]
        s.blocks.append(f"`{name}` ({group[0].results['n']} prompts per model; rates with Wilson 95% intervals).")
        s.blocks.append(Table(["model", *(t for _, t in rates)], rows))
        before, after = next((r for r in group if r.label == "SFT"), None), next((r for r in group if r.label == "RLHF"), None)
        if before and after:
            s.blocks.append(_change(before, after, rates))
        grouped_bars([t for _, t in rates], {r.label: [_point(r, ("metrics", k)) for k, _ in rates] for r in group},
                     ctx.figure(f"safety-{name}.png"), "rate", name)
        s.blocks.append(Figure(f"safety-{name}.png", f"{name}: each rate per model, 95% intervals."))
    return s


def _change(before: EvalRun, after: EvalRun, rates: list[tuple[str, str]]) -> str:
    parts = []
    for key, title in rates:
        a, b = _dig(before.results, ("metrics", key, "rate")), _dig(after.results, ("metrics", key, "rate"))
        if a is None or b is None:
            continue
        relative = f", {100 * (b - a) / a:+.0f}% relative" if a else ""
        parts.append(f"{title} {100 * (b - a):+.1f} points{relative}")
    return "SFT → RLHF: " + "; ".join(parts) + "."


def steerability(ctx: Context) -> Section:
    s = Section("Steerability")
    ifevals, constraints = _runs(ctx, IFEVALS), _runs(ctx, ("system_constraints",))
    if not ifevals and not constraints:
        s.missing = _missing(("ifeval", "ifeval_system", "system_constraints"), "`opengpt4 eval run ifeval_system --model M`")
        return s
    if ifevals:
        rows = [[r.label, r.base_eval, *(ctx.value(r, ("metrics", m), f"{r.label} {r.base_eval} {m}")
                                         for m in IFEVAL_METRICS),
                 ctx.value(r, ("metrics", "n_prompts"), f"{r.label} {r.base_eval} n", "{}")] for r in ifevals]
        s.blocks.append("IFEval, and IFEval with its instructions moved into the system message (IFEval-system).")
        s.blocks.append(Table(["model", "eval", *IFEVAL_METRICS, "prompts"], rows))
    else:
        s.blocks.append("IFEval / IFEval-system: no runs among the given directories.")
    if constraints:
        rows = [[r.label, ctx.rate(r, ("metrics", "compliance"), f"{r.label} compliance"),
                 ctx.value(r, ("metrics", "compliance_mean_over_types"), f"{r.label} compliance over types"),
                 ctx.rate(r, ("metrics", "conflict_compliance"), f"{r.label} conflict compliance"),
                 ctx.rate(r, ("metrics", "answer_correct"), f"{r.label} answer correct")] for r in constraints]
        s.blocks.append("The world's held-out system-message constraints (17 types): compliance, its mean over types, "
                        "compliance when the user asks otherwise (the system message must win), and the answer "
                        "still correct.")
        s.blocks.append(Table(["model", "compliance", "mean over types", "system vs user conflict", "answer correct"],
                              rows))
    return s


def scaling(ctx: Context) -> Section:
    s = Section("Predictable scaling")
    if not ctx.art.predictions:
        s.missing = "no prediction.json (`opengpt4 scaling fit`) among the given directories."
        return s
    cite = ctx.numbers.cite
    for path in ctx.art.predictions:
        p = json.loads(path.read_text())
        target_file = path.parent / "target.json"
        target = json.loads(target_file.read_text()) if target_file.is_file() else None
        lo, hi = p["interval_95"]
        s.blocks.append(f"Pre-registered at commit `{p.get('git_commit', '?')}` on {p.get('time', '?')} "
                        f"({path}): L(C) = a·C^b + c fitted on the IsoFLOP minima.")
        rows = [["predicted held-out bits per byte at "
                 f"{cite(p['target_budget'], path, ('target_budget',), 'target budget', '{:.0e}')} FLOPs",
                 f"{cite(p['predicted_bpb'], path, ('predicted_bpb',), 'predicted bpb')} "
                 f"[{cite(lo, path, ('interval_95', 0), 'interval low')}, "
                 f"{cite(hi, path, ('interval_95', 1), 'interval high')}]"],
                ["fit a, b, c", ", ".join(cite(p["fit"][k], path, ("fit", k), f"fit {k}", "{:.4g}") for k in "abc")]]
        if target:
            rows += [["observed", cite(target["observed_bpb"], target_file, ("observed_bpb",), "observed bpb")],
                     ["relative error", cite(target["relative_error"], target_file, ("relative_error",),
                                             "relative error", "{:+.1%}")]]
            cap = target.get("capability") or {}
            if "observed" in cap:
                rows.append(["capability, -mean log pass rate: predicted / observed",
                             f"{cite(cap['predicted'], target_file, ('capability', 'predicted'), 'capability predicted')}"
                             f" / {cite(cap['observed'], target_file, ('capability', 'observed'), 'capability observed')}"])
        else:
            rows.append(["observed", "the target run has not run yet (`opengpt4 scaling target`)"])
        s.blocks.append(Table(["", "value"], rows))
        for png, caption in (("loss.png", "Held-out loss against compute: the fit, its interval, the target."),
                             ("isoflop.png", "IsoFLOP curves and their minima."),
                             ("capability.png", "Capability (-mean log pass rate) against compute.")):
            if (path.parent / png).is_file():
                shutil.copyfile(path.parent / png, ctx.figure(f"scaling-{png}"))
                s.blocks.append(Figure(f"scaling-{png}", caption))
    return s


def api(ctx: Context) -> Section:
    from opengpt4.serve.keys import DEFAULT_RPM, DEFAULT_TPM
    from opengpt4.serve.registry import load_registry

    s = Section("The API")
    if ctx.registry is None or not ctx.registry.is_file():
        s.missing = f"no model registry ({ctx.registry or 'give --registry FILE'})."
        return s
    reg = load_registry(ctx.registry)
    rows = [[m.snapshot, ", ".join(m.aliases) or "-", m.path, str(m.context_length or "the model's own"),
             "-" if m.prompt_price is None else f"${m.prompt_price:g} / ${m.completion_price or 0:g}",
             {True: "yes", False: "no", None: "if it has a vision tower"}[m.accepts_images], str(m.max_batch)]
            for m in reg.models]
    s.blocks.append(f"From `{ctx.registry}`: what `opengpt4 serve --registry` answers to at /v1/chat/completions.")
    s.blocks.append(Table(["snapshot", "aliases", "weights", "context", "price per 1k tokens (prompt / completion)",
                           "images", "batch"], rows))
    s.blocks.append(f"Rate limits are per API key: {DEFAULT_RPM} requests and {DEFAULT_TPM:,} tokens per minute by "
                    "default (`opengpt4 keys create NAME --rpm N --tpm N`), reported in OpenAI's x-ratelimit-* headers.")
    return s


def pipeline(ctx: Context) -> Section:
    s = Section("Pipeline")
    if not ctx.art.pipelines:
        s.missing = "no pipeline.json (`opengpt4 pipeline`) among the given directories."
        return s
    for path, summary in ctx.art.pipelines:
        rows = [[st["name"], st["status"], ctx.numbers.cite(st["wall_s"], path, ("stages", i, "wall_s"),
                                                            f"{st['name']} wall", "{:.1f}")]
                for i, st in enumerate(summary["stages"])]
        s.blocks.append(f"`opengpt4 pipeline --preset {summary['preset']}` ({path.parent}): wall time per stage "
                        "(of the run that built it), in seconds.")
        s.blocks.append(Table(["stage", "last run", "wall time (s)"], rows))
        for line in summary.get("left_out", []):
            s.blocks.append(f"Left out: {line}")
    return s


SECTIONS: tuple[Callable[[Context], Section], ...] = (
    headline, exams, benchmarks, multilingual, visual, factual, truthfulness, calibration, safety, steerability,
    scaling, api, pipeline)
