"""`opengpt4 vision data`, `align`, `export` and `import` (see vision/data.py, align.py, bundle.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from opengpt4.config import apply_overrides


def cmd_data(args: argparse.Namespace) -> None:
    from opengpt4.vision.data import build_visual_data

    out = build_visual_data(args.out, args.preset, args.seed, args.pretrain_data)
    print((out / "manifest.json").read_text())


# `--stage all` runs them in turn: "read" trains the image reader (vision/reading.py) on stage 1's model,
# into OUT/reader, and stage 2 starts from it (its chats then carry each image's reading).
STAGES = ("0", "1", "read", "2")


def _flag(stage: str) -> str:
    """A stage's flag suffix: --steps1, --steps-read."""
    return stage if stage.isdigit() else f"-{stage}"


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _budget_flags() -> list[str]:
    return [f"--{name}{_flag(s)}" for s in STAGES for name in ("steps", "epochs", "minutes")
            if s.isdigit() or name != "epochs"]


def _stage_argv(args: argparse.Namespace, stage: str) -> list[str]:
    """The command line of one stage of a `--stage all` run."""
    argv = ["vision", "align", "--lm", args.lm, "--out", args.out, "--stage", stage, "--data", str(args.data)]
    for flag in ["--vision", *_budget_flags()]:
        if getattr(args, _dest(flag)) is not None:
            argv += [flag, str(getattr(args, _dest(flag)))]
    argv += ["--lora", str(args.lora)] + (["--train-vision"] if args.train_vision else [])
    argv += [x for s in STAGES for value in getattr(args, _dest(f"set{_flag(s)}")) for x in (f"--set{_flag(s)}", value)]
    return argv + (["--resume"] if args.resume else [])


def _has_readings(data: Path) -> bool:
    from opengpt4.errors import DataFileError
    from opengpt4.vision.reading import training_readings

    try:
        training_readings(data)
    except DataFileError:
        return False
    return True


def _tower(args: argparse.Namespace) -> str | None:
    """The ViT stage 1 takes: --vision's, else stage 0's when it ran."""
    if args.vision is not None:
        return args.vision
    stage0 = Path(args.out) / "stage0"
    return str(stage0) if (stage0 / "config.json").is_file() else None


def _stage2_start(out: Path) -> Path:
    """Stage 2 starts from OUT/reader when `vision read --out OUT/reader` made one, else from OUT/stage1."""
    reader = out / "reader"
    return reader if (reader / "config.json").is_file() else out / "stage1"


def cmd_align(args: argparse.Namespace) -> None:
    from opengpt4.train.loop import STATE_FILE
    from opengpt4.vision.align import build_trainer, stage_config
    from opengpt4.vision.data import default_data_dir

    if args.data is None:
        args.data = default_data_dir()
    if args.stage == "all":
        stages = [s for s in STAGES if s != "0" or args.vision is None]
        if not _has_readings(Path(args.data)):
            print(f"{args.data} has no image readings (a data dir from before the image reader): stage 2 without a "
                  "reader; `opengpt4 vision data` builds one with them", flush=True)
            stages.remove("read")
        # Each stage in a process of its own: the loop's clock (time budgets, elapsed) starts with its
        # process, and a stage's model and images are freed before the next loads its own.
        for stage in stages:
            if subprocess.run([sys.executable, "-m", "opengpt4.cli", *_stage_argv(args, stage)]).returncode:
                raise SystemExit(1)
        return
    if args.stage == "read":
        out = Path(args.out)
        _train_reader(str(out / "stage1"), Path(args.data), out / "reader", args.set_read, args.steps_read,
                      args.minutes_read, args.resume)
        return
    stage = int(args.stage)
    vision = _tower(args) if stage == 1 else None
    cfg = stage_config(stage, args.lora, args.train_vision or (stage == 1 and vision is None))
    apply_overrides(cfg, getattr(args, f"set{stage}"))
    out = Path(args.out) / f"stage{stage}"
    lm = args.lm if stage < 2 else str(_stage2_start(Path(args.out)))
    build_trainer(stage, lm, Path(args.data), out, cfg, vision=vision,
                  max_steps=getattr(args, f"steps{stage}"), epochs=getattr(args, f"epochs{stage}"),
                  max_minutes=getattr(args, f"minutes{stage}"),
                  resume=args.resume and (out / STATE_FILE).is_file()).run()  # both: stage 2 may not have begun


def _train_reader(model: str, data: Path, out: Path, settings: list[str], steps: int | None, minutes: float | None,
                  resume: bool) -> None:
    from opengpt4.train.loop import STATE_FILE
    from opengpt4.vision.reading import ReadConfig, build_reader_trainer

    cfg = ReadConfig()
    apply_overrides(cfg, settings)
    build_reader_trainer(model, data, out, cfg, max_steps=steps, max_minutes=minutes,
                         resume=resume and (out / STATE_FILE).is_file()).run()


def cmd_read(args: argparse.Namespace) -> None:
    from opengpt4.vision.data import default_data_dir

    _train_reader(args.model, Path(args.data or default_data_dir()), Path(args.out), args.set, args.steps,
                  args.minutes, args.resume)


