"""End to end: evals on the tiny real model, locally and over HTTP; logs, cache, statistics, compare."""

import json
import subprocess
import sys

import httpx
import pytest
import scipy.stats

from opengpt4.engine.generate import Engine
from opengpt4.errors import OpenGPT4Error
from opengpt4.evals.api import CompletionResult, Decoding, Eval, LoglikRequest, SampleResult
from opengpt4.evals.compare import compare
from opengpt4.evals.completion import EngineCompletionFn, HTTPCompletionFn, LocalCompletionFn
from opengpt4.evals.runner import run_eval
from opengpt4.evals.stats import paired_bootstrap, summarize
from opengpt4.model.checkpoint import save_checkpoint
from tests.helpers import live_server, write_registry

WORDS = ["cat", "mat", "birds", "apples", "pears", "Paris", "seven", "blue"]
CHAT = [{"input": [{"role": "user", "content": f"the {w} sat on"}], "ideal": [w, "the"]} for w in WORDS]
EVALS = """
chat-match:
  id: chat-match.dev.v0
  description: a chat Match eval for the tiny model
  metrics: [accuracy]
chat-match.dev.v0:
  class: evals.elsuite.basic.match:Match
  args: {samples_jsonl: chat/samples.jsonl, max_tokens: 6}
judged:
  id: judged.dev.v0
judged.dev.v0:
  class: evals.elsuite.modelgraded.classify:ModelBasedClassify
  args:
    samples_jsonl: chat/samples.jsonl
    modelgraded_spec: short
    sample_kwargs: {max_tokens: 6}
    eval_kwargs: {max_tokens: 4}
confident:
  id: confident.dev.v0
confident.dev.v0:
  class: tests.test_evals_runner:Confident
  args: {n: 12}
"""
SHORT = """
short:
  prompt: "{input} / {completion} / {ideal}: Y or N?"
  choice_strings: [Y, N]
  choice_scores: {Y: 1, N: 0}
  input_outputs: {input: completion}
  eval_type: classify
"""


