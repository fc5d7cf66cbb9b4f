"""Workflow files and overrides: every bad input is one exit-2 message naming the file, the key path
and what was expected, before Ray starts. Driven through ``hdsu_ray.cli.main`` and ``load_workflow``."""

from __future__ import annotations

from pathlib import Path

import pytest

from hdsu_ray.cli import main
from hdsu_ray.config.loader import load_workflow, parse_override
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

def test_empty_forget_selection(write_workflow):
    wf = load_workflow(write_workflow({"data.forget.values": ["No Such Topic"]}))
    with pytest.raises(WorkflowError) as exc:
        select_data(wf)
    assert exc.value.key == "data.forget.values"
    assert "selects no rows" in str(exc.value) and "topic" in str(exc.value)


def test_empty_forget_selection_through_run_writes_nothing(capsys, tmp_path):
    out_dir = tmp_path / "out"
    assert_bad_input(capsys, ["run", "workflows/smoke.yaml", "data.forget.values=[No Such Topic]",
                              f"cache_dir={tmp_path / 'cache'}", "--output-dir", out_dir],
                     "data.forget.values", "selects no rows")
    assert not (out_dir / "results.json").exists()
    assert not out_dir.exists()
    assert not (tmp_path / "cache").exists()


def test_unknown_selection_field(write_workflow):
    wf = load_workflow(write_workflow({"data.forget.field": "subject_name"}))
    with pytest.raises(WorkflowError) as exc:
        select_data(wf)
    assert exc.value.key == "data.forget.field" and "topic" in exc.value.expected


def test_forget_retain_overlap_names_retain(write_workflow):
    wf = load_workflow(write_workflow({"data.retain.values": ["Anxiety", "Trauma"]}))
    with pytest.raises(WorkflowError) as exc:
        select_data(wf)
    assert exc.value.key == "data.retain" and "overlap" in str(exc.value)


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


def test_validate_reports_the_bad_file_among_several(capsys, write_workflow):
    bad = write_workflow({"unlearn.lr": "fast"}, name="bad.yaml")
    code, out, err = run_cli(capsys, "validate", "workflows/smoke.yaml", bad)
    assert code == 2 and "workflows/smoke.yaml: ok" in out and str(bad) in err


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