def cmd_export(args: argparse.Namespace) -> None:
    from opengpt4.vision.bundle import write_delta

    out = write_delta(args.model, args.out)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB (ViT, projector, image reader if any, and LoRA adapters, "
          "float16)")


def cmd_import(args: argparse.Namespace) -> None:
    from opengpt4.model.checkpoint import resolve_model
    from opengpt4.vision.bundle import build_from_delta

    print(build_from_delta(resolve_model(args.lm), Path(args.delta), Path(args.out)))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vision", help="vision on a pretrained LM (a captioning-pretrained ViT, LLaVA's two stages) "
                                      "and its data")
    verb = p.add_subparsers(dest="vision_command", required=True, metavar="VERB")
    d = verb.add_parser("data", help="caption data, visual instruction chats and held-out visual evals")
    d.add_argument("--out", required=True, help="the visual data dir to write")
    d.add_argument("--preset", choices=["test", "mini"], default="mini", help="sizes (default mini)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--pretrain-data", default=None,
                   help="a pretraining data dir whose training images eval images must not repeat")
    d.set_defaults(func=cmd_data)

    a = verb.add_parser("align", help="stage 0 (the ViT learns to caption with a small decoder), stage 1 (the "
                                      "projector on captions), the image reader, and stage 2 (visual instruction "
                                      "tuning)")
    a.add_argument("--lm", default="smollm2-135m-instruct", help="the text-only LM (default smollm2-135m-instruct)")
    a.add_argument("--out", required=True, help="run dir: OUT/stage0, OUT/stage1, OUT/reader (stage 1's model with "
                                                "an image reader), OUT/stage2 (the model; from OUT/reader when "
                                                "there is one)")
    a.add_argument("--vision", default=None,
                   help="a checkpoint whose pretrained ViT to use, frozen, instead of stage 0's")
    a.add_argument("--train-vision", action="store_true",
                   help="stage 1 trains the ViT too (default: only when there is no pretrained one); stage 2 keeps "
                        "it frozen, as LLaVA does (--set2 train_vision=true to train it there)")
    a.add_argument("--data", default=None, help="visual data dir (default: built once under $OPENGPT4_HOME)")
    a.add_argument("--stage", choices=[*STAGES, "all"], default="all",
                   help="one stage, or all in turn (default; stage 0 only without --vision, the reader only when "
                        "the data has readings); read: the image reader on OUT/stage1, as `vision read` does")
    a.add_argument("--lora", type=int, default=16, help="stage 2's LoRA rank; 0 trains the whole LM (default 16)")
    for stage in STAGES:
        name = f"stage {stage}'s" if stage.isdigit() else "the reader's"
        a.add_argument(f"--steps{_flag(stage)}", type=int, default=None, help=f"{name} optimizer steps")
        if stage.isdigit():
            a.add_argument(f"--epochs{stage}", type=float, default=None, help=f"{name} epochs (default 1)")
        a.add_argument(f"--minutes{_flag(stage)}", type=float, default=None, help=f"{name} wall-clock budget")
        a.add_argument(f"--set{_flag(stage)}", action="append", default=[], metavar="KEY=VALUE",
                       help=f"a setting of {name[:-2]} (vision/" + ("align.py AlignConfig" if stage.isdigit() else
                                                                "reading.py ReadConfig") + "), repeatable")
    a.add_argument("--resume", action="store_true", help="continue the stage(s) from their checkpoints")
    a.set_defaults(func=cmd_align)

    r = verb.add_parser("read", help="train a vision checkpoint's image reader: a CNN that writes what an image "
                                     "holds as text after its tokens (model/reader.py)")
    r.add_argument("--model", required=True, help="the vision checkpoint (a stage-1 run, or any with a ViT)")
    r.add_argument("--out", required=True, help="the checkpoint dir to write: the model with the reader (OUT/reader "
                                                "of a `vision align` run dir, and its stage 2 starts from it)")
    r.add_argument("--data", default=None, help="visual data dir (default: built once under $OPENGPT4_HOME)")
    r.add_argument("--steps", type=int, default=None, help="optimizer steps (default 20 epochs)")
    r.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting (vision/reading.py ReadConfig), repeatable")
    r.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    r.set_defaults(func=cmd_read)

    e = verb.add_parser("export", help="a stage-2 run (LoRA) as a small delta on its text-only LM")
    e.add_argument("--model", required=True, help="the stage-2 checkpoint dir (OUT/stage2 of `vision align`)")
    e.add_argument("--out", required=True, help="the .safetensors file to write")
    e.set_defaults(func=cmd_export)

    i = verb.add_parser("import", help="a delta from `vision export` + its text-only LM -> a vision checkpoint")
    i.add_argument("--delta", required=True, help="the .safetensors file `vision export` wrote")
    i.add_argument("--lm", default="smollm2-135m-instruct", help="the text-only LM it was trained on")
    i.add_argument("--out", required=True, help="the checkpoint dir to write")
    i.set_defaults(func=cmd_import)
