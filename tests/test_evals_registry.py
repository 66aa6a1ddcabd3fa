"""The eval registry: OpenAI Evals' YAML layout, user registries, class paths, clear errors."""

import subprocess
import sys

import pytest

from opengpt4.errors import OpenGPT4Error, UnknownEvalArgument, UnsupportedEvalClass
from opengpt4.evals import templates
from opengpt4.evals.api import Eval
from opengpt4.evals.registry import OPENAI_EVALS_CLASSES, PACKAGE_REGISTRY, EvalSpec, Registry, list_evals, load_class
from tests.helpers import write_registry


class Dummy:
    identity = "dummy"


MINE = """
greet:
  id: greet.dev.v0
  description: Says hello.
  metrics: [accuracy]
greet.dev.v0:
  class: evals.elsuite.basic.includes:Includes
  args:
    samples_jsonl: greet/samples.jsonl
    ignore_case: true
"""


def test_base_and_full_names_resolve_to_the_same_spec():
    reg = Registry()
    base, full = reg.get_eval("arithmetic"), reg.get_eval("arithmetic.dev.v0")
    assert base == full
    assert base.name == "arithmetic.dev.v0" and base.base == "arithmetic" and base.metrics == ["accuracy"]
    assert base.cls == "evals.elsuite.basic.match:Match" and base.registry == PACKAGE_REGISTRY


def test_unknown_eval_lists_near_matches():
    with pytest.raises(OpenGPT4Error, match=r"unknown eval 'arithmetik'; did you mean arithmetic"):
        Registry().get_eval("arithmetik")


def test_user_registry_adds_evals_and_overrides_the_package_ones_saying_so(tmp_path, capsys):
    user = write_registry(tmp_path / "user", MINE + """
arithmetic:
  id: arithmetic.dev.v9
  description: mine now
arithmetic.dev.v9:
  class: opengpt4.evals.templates:Match
  args: {samples_jsonl: arithmetic/samples.jsonl}
""", samples={"greet/samples.jsonl": [{"input": "hi", "ideal": "Hello"}]})
    reg = Registry([user])
    spec = reg.get_eval("greet")
    assert spec.registry == user and spec.description == "Says hello."
    # One stderr line per name of ours that the user registry replaces.
    assert capsys.readouterr().err == f"warning: {user / 'evals' / 'mine.yaml'} replaces opengpt4's eval 'arithmetic'\n"
    ev = reg.make_eval(spec, Dummy(), seed=3)
    assert isinstance(ev, templates.Includes) and ev.ignore_case and ev.seed == 3
    assert ev.samples_jsonl == str(user / "data" / "greet" / "samples.jsonl")
    assert ev.load_samples() == [{"input": "hi", "ideal": "Hello"}]
    # The later registry wins, and a data path it lacks falls back to the package's data.
    arith = reg.get_eval("arithmetic")
    assert arith.name == "arithmetic.dev.v9" and arith.description == "mine now"
    assert reg.make_eval(arith, Dummy()).samples_jsonl == str(PACKAGE_REGISTRY / "data" / "arithmetic" / "samples.jsonl")
    names = {row["name"]: row for row in list_evals([user])}
    assert names["greet"]["class"] == "evals.elsuite.basic.includes:Includes"
    assert names["greet"]["description"] == "Says hello." and names["greet"]["id"] == "greet.dev.v0"
    assert "greet.dev.v0" not in names  # listed under its base name


@pytest.mark.parametrize("path", sorted(OPENAI_EVALS_CLASSES))
def test_openai_evals_class_paths_load_our_templates(path):
    cls = load_class(EvalSpec(name="x", cls=path, args={}))
    assert issubclass(cls, Eval) and cls.__module__ in ("opengpt4.evals.templates", "opengpt4.evals.modelgraded")
    assert cls.__name__ == path.split(":")[1]


def test_openai_evals_classes_without_a_counterpart_are_refused_by_name():
    with pytest.raises(UnsupportedEvalClass) as e:
        load_class(EvalSpec(name="mmmu-x.val.v0", cls="evals.elsuite.mmmu.eval:MMMU", args={}))
    assert e.value.cls == "evals.elsuite.mmmu.eval:MMMU" and e.value.spec == "mmmu-x.val.v0"
    assert "Match" in e.value.supported and "ModelBasedClassify" in e.value.supported
    assert str(e.value).startswith("eval 'mmmu-x.val.v0': OpenAI Evals class evals.elsuite.mmmu.eval:MMMU cannot run")


def test_other_class_paths_import_as_is_and_must_be_evals():
    assert load_class(EvalSpec(name="x", cls="opengpt4.evals.templates:FuzzyMatch", args={})) is templates.FuzzyMatch
    with pytest.raises(OpenGPT4Error, match="not a subclass"):
        load_class(EvalSpec(name="x", cls="collections:OrderedDict", args={}))
    with pytest.raises(OpenGPT4Error, match="cannot load class"):
        load_class(EvalSpec(name="x", cls="no.such.module:Thing", args={}))
    with pytest.raises(OpenGPT4Error, match="module:Class"):
        load_class(EvalSpec(name="x", cls="justaname", args={}))


