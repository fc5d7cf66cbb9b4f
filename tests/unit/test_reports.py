"""Sweep report and method comparison, from hand-written sweep.json / results.json (no Ray, no model)."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from hdsu_ray.report.comparison import write_comparison
from hdsu_ray.report.sweep import rebuild, write_report
from hdsu_ray.report.sweep_analysis import importances
from hdsu_ray.sweep.space import trial_spec

CONCEPT_WEIGHTS = {"targeted": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, "preserve": {1: 0.0, 2: 0.0}, "neutral": 0.1}

# The sweep's workflow as ``to_dict(workflow)`` writes it (then through JSON: level keys become strings).
CONFIG = {
    "name": "mhqa-sweep", "seed": 0, "output_dir": "runs/mhqa-sweep", "data_root": "/data/shared",
    "cache_dir": ".cache/hdsu",
    "data": {"source": "mhqa", "path": "mhqa/mhqa_gold.csv",
             "forget": {"field": "topic", "values": ["Anxiety"], "exclude": False, "limit": 16},
             "retain": {"field": "topic", "values": ["Depression"], "exclude": False, "limit": 32},
             "seed": 0, "holdout_fraction": 0.0, "fluency_path": None},
    "model": {"kind": "tiny", "path": None, "tokenizer": "train",
              "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                       "vocab_size": 1024, "max_len": 96}, "dtype": "float32"},
    "cluster": {"address": None, "num_workers": 1, "cpus_per_worker": 1.0, "use_gpu": False, "num_cpus": None,
                "max_failures": 2},
    "learn": {"epochs": 3, "lr": 0.003, "batch_size": 16, "warmup_ratio": 0.05, "weight_decay": 0.0,
              "loss_on": "answer", "cache": True},
    "evaluate": {"normalise": "mean", "batch_size": 64, "every": 5, "sample": 32, "stop_at_forget_accuracy": None,
                 "select": "last", "thresholds": {"forget_rate": 0.7}},
    "unlearn": {"methods": [{"name": "graddiff"}], "steps": 20, "lr": 0.0001, "batch_size": 8,
                "retain_weight": 1.0, "param_budget": 0.001, "budget": "fisher", "fisher_samples": 64,
                "fisher_eps": 1e-08, "lora_rank": 4, "anchor_topk": 32, "engine": "torch", "zero_stage": 0,
                "deepspeed_config": None, "checkpoint_every": 10,
                "projection": {"rank": 16, "method": "svd", "energy": None, "metric": "euclidean",
                               "basis_samples": 32, "basis_batch": 4, "refresh_every": 0}},
    "sweep": {"method": {"name": "hdsu"},
              "space": {"projection.rank": {"type": "choice", "low": None, "high": None, "log": False,
                                            "values": [4, 8, 16]},
                        "lr": {"type": "float", "low": 0.0001, "high": 0.01, "log": True, "values": None},
                        "weights.neutral": {"type": "float", "low": 0.0, "high": 0.5, "log": False,
                                            "values": None}},
              "searcher": "nsga2", "objectives": ["forget_rate", "knowledge_preservation"], "scheduler": "none",
              "grace_evals": 2, "num_samples": 5, "max_concurrent": 2, "seed": 0, "cache": "shared"},
    "concepts": {"targets": ["F03.080"], "preserve_levels": [1, 2], "weights": CONCEPT_WEIGHTS,
                 "levels_file": None, "synonyms_file": None, "parallelism": None, "enabled": True},
}

# (trial id, status, rank, lr, neutral, forget_rate, knowledge_preservation). Hand-checked front:
# T1 (0.90, 0.70), T2 (0.80, 0.85), T3 (0.60, 0.95); T4 (0.75, 0.80) is dominated by T2; T5 errored.
# Harmonic means: T1 0.788, T2 0.824, T3 0.736 -> best T2.
TRIALS = [("3c1f0_00000", "COMPLETE", 16, 0.0065, 0.05, 0.90, 0.70),
          ("3c1f0_00001", "COMPLETE", 8, 0.0021, 0.12, 0.80, 0.85),
          ("3c1f0_00002", "COMPLETE", 4, 0.0004, 0.31, 0.60, 0.95),
          ("3c1f0_00003", "COMPLETE", 16, 0.0012, 0.44, 0.75, 0.80),
          ("3c1f0_00004", "ERROR", 8, 0.0093, 0.02, None, None)]
DOMINATED, BEST, ERRORED = "3c1f0_00003", "3c1f0_00001", "3c1f0_00004"


def curve(fr: float | None, steps: int, every: int = 5) -> list[dict]:
    out = []
    for s in range(steps):
        rec = {"step": s, "loss_forget": 2.0 + 0.35 * s * (fr or 0.5), "loss_retain": 1.6 + 0.01 * s}
        if (s + 1) % every == 0:
            fa = 0.95 - (0.95 - (1 - (fr or 0.5))) * (s + 1) / steps
            rec.update(eval_forget_accuracy=fa, eval_retain_accuracy=0.7 - 0.02 * (s + 1) / steps, objective=0.5)
        out.append(rec)
    return out


def sweep_summary(trial_rows=TRIALS) -> dict:
    trials = []
    for tid, status, rank, lr, neutral, fr, kp in trial_rows:
        trials.append({"trial_id": tid, "params": {"projection.rank": rank, "lr": lr, "weights.neutral": neutral},
                       "status": status, "forget_rate": fr, "knowledge_preservation": kp,
                       "after_forget_accuracy": None if fr is None else 1 - fr,
                       "after_retain_accuracy": None if kp is None else round(0.75 * kp, 4),
                       "objective": None, "curve": curve(fr, 20 if status == "COMPLETE" else 7),
                       "iterations": None if status == "ERROR" else 4})
    done = [t for t in trials if t["status"] == "COMPLETE"]
    best = next(t for t in done if t["trial_id"] == BEST) if any(t["trial_id"] == BEST for t in done) else done[0]
    spec, rank = trial_spec({"name": "hdsu"}, CONCEPT_WEIGHTS, best["params"])
    summary = {"workflow": "mhqa-sweep", "objectives": ["forget_rate", "knowledge_preservation"],
               "searcher": "nsga2", "scheduler": "none", "num_trials": len(trials), "completed": len(done),
               "wall_time_s": 412.3, "cache": "shared", "basis_computations": 1, "mask_computations": 1,
               "before": {"forget": 0.9375, "retain": 0.75}, "trials": trials,
               "pareto": [t["trial_id"] for t in done if t["trial_id"] != DOMINATED],
               "best": {"trial_id": best["trial_id"], "params": best["params"], "method_spec": spec,
                        "projection_rank": rank, "forget_rate": best["forget_rate"],
                        "knowledge_preservation": best["knowledge_preservation"],
                        "rule": "Pareto point with the highest harmonic mean of the objectives"},
               "config": copy.deepcopy(CONFIG), "timings": {"sweep": 410.0}}
    return json.loads(json.dumps(summary))  # as read back from disk: int dict keys become strings


def write_sweep(d: Path, summary: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "sweep.json").write_text(json.dumps(summary, indent=2))
    return d


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    d = write_sweep(tmp_path_factory.mktemp("sweep"), sweep_summary())
    rebuild(d)  # what ``hdsu-ray report DIR`` calls
    return d


def md_table_rows(md: str, first_header: str) -> list[list[str]]:
    """Body rows of the markdown table whose first header cell is ``first_header``."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split(" | ")])
    return rows


