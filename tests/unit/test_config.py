"""Workflow files and overrides: every bad input is one exit-2 message naming the file, the key path
and what was expected, before Ray starts. Driven through ``hdsu_ray.cli.main`` and
``hdsu_ray.checks.load_workflow`` (which parses with ``config.loader.parse_workflow``, then makes the
cross-section checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hdsu_ray.checks import load_workflow
from hdsu_ray.cli import main
from hdsu_ray.config.loader import parse_override
from hdsu_ray.data.select import select_data
from hdsu_ray.errors import WorkflowError
from hdsu_ray.methods import METHODS

REPO = Path(__file__).resolve().parents[2]

WORKFLOWS = sorted((REPO / "workflows").glob("*.yaml"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(capsys, argv, *needles: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("hdsu-ray: error: "), err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


# --- schema: unknown keys, types, bounds -----------------------------------------------------------

def test_unknown_key_names_file_key_and_expected(capsys, write_workflow):
    path = write_workflow({"unlearn.lrr": 0.1})
    err = assert_bad_input(capsys, ["validate", path], str(path), "unlearn.lrr", "unknown key", "expected one of")
    assert "lr" in err.split("expected", 1)[1] and "methods" in err.split("expected", 1)[1]


def test_unknown_key_through_override(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "unlearn.lrr=0.1"],
                     "workflows/smoke.yaml", "unlearn.lrr", "unknown key")


def test_wrong_type_names_key_and_a_number(capsys, write_workflow):
    path = write_workflow({"unlearn.lr": "fast"})
    assert_bad_input(capsys, ["validate", path], str(path), "unlearn.lr", "a number", "'fast'")


@pytest.mark.parametrize("override, key, bound", [
    ("unlearn.param_budget=0", "unlearn.param_budget", "> 0.0"),
    ("unlearn.param_budget=1.5", "unlearn.param_budget", "<= 1.0"),
    ("unlearn.projection.rank=-1", "unlearn.projection.rank", ">= 1"),
    ("learn.epochs=0", "learn.epochs", ">= 1"),
])
def test_out_of_range_names_key_and_bound(capsys, override, key, bound):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", override], key, bound)


def test_bool_is_not_an_integer(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "unlearn.steps=true"],
                     "unlearn.steps", "an integer")


def test_error_inside_an_optional_section_names_the_exact_key(capsys):
    # sweep is optional (a section or null); the error must point into it, not at "sweep".
    err = assert_bad_input(capsys, ["plan", "workflows/mhqa_sweep.yaml", "sweep.cache=bogus"],
                           "sweep.cache: got 'bogus'", "'shared', 'per_trial', 'none'")
    assert "mapping" not in err


def test_yaml_boolean_word_for_a_choice_says_to_quote_it(capsys):
    # Unquoted `off` is YAML for false: say so instead of only "got False".
    assert_bad_input(capsys, ["plan", "workflows/mhqa_sweep.yaml", "sweep.cache=off"],
                     "sweep.cache: got False", "quote")


def test_missing_required_key(capsys, write_workflow):
    path = write_workflow(drop=["data.source"])
    assert_bad_input(capsys, ["validate", path], str(path), "data.source", "missing required key")


def test_tiny_heads_must_divide_width(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "model.tiny.num_heads=3"],
                     "model.tiny.hidden_size", "num_heads")


def test_lora_budget_is_accepted(capsys, write_workflow):
    """smoke's tiny model has at most 147,776 parameters; a rank-4 adapter on a 64 x 64 projection
    costs 512 entries, so 1 % fits (at rank 4) and so does the default 0.1 % at rank 1 (128)."""
    path = write_workflow({"unlearn.budget": "lora", "unlearn.param_budget": 0.01,
                           "unlearn.methods": [{"name": "hdsu"}, {"name": "ga", "budget": "fisher"}]})
    code, out, err = run_cli(capsys, "validate", path)
    assert code == 0, err
    wf = load_workflow("workflows/smoke.yaml", ["unlearn.methods=[{name: graddiff, budget: lora}]",
                                                "unlearn.lora_rank=1", "unlearn.lora_targets=[q_proj, v_proj]"])
    assert wf.unlearn.lora_targets == ["q_proj", "v_proj"]
    code, out, err = run_cli(capsys, "plan", "workflows/smoke.yaml", "unlearn.methods=[{name: hdsu, budget: lora}]",
                             "unlearn.lora_rank=1")
    assert code == 0 and "budget lora 0.001" in out, err


@pytest.mark.parametrize("overrides, needles", [
    # the section's budget, then a method's own: the key is the one that set it
    (["unlearn.budget=lora", "unlearn.methods=[{name: hdsu}]"], ["unlearn.param_budget", "allows 147 trainable entries",
                               "has 512", "a budget >= 0.00347 or a smaller unlearn.lora_rank"]),
    (["unlearn.methods=[{name: ga}, {name: npo, budget: lora, param_budget: 0.002}]"],
     ["unlearn.methods[1].param_budget", "allows 295 trainable entries"]),
    (["unlearn.budget=lora", "unlearn.param_budget=0.01", "unlearn.lora_targets=[lm_head_x]"],
     ["unlearn.lora_targets", "no linear module matches"]),
    (["unlearn.lora_targets=[]"], ["unlearn.lora_targets", "a non-empty list"]),
    (["unlearn.budget=lora", "unlearn.param_budget=0.01", "unlearn.engine=deepspeed", "unlearn.zero_stage=3"],
     ["unlearn.zero_stage", "ZeRO-3", "0, 1 or 2"]),
])
def test_lora_budget_errors_name_the_key(capsys, overrides, needles):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", *overrides], "workflows/smoke.yaml", *needles)


# --- files: YAML syntax, data, model ---------------------------------------------------------------

def test_malformed_yaml_names_line(capsys, write_workflow):
    path = write_workflow(text="name: bad\ndata:\n  source: mhqa\n  path: [unclosed\nseed: 0\n")
    err = assert_bad_input(capsys, ["validate", path], str(path), "not valid YAML")
    assert "line 5" in err or "line 4" in err, err


def test_malformed_yaml_line_is_the_offending_one(capsys, write_workflow):
    path = write_workflow(text="name: x\nseed: 0\nunlearn:\n  lr: 1\n   steps: 2\n")
    assert_bad_input(capsys, ["validate", path], "line 5")


def test_missing_workflow_file(capsys, tmp_path):
    assert_bad_input(capsys, ["validate", tmp_path / "absent.yaml"], "absent.yaml", "not found")


def test_missing_data_file_names_data_path(capsys):
    err = assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "data.path=nope.csv"],
                           "data.path", "nope.csv")
    assert "HDSU_DATA_ROOT" in err


def test_unreadable_hf_model_path(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "model.kind=hf", "model.path=/nonexistent"],
                     "model.path", "/nonexistent")


def test_hf_model_needs_a_path(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "model.kind=hf"], "model.path")


# --- references and overrides ----------------------------------------------------------------------

def test_reference_resolves():
    wf = load_workflow("workflows/smoke.yaml")
    assert wf.output_dir == "runs/smoke"
    assert load_workflow("workflows/smoke.yaml", ["name=other"]).output_dir == "runs/other"


def test_lone_reference_keeps_type(write_workflow):
    wf = load_workflow(write_workflow({"learn.epochs": 5, "unlearn.steps": "${learn.epochs}"}))
    assert wf.unlearn.steps == 5 and isinstance(wf.unlearn.steps, int)


def test_reference_to_missing_key_is_an_error(capsys, write_workflow):
    path = write_workflow({"output_dir": "runs/${nope.key}"})
    assert_bad_input(capsys, ["validate", path], str(path), "output_dir", "${nope.key}", "names no key")


def test_reference_cycle_is_an_error(capsys, write_workflow):
    path = write_workflow({"name": "${output_dir}", "output_dir": "runs/${name}"})
    assert_bad_input(capsys, ["validate", path], "cycle")


def test_overrides_nested_list_and_numbers():
    wf = load_workflow("workflows/smoke.yaml", [
        "model.tiny.hidden_size=32", "unlearn.methods.0.lr=0.5", "unlearn.lr=1e-5", "learn.lr=2.5E-4",
        "data.forget.values=[Anxiety, Trauma]", "data.retain.values=[Depression]", "cluster.address=",
    ])
    assert wf.model.tiny.hidden_size == 32
    assert wf.unlearn.methods[0] == {"name": "ga", "budget": "full", "lr": 0.5}
    assert wf.unlearn.methods[1] == {"name": "graddiff", "param_budget": 0.01}
    assert wf.unlearn.lr == 1e-5 and type(wf.unlearn.lr) is float
    assert wf.learn.lr == 2.5e-4 and type(wf.learn.lr) is float
    assert wf.data.forget.values == ["Anxiety", "Trauma"]
    assert wf.cluster.address is None


@pytest.mark.parametrize("text, keys, value", [
    ("unlearn.lr=1e-5", ["unlearn", "lr"], 1e-5),
    ("a.b=-3E+2", ["a", "b"], -300.0),
    ("a=1", ["a"], 1),
    ("a=fast", ["a"], "fast"),
    ("a.0.b=x=y", ["a", "0", "b"], "x=y"),
])
def test_parse_override(text, keys, value):
    got_keys, got = parse_override(text)
    assert got_keys == keys and got == value and type(got) is type(value)


@pytest.mark.parametrize("override, needle", [
    ("unlearn.lr", "no '='"),
    ("unlearn..lr=1", "not a dotted key"),
    ("unlearn.methods.5.lr=1", "unlearn.methods.5"),
])
def test_bad_override(capsys, override, needle):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", override], needle)


# --- data root precedence ----------------------------------------------------------------------------

def test_data_root_precedence(monkeypatch, tmp_path, data_root):
    cwd = tmp_path / "proj" / "repo"
    cwd.mkdir(parents=True)
    wf_path = REPO / "workflows" / "smoke.yaml"
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HDSU_DATA_ROOT", raising=False)
    default = load_workflow(wf_path, check_files=False)
    assert Path(default.data_root) == (tmp_path / "proj" / "shared" / "data").resolve()

    monkeypatch.setenv("HDSU_DATA_ROOT", str(tmp_path / "env_root"))
    assert Path(load_workflow(wf_path, check_files=False).data_root) == tmp_path / "env_root"

    cli = load_workflow(wf_path, [f"data_root={tmp_path / 'cli_root'}"], check_files=False)
    assert Path(cli.data_root) == tmp_path / "cli_root"

    # The real files are found through whichever root wins.
    monkeypatch.setenv("HDSU_DATA_ROOT", str(data_root))
    assert load_workflow(wf_path).data_root == str(data_root)
    monkeypatch.setenv("HDSU_DATA_ROOT", str(tmp_path / "env_root"))
    assert load_workflow(wf_path, [f"data_root={data_root}"]).data_root == str(data_root)
    with pytest.raises(WorkflowError) as exc:
        load_workflow(wf_path)
    assert exc.value.key == "data.path" and "env_root" in str(exc.value)


# --- selection errors ----------------------------------------------------------------------------------

def _selection_error(path) -> WorkflowError:
    """The selection error of ``path``: from validate (load_workflow selects the rows), and the same
    one from select_data at run time."""
    with pytest.raises(WorkflowError) as at_validate:
        load_workflow(path)
    with pytest.raises(WorkflowError) as at_run:
        select_data(load_workflow(path, check_files=False), str(path))
    assert str(at_validate.value) == str(at_run.value)
    return at_validate.value


def test_empty_forget_selection(write_workflow):
    err = _selection_error(write_workflow({"data.forget.values": ["No Such Topic"]}))
    assert err.key == "data.forget.values"
    assert "selects no rows" in str(err) and "topic" in str(err)


def test_empty_forget_selection_through_run_writes_nothing(capsys, tmp_path):
    out_dir = tmp_path / "out"
    assert_bad_input(capsys, ["run", "workflows/smoke.yaml", "data.forget.values=[No Such Topic]",
                              f"cache_dir={tmp_path / 'cache'}", "--output-dir", out_dir],
                     "data.forget.values", "selects no rows")
    assert not (out_dir / "results.json").exists()
    assert not out_dir.exists()
    assert not (tmp_path / "cache").exists()


def test_unknown_selection_field(write_workflow):
    err = _selection_error(write_workflow({"data.forget.field": "subject_name"}))
    assert err.key == "data.forget.field" and "topic" in err.expected


def test_forget_retain_overlap_names_retain(write_workflow):
    err = _selection_error(write_workflow({"data.retain.values": ["Anxiety", "Trauma"]}))
    assert err.key == "data.retain" and "overlap" in str(err)


def test_empty_values_list(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "data.forget.values=[]"], "data.forget.values")


# --- methods -------------------------------------------------------------------------------------------

def test_unknown_method_lists_valid_names(capsys, write_workflow):
    path = write_workflow({"unlearn.methods.0.name": "gaa"})
    err = assert_bad_input(capsys, ["validate", path], str(path), "unlearn.methods[0].name", "'gaa'")
    assert {"ga", "graddiff"} <= set(METHODS)
    for name in METHODS:
        assert name in err.split("expected", 1)[1]


def test_unknown_method_param(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "unlearn.methods.1.bogus=1"],
                     "unlearn.methods[1].bogus", "unknown key")


def test_duplicate_method_labels(capsys):
    assert_bad_input(capsys, ["plan", "workflows/smoke.yaml", "unlearn.methods.1.name=ga"],
                     "unlearn.methods[1].label")


# --- concepts and method weights (checked through the annotate stage's ConceptSpec) -------------------

@pytest.mark.parametrize("override, needles", [
    ("concepts.targets=[preset:no-such-list]", ["concepts.targets[0]", "unknown target preset", "mhqa-anxiety"]),
    ("concepts.targets=[]", ["concepts.targets", "non-empty list"]),
    ("concepts.preserve_levels=[1, 7]", ["concepts.preserve_levels", "levels among 1-4"]),
    ("concepts.weights={targeted: {7: 1.0}}", ["concepts.weights.targeted", "unknown level 7", "levels 1-4"]),
    ("concepts.weights={neutral: -0.5}", ["concepts.weights.neutral", "a number >= 0"]),
    ("concepts.weights={bogus: 1}", ["concepts.weights", "unknown keys ['bogus']"]),
    ("unlearn.methods=[{name: hdsu, weights: {preserve: {1: oops}}}]",
     ["unlearn.methods[0].weights.preserve.1", "a number >= 0"]),
])
def test_concept_errors_name_the_key_before_anything_runs(capsys, override, needles):
    assert_bad_input(capsys, ["plan", "workflows/mhqa.yaml", override], "workflows/mhqa.yaml", *needles)


# --- sweep space: keys are the swept method's parameters; values fit their type and bounds -------------

def sweep_file(tmp_path: Path, space: dict, method: dict | None = None) -> Path:
    import yaml

    data = yaml.safe_load((REPO / "workflows" / "mhqa_sweep.yaml").read_text())
    data["sweep"]["space"] = space
    if method is not None:
        data["sweep"]["method"] = method
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_sweep_space_accepts_method_params_rank_and_weights(tmp_path):
    space = {"projection.rank": {"type": "int", "low": 2, "high": 8}, "beta": {"type": "float", "low": 0.05, "high": 1},
             "steps": {"type": "int", "low": 5, "high": 20}, "forget_loss": {"type": "choice", "values": ["ga", "npo"]},
             "margin": {"type": "choice", "values": [0, 0.5]}, "weights.targeted.3": {"type": "float", "low": 0, "high": 2},
             "weights.neutral": {"type": "choice", "values": [0.0, 0.1]}}
    wf = load_workflow(sweep_file(tmp_path, space), check_files=False)
    assert set(wf.sweep.space) == set(space)


@pytest.mark.parametrize("space, method, needles", [
    ({"bogus": {"type": "float", "low": 0.1, "high": 1}}, None,
     ["sweep.space.bogus", "unknown search key", "a parameter of method 'hdsu'", "anchor_weight", "projection.rank"]),
    # beta is a parameter of hdsu and npo, not of graddiff: an error now, not when a trial runs
    ({"beta": {"type": "float", "low": 0.1, "high": 1}}, {"name": "graddiff"}, ["sweep.space.beta", "'graddiff'"]),
    ({"weights.neutral": {"type": "float", "low": 0, "high": 1}}, {"name": "npo"},
     ["sweep.space.weights.neutral", "has no concept weights"]),
    ({"weights.neutral.3": {"type": "float", "low": 0, "high": 1}}, None, ["sweep.space.weights.neutral.3", "unknown weight key"]),
    ({"weights.targeted.7": {"type": "float", "low": 0, "high": 1}}, None, ["sweep.space.weights.targeted.7", "levels 1-4"]),
    ({"weights.preserve": {"type": "float", "low": -1, "high": 1}}, None, ["sweep.space.weights.preserve.low", ">= 0"]),
    ({"lr": {"type": "float", "low": 0, "high": 0.1}}, None, ["sweep.space.lr.low", "got 0.0", "> 0.0"]),
    ({"param_budget": {"type": "choice", "values": [0.001, 2]}}, None, ["sweep.space.param_budget.values[1]", "<= 1.0"]),
    ({"steps": {"type": "float", "low": 5, "high": 20}}, None, ["sweep.space.steps.type", "type: int or choice"]),
    ({"steps": {"type": "int", "low": 5.5, "high": 20}}, None, ["sweep.space.steps.low", "a whole number"]),
    ({"forget_loss": {"type": "choice", "values": ["ga", "bogus"]}}, None,
     ["sweep.space.forget_loss.values[1]", "'bogus'", "'contrast'"]),
    ({"forget_loss": {"type": "int", "low": 1, "high": 2}}, None, ["sweep.space.forget_loss.type", "type: choice"]),
    ({"projection.rank": {"type": "choice", "values": [8, 0]}}, None, ["sweep.space.projection.rank.values[1]", ">= 1"]),
])
def test_sweep_space_errors_name_the_dimension(capsys, tmp_path, space, method, needles):
    path = sweep_file(tmp_path, space, method)
    assert_bad_input(capsys, ["validate", path], str(path), *needles)


# --- layers: parse_workflow (config) vs checks.load_workflow ------------------------------------------

def test_parse_workflow_leaves_cross_section_checks_to_checks(write_workflow):
    from hdsu_ray.config.loader import parse_workflow

    path = write_workflow({"unlearn.methods": [{"name": "no-such-method"}]})
    assert parse_workflow(path).unlearn.methods == [{"name": "no-such-method"}]  # config knows no registry
    with pytest.raises(WorkflowError) as exc:
        load_workflow(path)
    assert exc.value.key == "unlearn.methods[0].name" and exc.value.file == str(path)


def test_old_loader_name_is_a_deprecated_alias_of_parse_workflow():
    from hdsu_ray.config import loader

    with pytest.warns(DeprecationWarning, match="hdsu_ray.checks.load_workflow"):
        old = loader.load_workflow("workflows/smoke.yaml", ["name=x"], check_files=False)
    assert old == loader.parse_workflow("workflows/smoke.yaml", ["name=x"], check_files=False)


def test_data_root_default_has_one_home(monkeypatch, tmp_path):
    from hdsu_ray.config import loader, paths
    from hdsu_ray.hierarchy import build

    monkeypatch.delenv(paths.DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert build.data_root() == paths.resolve_data_root() == (tmp_path / paths.DEFAULT_DATA_ROOT).resolve()
    monkeypatch.setenv(paths.DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert build.data_root() == loader.resolve_data_root(None, None) == tmp_path / "elsewhere"


# --- validate and plan ---------------------------------------------------------------------------------

def test_every_shipped_workflow_is_found():
    assert REPO / "workflows" / "smoke.yaml" in WORKFLOWS


# Workflows whose `validate` cannot succeed on this machine, with the reason (see the final report).
VALIDATE_XFAIL: dict[str, str] = {}


def _validate_params():
    return [pytest.param(p, id=p.name, marks=[pytest.mark.xfail(strict=True, reason=VALIDATE_XFAIL[p.name])]
                         if p.name in VALIDATE_XFAIL else []) for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflow_schema(path):
    """Keys, types, bounds, references and method specs of every shipped workflow, without file checks."""
    wf = load_workflow(path, check_files=False)
    assert "${" not in wf.output_dir and wf.name


@pytest.mark.parametrize("path", _validate_params())
def test_validate_shipped_workflow(capsys, path):
    code, out, err = run_cli(capsys, "validate", path.relative_to(REPO))
    assert code == 0, err
    assert out.strip() == f"{path.relative_to(REPO)}: ok"


def test_validate_reports_every_bad_file_among_several(capsys, write_workflow):
    bad = write_workflow({"unlearn.lr": "fast"}, name="bad.yaml")
    worse = write_workflow({"unlearn.methods.0.name": "gaa"}, name="worse.yaml")
    code, out, err = run_cli(capsys, "validate", bad, "workflows/smoke.yaml", worse)
    assert code == 2 and out.splitlines() == ["workflows/smoke.yaml: ok"]
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("hdsu-ray: error: ") for line in lines)
    assert f"{bad}: unlearn.lr" in lines[0] and f"{worse}: unlearn.methods[0].name" in lines[1]


def test_version_and_help_on_every_argument(capsys):
    import argparse

    from hdsu_ray import __version__
    from hdsu_ray.cli import _parser

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"hdsu-ray {__version__}"
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.help, f"hdsu-ray {name}: argument {action.dest} has no help"


def test_plan_prints_stages_in_order(capsys):
    code, out, err = run_cli(capsys, "plan", "workflows/smoke.yaml")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("workflow smoke: data mhqa")
    stages = [next(i for i, line in enumerate(lines) if needle in line)
              for needle in ("learn    3 epochs", "evaluate before", "unlearn  ga:", "unlearn  graddiff:",
                             "runs/smoke/results.json")]
    assert stages == sorted(stages)
    assert "budget full" in lines[stages[2]] and "fisher 0.01" in lines[stages[3]]


def test_plan_keys_lists_every_section(capsys):
    code, out, _ = run_cli(capsys, "plan", "workflows/smoke.yaml", "--keys")
    assert code == 0
    for key in ("data.forget.values", "unlearn.param_budget", "unlearn.projection.rank", "cluster.address",
                "learn.epochs", "evaluate.normalise", "model.tiny.hidden_size"):
        assert f"  {key} " in out


def test_selection_error_through_run_names_the_workflow_file(capsys, tmp_path):
    assert_bad_input(capsys, ["run", "workflows/smoke.yaml", "data.forget.values=[No Such Topic]",
                              "--output-dir", tmp_path / "out"], "workflows/smoke.yaml", "data.forget.values")


def test_plan_keys_lists_optional_sections(capsys):
    code, out, _ = run_cli(capsys, "plan", "workflows/smoke.yaml", "--keys")
    assert code == 0
    for key in ("sweep.num_samples", "sweep.searcher", "concepts.targets", "concepts.preserve_levels"):
        assert f"  {key} " in out


def test_default_output_dir_is_resolved(write_workflow):
    assert load_workflow(write_workflow(drop=["output_dir"])).output_dir == "runs/smoke"


# --- safety and the cluster address ----------------------------------------------------------------

def test_yaml_cannot_construct_python_objects(capsys, tmp_path):
    """A workflow is data: a python tag is refused by the YAML reader, nothing is imported or run."""
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(SMOKE_TEXT() + f"\nextra: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_bad_input(capsys, ["validate", bad], str(bad), "not valid YAML")
    assert not marker.exists()


def test_method_names_are_registry_keys_not_import_paths(capsys, write_workflow):
    path = write_workflow({"unlearn.methods": [{"name": "os.system"}]})
    assert_bad_input(capsys, ["validate", path], "unlearn.methods[0].name", "one of")


def test_unreachable_cluster_address_fails_fast(capsys, tmp_path):
    import time
    start = time.perf_counter()
    assert_bad_input(capsys, ["run", "workflows/smoke.yaml", "cluster.address=127.0.0.1:1",
                              "--output-dir", tmp_path / "out"], "cluster.address", "no Ray cluster")
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out" / "results.json").exists()


def SMOKE_TEXT() -> str:
    return (REPO / "workflows" / "smoke.yaml").read_text()


# --- thresholds and shared sweep bundles (checked before anything runs) ----------------------------

@pytest.mark.parametrize("override, needles", [
    ("evaluate.thresholds={forgett_rate: 0.8}", ["evaluate.thresholds.forgett_rate", "unknown metric"]),
    ("evaluate.thresholds={mia_auc_min_k: -0.1}", ["evaluate.thresholds.mia_auc_min_k", "distance to 0.5"]),
])
def test_threshold_names_and_bounds_are_checked(capsys, override, needles):
    assert_bad_input(capsys, ["run", "workflows/smoke.yaml", override], *needles)


def test_target_threshold_reads_as_a_distance():
    wf = load_workflow("workflows/smoke.yaml", ["evaluate.thresholds={mia_auc_min_k: 0.1, forget_rate: 0.5}"])
    from hdsu_ray.eval.suite import check_thresholds
    got = check_thresholds({"mia_auc_min_k": 0.3, "forget_rate": 0.6}, wf.evaluate.thresholds)
    assert got["mia_auc_min_k"]["pass"] is False and got["mia_auc_min_k"]["op"] == "|x - t| <="  # over-forgetting
    assert got["forget_rate"]["pass"] is True


def test_a_range_over_a_bundle_key_needs_a_choice_with_the_shared_cache(capsys):
    sweep = "sweep={method: {name: graddiff}, space: {row_cap: {type: int, low: 1, high: 8}}}"
    assert_bad_input(capsys, ["run", "workflows/smoke.yaml", sweep], "sweep.space.row_cap.type", "choice")
    load_workflow("workflows/smoke.yaml", [sweep.replace("{type: int, low: 1, high: 8}",
                                                          "{type: choice, values: [1, 8]}")])


# --- strict YAML: merge keys still work; expansion is bounded and fast -------------------------------

def test_merge_keys_and_aliases_within_the_bound_still_work():
    from hdsu_ray.config.reader import load_yaml_text

    # A key beside "<<" overrides the merged one on purpose: not a duplicate.
    got = load_yaml_text("base: &b {steps: 4, lr: 1.0e-3}\nunlearn: {<<: *b, lr: 2.0e-3}\nm: [*b, *b]\n")
    assert got["unlearn"] == {"steps": 4, "lr": 2.0e-3} and got["m"] == [got["base"]] * 2


def test_alias_bomb_fails_in_well_under_a_second():
    import time

    from hdsu_ray.config.reader import load_yaml_text
    text = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
    start = time.process_time()
    with pytest.raises(WorkflowError, match="expands to more than"):
        load_yaml_text(text, file="bomb.yaml")
    assert time.process_time() - start < 1.0  # CPU time: 9**8 values were never built


def test_reference_bomb_fails_in_well_under_a_second(write_workflow):
    import time

    refs = "".join(f"r{i}: \"{'${r%d}' % (i - 1) * 9}\"\n" for i in range(1, 9))
    path = write_workflow(text=SMOKE_TEXT() + "r0: lol\n" + refs)
    start = time.process_time()
    with pytest.raises(WorkflowError, match="references expand too far"):
        load_workflow(path)
    assert time.process_time() - start < 1.0


def test_override_text_that_is_not_yaml_is_a_string():
    assert parse_override("name=a: b: c") == (["name"], "a: b: c")
    assert parse_override("x=[1, 2") == (["x"], "[1, 2")