class Confident(Eval):
    """A custom class path: samples that report a confidence (as multiple choice does)."""

    def __init__(self, completion_fn, *, n: int, **kw):
        super().__init__(completion_fn, **kw)
        self.n = n

    def load_samples(self):
        return [{"i": i} for i in range(self.n)]

    def run_batch(self, samples):
        return [SampleResult(s["sample_id"], None, None, s["i"] % 2, 1, float(s["i"] % 3 != 0),
                             extra={"confidence": 0.5 + s["i"] / 30}) for s in samples]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGPT4_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_model, tiny_tokenizer):
    return save_checkpoint(tmp_path_factory.mktemp("evals") / "tiny", tiny_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return write_registry(tmp_path_factory.mktemp("registry"), EVALS, {"chat/samples.jsonl": CHAT}, SHORT)


@pytest.fixture(scope="module")
def local(ckpt):
    return LocalCompletionFn(ckpt, dtype="float32", batch_size=4)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_yaml_only_eval_runs_through_the_cli(tmp_path, ckpt, registry, home):
    env = {**__import__("os").environ, "OPENGPT4_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "opengpt4.cli", "eval", "run", "chat-match", "--model", str(ckpt),
                        "--registry", str(registry), "--out", str(tmp_path / "run"), "--dtype", "float32",
                        "--limit", "5", "--workers", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["eval"] == "chat-match.dev.v0" and report["metric"] == "accuracy" and report["n"] == 5
    assert report["model"].startswith("local:") and report["cache"] == {"hits": 0, "misses": 5}
    assert "accuracy" in r.stdout  # the human table comes first
    log = read_log(tmp_path / "run")
    assert log[0]["spec"]["eval"] == "chat-match.dev.v0" and log[0]["spec"]["limit"] == 5
    assert log[-1]["final_report"] == report and len(log) == 7
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == report
    sample = log[1]
    assert set(sample) == {"sample_id", "prompt", "output", "parsed", "ideal", "score", "logprobs", "usage", "extra"}


def test_same_eval_twice_is_identical_and_cached(tmp_path, local, registry):
    a = run_eval("chat-match", local, registries=[registry], out_dir=tmp_path / "a", progress=False)
    b = run_eval("chat-match", local, registries=[registry], out_dir=tmp_path / "b", progress=False)
    keys = ["eval", "model", "metric", "score", "stderr", "ci95", "n", "n_unscorable", "metrics", "usage"]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["cache"] == {"hits": 0, "misses": len(CHAT)} and b["cache"] == {"hits": len(CHAT), "misses": 0}
    samples_a, samples_b = read_log(tmp_path / "a")[1:-1], read_log(tmp_path / "b")[1:-1]
    assert samples_a == samples_b
    assert [s["sample_id"] for s in samples_a] == [f"chat-match.dev.v0.{i}" for i in range(len(CHAT))]
    # The scores are those of the model's greedy outputs under Match's rule (unstripped, as OpenAI Evals).
    for s in samples_a:
        assert s["score"] == float(any(s["output"].startswith(i) for i in s["ideal"]))
    assert a["metrics"]["accuracy"] == a["score"] and set(a["metrics"]) >= {"boostrap_std", "usage_total_tokens"}
    # A renamed copy of the checkpoint is the same model: still served from the cache.
    assert LocalCompletionFn(local.path, dtype="float32").identity == local.identity


def test_the_cache_never_serves_one_precision_for_another(tmp_path, local, registry):
    """A result is cached under the model *and* its inference precision: a float32 run
    followed by a bfloat16 run of the same checkpoint computes everything again."""
    bf16 = LocalCompletionFn(local.path, dtype="bfloat16", batch_size=4)
    assert bf16.identity != local.identity and bf16.identity.endswith("@bfloat16")
    assert LocalCompletionFn(local.path).identity == local.identity  # auto is float32
    cache = tmp_path / "cache.sqlite"
    run_eval("chat-match", local, registries=[registry], out_dir=tmp_path / "f", cache_path=cache, progress=False)
    report = run_eval("chat-match", bf16, registries=[registry], out_dir=tmp_path / "b", cache_path=cache,
                      progress=False)
    assert report["cache"] == {"hits": 0, "misses": len(CHAT)}
    assert report["model"] == bf16.identity


def test_limit_takes_a_seeded_representative_subset(tmp_path, local, registry):
    def ids(seed, limit=3):
        report = run_eval("chat-match", local, registries=[registry], limit=limit, seed=seed,
                          out_dir=tmp_path / f"s{seed}-{limit}", progress=False)
        return [s["sample_id"] for s in read_log(tmp_path / f"s{seed}-{limit}")[1:-1]], report

    first, report = ids(0)
    assert ids(0)[0] == first and len(first) == 3 and report["limit"] == 3
    assert first == sorted(first, key=lambda i: int(i.rsplit(".", 1)[1]))  # back in file order
    assert any(ids(seed)[0] != first for seed in (1, 2, 3))
    assert ids(0, limit=100)[0] == [f"chat-match.dev.v0.{i}" for i in range(len(CHAT))]


def test_model_graded_end_to_end_with_the_local_model_as_grader(tmp_path, local, registry):
    report = run_eval("judged", local, registries=[registry], out_dir=tmp_path / "j", progress=False)
    m = report["metrics"]
    assert report["n"] == len(CHAT) and report["grader"] is None  # graded by the model itself
    assert report["metric"] == "score" and m["score"] == pytest.approx(report["score"])
    counts = {k: v for k, v in m.items() if k.startswith("counts/")}
    assert sum(counts.values()) == len(CHAT) and set(counts) <= {"counts/Y", "counts/N", "counts/__invalid__"}
    samples = read_log(tmp_path / "j")[1:-1]
    # An unreadable grade is scored as the lowest choice (N: 0), as OpenAI Evals scores it.
    assert report["n_unscorable"] == 0
    assert [s["score"] for s in samples] == [1.0 if s["parsed"] == "Y" else 0.0 for s in samples]
    assert report["score"] == pytest.approx(m.get("counts/Y", 0) / len(CHAT))
    prompt = samples[0]["extra"]["grader_prompt"][0]["content"]
    assert prompt == f"the cat sat on / {samples[0]['output']} / ['cat', 'the']: Y or N?"


def test_a_separate_grader_checkpoint_is_named_in_the_report(tmp_path, local, registry, ckpt):
    report = run_eval("judged", local, registries=[registry], grader=str(ckpt), dtype="float32",
                      out_dir=tmp_path / "g", progress=False, limit=2)
    assert report["grader"] == local.identity and report["n"] == 2


def test_samples_with_a_confidence_get_an_ece_and_a_reliability_diagram(tmp_path, local, registry):
    report = run_eval("confident", local, registries=[registry], out_dir=tmp_path / "c", progress=False)
    assert report["n"] == 12 and 0 <= report["ece"] <= 1 and (tmp_path / "c" / "reliability.png").stat().st_size > 0


def test_summarize_matches_scipy_sem_and_paired_bootstrap_finds_a_positive_diff():
    scores = [1, 0, 1, 1, 0, 1, 1, 1]
    s = summarize(scores, seed=0)
    assert s.mean == pytest.approx(0.75) and s.n == 8
    assert s.stderr == pytest.approx(scipy.stats.sem(scores))
    assert s.ci95[0] < 0.75 < s.ci95[1] and summarize(scores, seed=0) == s
    boot = paired_bootstrap([0.0, 0.5, 0.5, 1.0], [1.0, 1.0, 0.75, 1.0], seed=0)
    assert boot["mean_diff"] == pytest.approx(0.4375) and boot["ci95"][0] > 0 and boot["p_value"] < 0.5


def test_package_fact_eval_graded_by_smollm2(tmp_path, smollm2):
    """The package's model-graded example, with a real instruct model writing and grading answers."""
    report = run_eval("capitals-fact", str(smollm2), limit=2, out_dir=tmp_path / "fact", progress=False)
    m = report["metrics"]
    assert report["n"] == 2 and sum(v for k, v in m.items() if k.startswith("counts/")) == 2
    samples = read_log(tmp_path / "fact")[1:-1]
    assert all(s["output"].strip() for s in samples)  # the model answered the questions
    assert all("[Submission]: " + s["output"] in s["extra"]["grader_prompt"][0]["content"] for s in samples)


class Scripted:
    """Right on the samples `right` picks: two of them make two runs that disagree."""

    def __init__(self, identity, right):
        self.identity, self.right = identity, right

    def complete(self, prompts, decoding):
        words = [p[-1]["content"].split()[1] for p in prompts]  # "the <word> sat on"; a grader prompt: "Y"
        return [CompletionResult(["Y" if w not in WORDS else w if self.right(WORDS.index(w)) else "nope"])
                for w in words]

    def loglikelihood(self, requests):
        raise NotImplementedError


def test_compare_finds_flips_and_mcnemar_matches_scipy(tmp_path, registry):
    a = Scripted("model-a", lambda i: i % 2 == 0)
    b = Scripted("model-b", lambda i: i < 6)
    run_eval("chat-match", a, registries=[registry], out_dir=tmp_path / "a", progress=False)
    run_eval("chat-match", b, registries=[registry], out_dir=tmp_path / "b", progress=False)
    report = compare(tmp_path / "a", tmp_path / "b")
    a_only = [i for i in range(len(WORDS)) if i % 2 == 0 and not i < 6]
    b_only = [i for i in range(len(WORDS)) if i < 6 and i % 2 != 0]
    assert report["test"] == "mcnemar_exact" and report["n_paired"] == len(WORDS)
    assert (report["a_only_correct"], report["b_only_correct"]) == (len(a_only), len(b_only))
    p = scipy.stats.binomtest(len(a_only), len(a_only) + len(b_only), 0.5).pvalue
    assert report["p_value"] == pytest.approx(p)
    diff = (len(b_only) - len(a_only)) / len(WORDS)  # the paired bootstrap's interval holds the mean difference
    assert report["mean_diff"] == pytest.approx(diff) and report["ci95"][0] <= diff <= report["ci95"][1]
    flipped = {f["sample_id"]: f for f in report["flipped"]}
    assert set(flipped) == {f"chat-match.dev.v0.{i}" for i in a_only + b_only}
    f = flipped[f"chat-match.dev.v0.{b_only[0]}"]
    assert f["parsed_a"] is None and f["parsed_b"] == WORDS[b_only[0]] and f["ideal"] == [WORDS[b_only[0]], "the"]
    # Through the CLI: a table, then the same report as the last line.
    r = subprocess.run([sys.executable, "-m", "opengpt4.cli", "eval", "compare", str(tmp_path / "a"),
                        str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["p_value"] == pytest.approx(p)
    # Runs of different evals are not comparable.
    run_eval("judged", a, registries=[registry], out_dir=tmp_path / "j", progress=False, limit=2)
    with pytest.raises(OpenGPT4Error, match="different evals"):
        compare(tmp_path / "a", tmp_path / "j")


# --- over HTTP ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer):
    return Engine(tiny_model, tiny_tokenizer, pack=False)


@pytest.fixture(scope="module")
def base_url(engine):
    from opengpt4.serve.app import create_app

    with live_server(create_app({"tiny": engine})) as url:
        yield url


def test_http_run_matches_local_run(tmp_path, engine, base_url, registry):
    local = run_eval("chat-match", EngineCompletionFn(engine, "local:same-engine"), registries=[registry],
                     out_dir=tmp_path / "local", progress=False)
    remote = run_eval("chat-match", f"{base_url}#tiny", registries=[registry], out_dir=tmp_path / "http",
                      progress=False, workers=2)
    assert remote["model"] == f"{base_url}#tiny"
    pick = [(s["sample_id"], s["output"], s["parsed"], s["score"]) for s in read_log(tmp_path / "local")[1:-1]]
    assert pick == [(s["sample_id"], s["output"], s["parsed"], s["score"]) for s in read_log(tmp_path / "http")[1:-1]]
    assert sum(bool(output) for _, output, _, _ in pick) >= len(CHAT) // 2
    assert local["score"] == remote["score"] and local["usage"] == remote["usage"]


def test_http_text_prompts_and_loglikelihood_match_local(engine, base_url):
    from opengpt4.engine.score import loglikelihood

    fn = HTTPCompletionFn(base_url, "tiny")
    local = EngineCompletionFn(engine, "local:same-engine")
    decoding = Decoding(max_tokens=5, logprobs=True)
    [r] = fn.complete(["the cat sat on"], decoding)
    [ref] = local.complete(["the cat sat on"], decoding)
    assert r.texts == ref.texts and r.prompt_tokens == ref.prompt_tokens
    assert [t for t, _ in r.logprobs[0]] == [t for t, _ in ref.logprobs[0]]
    requests = [LoglikRequest("the cat sat on", " a mat"), LoglikRequest("seven blue", " birds sang"),
                LoglikRequest("Paris", "!")]
    try:
        remote = fn.loglikelihood(requests)
    except NotImplementedError as e:
        pytest.skip(f"the server does not score text yet: {e}")
    expected = loglikelihood(engine, requests)
    for got, want in zip(remote, expected, strict=True):
        assert got.num_tokens == want.num_tokens and got.is_greedy == want.is_greedy
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)


def test_http_retries_503_and_429_then_reports_unsupported_echo_and_no_server():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"error": {"message": "busy"}})
        if len(calls) == 2:
            return httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}})
        if request.url.path.endswith("/completions") and json.loads(request.content).get("echo"):
            return httpx.Response(400, json={"error": {"message": "echo is not supported"}})
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                                         "usage": {"prompt_tokens": 4, "completion_tokens": 1}})

    fn = HTTPCompletionFn("http://test/v1", "m", client=httpx.Client(transport=httpx.MockTransport(handler)),
                          concurrency=1)
    [r] = fn.complete([[{"role": "user", "content": "hello"}]], Decoding())
    assert r.texts == ["hi"] and r.prompt_tokens == 4 and calls == ["/v1/chat/completions"] * 3
    with pytest.raises(NotImplementedError, match="echo is not supported"):
        fn.loglikelihood([LoglikRequest("a", "b")])
    down = HTTPCompletionFn("http://127.0.0.1:9/v1", "m", max_retries=0)
    with pytest.raises(OpenGPT4Error, match="cannot reach"):
        down.complete(["x"], Decoding())
