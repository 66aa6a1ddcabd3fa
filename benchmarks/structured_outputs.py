"""Structured outputs and tool calls from SmolLM2-135M-Instruct through real clients (issue #14).

    python benchmarks/structured_outputs.py [--prompts 40] [--max-tokens 120] [--temperature 0] [--out result.json]

Starts `opengpt4 serve --no-auth` on the imported SmolLM2 (a subprocess, loopback) and measures:

- structured outputs: LangChain's `ChatOpenAI(...).with_structured_output(Person)` (method
  json_schema: OpenAI's strict response_format) on `--prompts` extraction prompts, greedy unless
  --temperature says otherwise (seeded per prompt; 1.0 is what a client that sends none gets). Valid:
  the call returned a `Person` instance (a reply cut by max_tokens raises in LangChain and counts
  as invalid). Also how many fields equal the ones the prompt states, which the grammar does
  not give: the model must read them.
- the agent loop with the openai SDK: turn 1 asks with a get_weather tool, once with
  tool_choice "auto" (does the model call on its own?) and once "required"; the call's result
  goes back as a `tool` message after the assistant's content-null message, and turn 2 must
  answer in text (finish_reason "stop"). Completes: both turns did.
- the grammar mask's cost: the engine's ms per generated token, greedy, with and without a
  JSON-schema grammar (in this process, same prompt, same number of tokens).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel
from server_ready import wait_until_ready

NAMES = ["Alice", "Bob", "Carmen", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas"]
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "London", "Tokyo", "Lisbon", "Oslo"]
TEMPLATES = ["{name} is {age} years old and lives in {city}.",
             "Meet {name}, a {age}-year-old from {city}.",
             "My neighbour {name} ({age}) moved here from {city}.",
             "In {city} I met {name}, who had just turned {age}."]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"], "additionalProperties": False}}}


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int
    city: str


def cases(n: int) -> list[tuple[str, Person]]:
    out = []
    for i in range(n):
        person = Person(name=NAMES[i % len(NAMES)], age=18 + (i * 7) % 60, city=CITIES[(i * 3) % len(CITIES)])
        text = TEMPLATES[i % len(TEMPLATES)].format(**person.model_dump())
        out.append((f"Extract the person from this text: {text}", person))
    return out


def start_server(model: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = workdir / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "opengpt4.cli", "serve", "--model", str(model), "--no-auth",
                               "--port", str(port), "--db", str(workdir / "serve.db")],
                              stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(server, base, log, 300)
    return server, base


def structured(base: str, model: str, n: int, max_tokens: int, temperature: float) -> dict:
    from langchain_openai import ChatOpenAI

    valid, fields_right, failures, start = 0, 0, [], time.perf_counter()
    for i, (prompt, expected) in enumerate(cases(n)):
        llm = ChatOpenAI(base_url=base + "/v1", api_key="unused", model=model, temperature=temperature,
                         max_tokens=max_tokens, seed=i, max_retries=0, timeout=300)
        try:
            person = llm.with_structured_output(Person).invoke(prompt)  # method json_schema, strict
        except Exception as e:  # noqa: BLE001 - what LangChain raises for a cut or unparsable reply is the measurement
            failures.append({"prompt": prompt, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        if isinstance(person, Person):
            valid += 1
            fields_right += sum(getattr(person, f) == getattr(expected, f) for f in ("name", "age", "city"))
        else:
            failures.append({"prompt": prompt, "error": f"returned {person!r}"[:300]})
    return {"prompts": n, "temperature": temperature, "valid": valid, "valid_rate": valid / n, "fields_right_rate": fields_right / (3 * n),
            "seconds": round(time.perf_counter() - start, 1), "failures": failures[:5]}


def agent_loop(base: str, model: str) -> dict:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    out = {}
    for choice in ("auto", "required"):
        first = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER_TOOL], tool_choice=choice,
                                               temperature=0, max_tokens=60).choices[0]
        run = {"turn1_finish_reason": first.finish_reason, "turn1_content": first.message.content,
               "turn1_tool_calls": [c.function.model_dump() for c in first.message.tool_calls or []]}
        if first.message.tool_calls:
            call = first.message.tool_calls[0]
            messages = [*ask, first.message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id,
                         "content": json.dumps({"city": json.loads(call.function.arguments).get("city"),
                                                "temperature_c": 18, "sky": "sunny"})}]
            second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL],
                                                    temperature=0, max_tokens=60).choices[0]
            run.update(turn2_finish_reason=second.finish_reason, turn2_content=second.message.content,
                       turn2_tool_calls=len(second.message.tool_calls or []))
            run["completes"] = second.finish_reason == "stop" and bool(second.message.content)
        else:
            run["completes"] = False
        out[choice] = run
    return out


def mask_cost(model: Path, tokens: int) -> dict:
    """What the grammar adds per generated token: the mask itself (computing the allowed set and
    advancing the matcher, timed alone), next to the engine's whole ms per token with and without
    a grammar (same prompt and length, greedy, best of 3 alternating runs: the machine is shared)."""
    from opengpt4.engine.generate import Engine
    from opengpt4.engine.grammar import json_schema_grammar
    from opengpt4.engine.sampling import SamplingParams

    engine = Engine.load(str(model))
    prompt = engine.chat_prompt([{"role": "user", "content": "Write a long description of Paris as JSON."}])
    schema = {"type": "object", "properties": {"description": {"type": "string"}}, "required": ["description"]}
    grammar = json_schema_grammar(schema)
    engine.grammar_tokenizer.check(grammar, "response_format")  # builds the vocabulary view once, untimed
    best: dict[str, float] = {}
    generated: list[int] = []
    for _ in range(3):
        for name, g in (("free", None), ("grammar", grammar)):
            start = time.perf_counter()
            [[c]] = engine.generate([prompt], SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=g is None,
                                                             grammar=g))
            per_token = (time.perf_counter() - start) / len(c.token_ids) * 1000
            best[name] = min(best.get(name, per_token), per_token)
            generated = c.token_ids if g is not None else generated
    matcher = engine.grammar_tokenizer.matcher(grammar)
    start = time.perf_counter()
    for token in generated:
        matcher.allowed()
        if token not in engine.tokenizer.stop_ids:
            matcher.consume(token)
    mask_ms = (time.perf_counter() - start) / len(generated) * 1000
    return {"mask_ms_per_token": round(mask_ms, 3), "free_ms_per_token": round(best["free"], 2),
            "grammar_ms_per_token": round(best["grammar"], 2),
            "mask_share_of_a_step": round(mask_ms / best["free"], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=120)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--mask-tokens", type=int, default=64)
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = p.parse_args()

    from opengpt4.model.convert import ensure_smollm2

    model = ensure_smollm2()
    result: dict = {"model": model.name}
    with tempfile.TemporaryDirectory() as tmp:
        server, base = start_server(model, Path(tmp))
        try:
            result["structured_output"] = structured(base, model.name, args.prompts, args.max_tokens, args.temperature)
            result["agent_loop"] = agent_loop(base, model.name)
        finally:
            server.terminate()
            server.wait(timeout=60)
    result["grammar_mask"] = mask_cost(model, args.mask_tokens)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