# --------------------------------------------------------------------------- sweep report

def test_report_files_written(sweep_dir):
    names = {"report.md", "report.html", "pareto.png", "curves.png", "importance.png", "best.yaml"}
    for name in names:
        assert (sweep_dir / name).is_file() and (sweep_dir / name).stat().st_size > 0
    assert not [p.name for p in sweep_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    for name in ("pareto.png", "curves.png", "importance.png"):
        assert (sweep_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained(sweep_dir):
    page = (sweep_dir / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[^"'\s>]+\.(png|css|js)""", page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(img)[:4] == b"\x89PNG" for img in images)
    assert "<style>" in page and "paper (reported)" in page


def test_best_yaml_is_the_best_trial(sweep_dir):
    text = (sweep_dir / "best.yaml").read_text()
    assert text.splitlines()[0] == f"# Launch: hdsu-ray run best.yaml (best trial {BEST} of sweep mhqa-sweep)"
    wf = yaml.safe_load(text)
    assert "sweep" not in wf
    summary = sweep_summary()
    spec = wf["unlearn"]["methods"]
    assert len(spec) == 1 and spec[0]["label"] == "best" and spec[0]["name"] == "hdsu"
    assert spec[0]["lr"] == pytest.approx(0.0021)
    assert spec[0]["weights"]["neutral"] == pytest.approx(0.12)
    assert spec[0]["weights"]["targeted"] == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}  # int levels again
    assert {k: v for k, v in spec[0].items() if k not in ("label", "weights")} == \
        {k: v for k, v in summary["best"]["method_spec"].items() if k != "weights"}
    assert wf["unlearn"]["projection"]["rank"] == 8
    assert wf["data"] == CONFIG["data"] and wf["name"] == "mhqa-sweep"
    assert wf["output_dir"] == "runs/mhqa-sweep/best"


def test_best_yaml_validates_as_workflow(sweep_dir):
    from hdsu_ray.config.fields import build
    from hdsu_ray.config.schema import Workflow

    wf = build(Workflow, yaml.safe_load((sweep_dir / "best.yaml").read_text()))
    assert wf.sweep is None and wf.unlearn.projection.rank == 8
    assert wf.unlearn.methods[0]["label"] == "best"


def test_pareto_marks_in_trial_table(sweep_dir):
    rows = {r[0]: r for r in md_table_rows((sweep_dir / "report.md").read_text(), "trial")}
    assert set(rows) == {t[0] for t in TRIALS}
    front = {tid: r[-1] for tid, r in rows.items()}
    assert front[DOMINATED] == "no"
    assert front[BEST] == "yes (best)"
    assert front["3c1f0_00000"] == "yes" and front["3c1f0_00002"] == "yes"
    assert front[ERRORED] == "—" and rows[ERRORED][1] == "ERROR"
    header = (sweep_dir / "report.md").read_text().split("| trial |")[1].splitlines()[0]
    for col in ("projection.rank", "lr", "weights.neutral", "forget_rate", "knowledge_preservation"):
        assert col in header


def test_importances_computed(sweep_dir):
    md = (sweep_dir / "report.md").read_text()
    assert "not enough trials" not in md
    table = md[md.index("## Parameter importance"):]
    assert table.splitlines()[4] == "| parameter | importance for forget_rate | importance for knowledge_preservation |"
    rows = md_table_rows(table, "parameter")
    assert {r[0] for r in rows} == {"projection.rank", "lr", "weights.neutral"}
    for col in (1, 2):
        vals = [float(r[col]) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in vals) and sum(vals) == pytest.approx(1.0, abs=1e-3)


def test_one_trial_sweep_says_not_enough(tmp_path):
    d = write_sweep(tmp_path / "one", sweep_summary(TRIALS[1:2]))
    paths = write_report(d)
    assert importances(json.loads((d / "sweep.json").read_text()))["status"] == "not enough trials"
    md = (d / "report.md").read_text()
    assert "not enough trials" in md and "importance for forget_rate" not in md
    assert paths["importance.png"].is_file() and "best.yaml" in paths


def test_no_completed_trial_writes_no_best(tmp_path):
    summary = sweep_summary(TRIALS[4:5] + TRIALS[1:2])
    for t in summary["trials"]:
        t["status"], t["forget_rate"], t["knowledge_preservation"] = "ERROR", None, None
    summary["best"], summary["pareto"] = None, []
    d = write_sweep(tmp_path / "none", summary)
    (d / "best.yaml").write_text("stale")
    paths = write_report(d)
    assert "best.yaml" not in paths and not (d / "best.yaml").exists()
    assert "No best trial" in (d / "report.md").read_text()


# --------------------------------------------------------------------------- comparison

def method(label, fa_after, ra_after, frac, metrics):
    return {"method": label, "seed": 0, "settings": {"label": label}, "curve": [],
            "before": {"forget_accuracy": 0.9375, "retain_accuracy": 0.75},
            "after": {"forget_accuracy": fa_after, "retain_accuracy": ra_after},
            "forget_rate": 1.0 - fa_after, "knowledge_preservation": ra_after / 0.75,
            "param_fraction": frac, "params_changed": int(frac * 1e6), "params_total": 1_000_000,
            "metrics": metrics}


NO_RETRAIN = "no retrain-model AUC (privleak needs the oracle retrained without the forget set)"


@pytest.fixture()
def results() -> dict:
    runs = [method("hdsu", 0.1875, 0.7, 0.001, {"mia_auc": 0.56, "privleak": {"value": None, "absent": NO_RETRAIN},
                                                "per_level_preservation": {"1": 0.97, "2": 0.9}}),
            method("ga", 0.0625, 0.40625, 1.0, {"mia_auc": 0.31, "privleak": {"value": None, "absent": NO_RETRAIN},
                                                 "per_level_preservation": {"1": 0.6, "2": 0.5}}),
            method("graddiff", 0.375, 0.71875, 0.01, {"mia_auc": 0.8, "privleak": {"value": None,
                                                                                   "absent": NO_RETRAIN}})]
    return {**runs[0], "methods": {r["method"]: r for r in runs}, "timings": {"learn": 3.0},
            "workflow": "smoke", "config": {"name": "smoke", "evaluate": {"thresholds": {"forget_rate": 0.7}}},
            "sizes": {"forget": 16, "retain": 32, "holdout": 0}}


def test_comparison_files_and_table(tmp_path, results):
    paths = write_comparison(results, tmp_path, thresholds={"forget_rate": 0.7, "knowledge_preservation": 0.9})
    assert set(paths) == {"comparison.json", "comparison.md", "tradeoff.png"}
    assert all(p.is_file() for p in paths.values())
    assert paths["tradeoff.png"].read_bytes()[:4] == b"\x89PNG"
    md = paths["comparison.md"].read_text()
    rows = md_table_rows(md, "method")
    assert [r[0] for r in rows] == ["hdsu", "ga", "graddiff"]
    assert f"absent ({NO_RETRAIN})" in md
    header = md.split("\n| method |")[1].splitlines()[0]
    assert "per_level_preservation.1" in header and "mia_auc" in header
    by = {r[0]: r for r in rows}
    assert by["ga"][1] == "**0.9375**"  # best forget rate
    assert by["graddiff"][2].startswith("**")  # best knowledge preservation (0.71875 / 0.75)
    assert by["hdsu"][4] == "0.1875" and by["ga"][4] == "**0.0625**"  # after forget acc: lower is better
    assert by["hdsu"][3] == "0.9375"  # before columns are never bold
    assert re.search(r"^- forget_rate ≥ 0\.7: hdsu \*\*pass\*\* \(0\.8125\), ga \*\*pass\*\*.*graddiff \*\*fail\*\*",
                     md, re.M)
    assert re.search(r"^- knowledge_preservation ≥ 0\.9: hdsu \*\*pass\*\*.*ga \*\*fail\*\*", md, re.M)
    assert "paper" in md and "not a result of this run" in md


def test_comparison_json_round_trips(tmp_path, results):
    paths = write_comparison(results, tmp_path)
    text = paths["comparison.json"].read_text()
    data = json.loads(text)
    assert json.loads(json.dumps(data)) == data
    assert len(data["rows"]) == 3
    row = {r["method"]: r for r in data["rows"]}
    assert row["hdsu"]["privleak"] == {"value": None, "absent": NO_RETRAIN}
    assert row["ga"]["forget_rate"] == results["methods"]["ga"]["forget_rate"]
    assert row["graddiff"]["per_level_preservation.1"] is None  # metric that method did not report
    assert data["thresholds"]["forget_rate"]["pass"] == {"hdsu": True, "ga": True, "graddiff": False}
    assert data["reference"]["label"] == "paper (reported)"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- names are text, never markup

NASTY = ["$x$", "$\\frac{$", "a_b^c", "\\", "**bold**", "<b>x</b>", "- item", "1. x", "a|b", "[l](http://e)",
         "$\\undefined{x}$", "x\ny"]


def test_plots_and_markdown_take_any_label(tmp_path, caplog):
    """Labels that matplotlib's mathtext cannot parse draw as text (no placeholder figure), and the
    markdown shows every label as written: one table row each, no emphasis, link or HTML."""
    runs = {label: method(label, 0.2, 0.7, 0.001, {}) for label in NASTY}
    results = {"methods": runs, "workflow": "$\\bad$ *name*", "config": {}}
    with caplog.at_level("WARNING"):
        paths = write_comparison(results, tmp_path, thresholds={"forget_rate": 0.5})
    assert paths["tradeoff.png"].read_bytes()[:4] == b"\x89PNG"
    assert "could not be drawn" not in caplog.text
    md = paths["comparison.md"].read_text()
    assert md.splitlines()[0] == "# Method comparison: \\$\\\\bad\\$ \\*name\\*"
    rows = md_table_rows(md, "method")
    assert len(rows) == len(NASTY) and all(len(r) == len(rows[0]) for r in rows)
    assert [r[0] for r in rows][:3] == ["\\$x\\$", "\\$\\\\frac{\\$", "a_b^c"]
    for markup in (r"<b>", r"\]\(http"):  # each only with a backslash before it
        assert not re.search(r"(?<!\\)" + markup, md), markup
    assert "\n| \\*\\*bold\\*\\* |" in md
    assert "\n- \\- item: not checked" in md and "\n- 1\\. x: not checked" in md
    assert "forget_rate ≥ 0.5: \\$x\\$ **pass**" in md


def test_sweep_report_takes_any_name(tmp_path, caplog):
    summary = sweep_summary()
    summary["workflow"] = "$\\undefined$ <i>"
    for t in summary["trials"]:
        t["trial_id"] = f"${t['trial_id']}$"
    summary["best"] = None
    d = write_sweep(tmp_path / "nasty", summary)
    with caplog.at_level("WARNING"):
        paths = write_report(d)
    assert "could not be drawn" not in caplog.text
    md = paths["report.md"].read_text()
    assert md.startswith("# Sweep report: \\$\\\\undefined\\$ \\<i\\>")
    assert {r[0] for r in md_table_rows(md, "trial")} == {f"\\${t[0]}\\$" for t in TRIALS}
    page = paths["report.html"].read_text()
    assert "&lt;i&gt;" in page and "<i>" not in page


def test_a_figure_that_fails_to_draw_becomes_a_placeholder(caplog):
    from hdsu_ray.report.common import figure_png, new_figure

    fig = new_figure()
    fig.add_subplot(1, 1, 1).set_title("$\\frac{$")  # unescaped: mathtext fails when drawing
    with caplog.at_level("WARNING"):
        png = figure_png(fig)
    assert png[:4] == b"\x89PNG" and "could not be drawn" in caplog.text


def test_md_text_escapes_markup_only():
    from hdsu_ray.report.common import md_text

    assert md_text("forget_rate") == "forget_rate"  # an underscore inside a word is not emphasis
    assert md_text("_x_") == "\\_x\\_"
    assert md_text("a|b") == "a\\|b" and md_text("x\ny") == "x y"
    assert md_text("- x", start=True) == "\\- x" and md_text("- x") == "- x"
    assert md_text("12. x", start=True) == "12\\. x"


def test_code_fence_outlives_backticks_in_best_yaml():
    from hdsu_ray.report.document import Doc

    doc = Doc()
    doc.pre("name: x\n# ``` a comment\n")
    assert doc.markdown().splitlines()[0] == "````yaml"