def test_modelgraded_spec_is_resolved_by_name(tmp_path):
    user = write_registry(tmp_path / "u", """
judge:
  id: judge.dev.v0
judge.dev.v0:
  class: evals.elsuite.modelgraded.classify:ModelBasedClassify
  args: {samples_jsonl: j.jsonl, modelgraded_spec: yesno, eval_type: cot_classify}
""", modelgraded="""
yesno:
  prompt: "Is {completion} a good answer to {input}?"
  choice_strings: [Yes, No]
  choice_scores: {Yes: 1.0, No: 0.0}
  input_outputs: {input: completion}
""")
    reg = Registry([user])
    grader = Dummy()
    ev = reg.make_eval(reg.get_eval("judge"), Dummy(), grader=grader)
    assert ev.mg.name == "yesno" and ev.mg.choice_strings == ["Yes", "No"] and ev.grader is grader
    assert ev.read_as == "cot_classify"  # yesno names no eval_type: the eval's reads the answers
    fact = Registry().get_modelgraded("fact")
    assert fact.choice_strings == list("ABCDE") and fact.choice_scores["C"] == 1.0
    assert fact.slots() == ["completion", "ideal", "input"]
    with pytest.raises(OpenGPT4Error, match="unknown modelgraded spec 'facts'; did you mean fact"):
        Registry().get_modelgraded("facts")


def test_registry_errors_name_bad_yaml_duplicates_dangling_ids_and_bad_args(tmp_path):
    bad = tmp_path / "bad"
    (bad / "evals").mkdir(parents=True)
    (bad / "evals" / "x.yaml").write_text("a: [unclosed\n")
    with pytest.raises(OpenGPT4Error, match=r"x.yaml: invalid YAML"):
        Registry([bad]).get_eval("a")
    dup = write_registry(tmp_path / "dup", MINE)
    (dup / "evals" / "again.yaml").write_text(MINE)
    with pytest.raises(OpenGPT4Error, match="already defined"):
        Registry([dup]).get_eval("greet")
    with pytest.raises(OpenGPT4Error, match="no such registry directory"):
        Registry([tmp_path / "nope"])
    dangling = write_registry(tmp_path / "dangling", "x: {id: x.dev.v0}\n")
    with pytest.raises(OpenGPT4Error, match="points at unknown eval 'x.dev.v0'"):
        Registry([dangling]).get_eval("x")
    wrong = write_registry(tmp_path / "wrong", "w: {class: opengpt4.evals.templates:Match, args: {samples_jsonl: s.jsonl, nope: 1}}\n"
                                               "v: {class: opengpt4.evals.templates:Match}\n")
    reg = Registry([wrong])
    with pytest.raises(UnknownEvalArgument) as e:
        reg.make_eval(reg.get_eval("w"), Dummy())
    assert e.value.spec == "w" and e.value.arguments == ["nope"] and e.value.file == str(wrong / "evals" / "mine.yaml")
    assert str(e.value) == f"{e.value.file}: eval 'w': Match takes no argument(s) 'nope'"
    with pytest.raises(OpenGPT4Error, match="bad args for v .*samples_jsonl"):
        reg.make_eval(reg.get_eval("v"), Dummy())


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "opengpt4.cli", "eval", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_eval_cli_errors_are_one_line_without_traceback(tmp_path):
    broken = tmp_path / "broken"
    (broken / "evals").mkdir(parents=True)
    (broken / "evals" / "b.yaml").write_text("b: {id: b.v0\n")
    nodata = write_registry(tmp_path / "nodata", MINE)
    odd = write_registry(tmp_path / "odd", "extra: {class: evals.elsuite.basic.match:Match, args: {samples_jsonl: s.jsonl, "
                                           "temperature: 0.5}}\nmmmu: {class: evals.elsuite.mmmu.eval:MMMU}\n")
    cases = [(("run", "arithmetc", "--model", "x"), "unknown eval 'arithmetc'; did you mean arithmetic"),
             (("run", "b", "--model", "x", "--registry", str(broken)), "invalid YAML"),
             (("run", "greet", "--model", "http://127.0.0.1:9/v1#m", "--registry", str(nodata)), "greet/samples.jsonl: file not found"),
             (("run", "arithmetic", "--model", str(tmp_path / "no-model")), "no such checkpoint directory"),
             (("run", "arithmetic", "--model", "http://127.0.0.1:9/v1"), "needs the model after '#'"),
             (("run", "extra", "--model", "http://127.0.0.1:9/v1#m", "--registry", str(odd)), "Match takes no argument(s) 'temperature'"),
             (("run", "mmmu", "--model", "http://127.0.0.1:9/v1#m", "--registry", str(odd)), "class evals.elsuite.mmmu.eval:MMMU cannot run")]
    for args, message in cases:
        r = cli(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_eval_list_shows_package_and_user_evals_with_descriptions(tmp_path):
    user = write_registry(tmp_path / "user", MINE)
    r = cli("list", "--registry", str(user))
    assert r.returncode == 0, r.stderr
    assert "greet.dev.v0" in r.stdout and "Says hello." in r.stdout and "arithmetic.dev.v0" in r.stdout
