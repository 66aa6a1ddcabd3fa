"""`opengpt4 pipeline --preset test` end to end, then `opengpt4 report` on what it made: every section
present or marked missing, every number the report shows equal to the file it came from, the HTML
page's images loading in Chromium, and a pipeline killed mid-stage finishing with the numbers of an
uninterrupted run without redoing its finished stages."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from opengpt4.cli import build_parser
from opengpt4.errors import PipelineBusy
from opengpt4.pipeline import PRESETS, STATE_DIR, Stage, _Lock, content_hash, input_key, stages
from opengpt4.report.document import dig
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def pipeline(out: Path, *extra: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "opengpt4", "pipeline", "--preset", "test", "--out", str(out), *extra]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def statuses(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((out / "pipeline.json").read_text())["stages"]}


def final_numbers(out: Path) -> dict[str, dict]:
    """Every eval's results, less what differs between two runs of the same model (time, paths, cache)."""
    numbers = {}
    for file in sorted(out.glob("evals/*/*/*/results.json")):
        r = json.loads(file.read_text())
        numbers[str(file.relative_to(out))] = {k: v for k, v in r.items()
                                               if k not in ("run_time_s", "out_dir", "cache", "reliability_png")}
    return numbers


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "full"
    pipeline(out)
    return out


def test_every_stage_of_both_presets_is_a_valid_command():
    parser = build_parser()
    for preset in PRESETS.values():
        for stage in stages(preset, benchmark_data=Path("/data")):
            args = parser.parse_args(list(stage.argv))  # argparse exits on an unknown flag or verb
            assert args.func is not None, stage.name
    mini = stages(PRESETS["mini"], benchmark_data=Path("/data"))
    assert {s.model for s in mini if s.model} == {"base", "SFT", "RLHF", "SmolLM2"}
    assert [s.name for s in mini][-1] == "report"


def test_the_input_key_follows_the_command_and_the_inputs_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    stage = Stage("b", ("data", "rl-prompts", "--chat", "a", "--out", "b"), ("a",))
    first = input_key(stage, {"a": content_hash(tmp_path / "a")})
    (tmp_path / "a" / "x.txt").write_text("2")
    assert input_key(stage, {"a": content_hash(tmp_path / "a")}) != first
    other = Stage("b", ("data", "rl-prompts", "--chat", "a", "--out", "b", "--seed", "1"), ("a",))
    assert input_key(other, {"a": content_hash(tmp_path / "a")}) != input_key(stage, {"a": content_hash(tmp_path / "a")})
    assert content_hash(tmp_path / "missing") is None


def test_a_second_pipeline_in_the_same_directory_is_refused(tmp_path):
    (tmp_path / STATE_DIR).mkdir()
    with _Lock(tmp_path), pytest.raises(PipelineBusy):
        _Lock(tmp_path).__enter__()


def test_the_pipeline_ran_every_stage_and_the_report_has_every_section(full):
    done = statuses(full)
    assert set(done.values()) == {"ran"} and list(done)[-1] == "report", done
    report = json.loads((full / "report" / "report.json").read_text())
    markdown = (full / "report" / "report.md").read_text()
    titles = [s["title"] for s in report["sections"]]
    assert titles == ["Headline", "Exam results", "Academic benchmarks", "Multilingual", "Visual inputs",
                      "Factual accuracy by category", "TruthfulQA-style misconceptions", "Calibration", "Safety",
                      "Steerability", "Predictable scaling", "The API", "Pipeline"]
    for section in report["sections"]:
        assert f"## {section['title']}\n" in markdown
        if section["missing"]:
            assert f"*Missing: {section['missing']}*" in markdown
    present = {s["title"] for s in report["sections"] if not s["missing"]}
    # What the test preset makes: the world's evals of base, SFT and RLHF, the pipeline and the registry.
    assert {"Headline", "Exam results", "Multilingual", "Factual accuracy by category", "Calibration", "Safety",
            "TruthfulQA-style misconceptions", "Steerability", "The API", "Pipeline"} <= present
    assert {"Academic benchmarks", "Visual inputs", "Predictable scaling"}.isdisjoint(present)  # not in this run


def test_every_number_in_the_report_is_the_one_in_its_source_file(full):
    report = json.loads((full / "report" / "report.json").read_text())
    markdown = (full / "report" / "report.md").read_text()
    assert len(report["numbers"]) > 100
    sections = {r["section"] for r in report["numbers"]}
    assert {"exams", "safety", "calibration", "truthfulness", "steerability", "pipeline"} <= sections
    for record in report["numbers"]:
        source = json.loads(Path(record["file"]).read_text())
        assert dig(source, record["keys"]) == record["value"], record
        assert record["shown"] in markdown, record
    # One number end to end: the RLHF model's disallowed-content rate, from its eval's own results.
    safety = json.loads((full / "evals/RLHF/world/safety-synthetic/results.json").read_text())
    rate = safety["metrics"]["disallowed_content_rate"]
    row = next(line for line in markdown.splitlines() if line.startswith("| RLHF | ") and "(n " in line
               and f"(n {rate['n']})" in line and "disallowed" not in line)
    assert f"{rate['rate']:.3f} [{rate['ci95'][0]:.3f}, {rate['ci95'][1]:.3f}] (n {rate['n']})" in row


def test_the_html_report_is_one_page_whose_images_all_load_in_chromium(full):
    chromium = Path(os.environ.get("OPENGPT4_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        pytest.skip(f"needs a Chromium at {chromium} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    page_file = full / "report" / "report.html"
    text = page_file.read_text()
    assert 'src="figures/' not in text and text.count('src="data:image/png;base64,') == len(
        re.findall(r"^!\[", (full / "report" / "report.md").read_text(), re.M)) >= 6
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert images and all(complete and width > 0 for complete, width in images), images
    assert not errors


def test_a_pipeline_killed_mid_stage_finishes_with_the_numbers_of_an_uninterrupted_run(full, tmp_path):
    out = tmp_path / "killed"
    proc = pipeline(out, wait=False)
    log = out / "logs" / "sft.log"  # killed once SFT has built its model: mid-stage, pretraining done

    def sft_running() -> bool:
        return proc.poll() is not None or (log.is_file() and "held-out" in log.read_text())

    assert wait_for(sft_running, timeout=300) and proc.poll() is None, "the pipeline never reached the sft stage"
    assert (out / STATE_DIR / "sft.started.json").is_file()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "pipeline.json").is_file() or statuses(out).get("sft") is None

    pipeline(out)
    done = statuses(out)
    assert done["data"] == done["pretrain"] == done["chat"] == "skipped", done
    assert done["sft"] in ("ran", "resumed") and done["report"] == "ran"
    assert final_numbers(out) == final_numbers(full)

    pipeline(out)  # finished: nothing to do
    assert set(statuses(out).values()) == {"skipped"}
