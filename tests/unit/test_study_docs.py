"""The studies' committed record (bench/study_record.py) and the documents written from it."""

import json

import pytest

from bench.study_record import environment_lines, record_study

ENV = {"python": "3.11.7", "cpus": 2, "processor": "x86_64", "system": "Linux", "machine": "x86_64",
       "packages": {"torch": "2.13.0"}, "constraints": "constraints.txt"}


def _run(root, name, files, env=ENV):
    run = root / name
    (run / "models" / "hdsu").mkdir(parents=True)
    (run / "models" / "hdsu" / "model.safetensors").write_bytes(b"weights")
    for f, text in files.items():
        (run / f).write_text(text)
    (root / "environment.json").write_text(json.dumps(env))
    return run


def test_record_keeps_the_documents_inputs_and_not_the_models(tmp_path):
    run = _run(tmp_path / "runs", "mhqa-anxiety", {"results.json": "{}", "wall_s.txt": "12.5\n",
                                                   "frozen.yaml": "name: x\n", "comparison.md": "table"})
    (run / "tuning" / "npo" / "trials").mkdir(parents=True)
    (run / "tuning" / "npo" / "sweep.json").write_text('{"trials": []}')
    (run / "tuning" / "npo" / "trials" / "model.safetensors").write_bytes(b"weights")
    dst = record_study(run, tmp_path / "record")
    assert sorted(p.name for p in dst.iterdir()) == ["environment.json", "frozen.yaml", "results.json", "tuning",
                                                     "wall_s.txt"]
    assert sorted(p.relative_to(dst / "tuning").as_posix() for p in (dst / "tuning").rglob("*")) == ["npo", "npo/sweep.json"]
    assert json.loads((dst / "environment.json").read_text()) == ENV
    assert (dst / "wall_s.txt").read_text() == "12.5\n"


def test_a_study_is_recorded_whole_from_one_run(tmp_path):
    record = tmp_path / "record"
    first = _run(tmp_path / "a", "mhqa-trauma", {"results.json": '{"run": 1}', "robustness.json": "{}"})
    record_study(first, record)
    second = _run(tmp_path / "b", "mhqa-trauma", {"results.json": '{"run": 2}'})
    record_study(second, record)
    # the first run's attacks were on other models: they must not survive beside the second's results
    assert not (record / "mhqa-trauma" / "robustness.json").exists()
    assert json.loads((record / "mhqa-trauma" / "results.json").read_text()) == {"run": 2}
    assert [p.name for p in record.iterdir()] == ["mhqa-trauma"]  # no temporary or old copy left


def test_an_unfinished_study_is_refused_and_the_record_untouched(tmp_path):
    record = tmp_path / "record"
    record_study(_run(tmp_path / "a", "mhqa-trauma", {"results.json": '{"run": 1}'}), record)
    unfinished = _run(tmp_path / "b", "mhqa-trauma", {"wall_s.txt": "1\n"})
    with pytest.raises(FileNotFoundError, match="no results.json"):
        record_study(unfinished, record)
    assert json.loads((record / "mhqa-trauma" / "results.json").read_text()) == {"run": 1}


def test_environment_one_line_or_one_per_study(tmp_path):
    record = tmp_path / "record"
    record_study(_run(tmp_path / "a", "s1", {"results.json": "{}"}), record)
    record_study(_run(tmp_path / "b", "s2", {"results.json": "{}"}), record)
    lines = environment_lines(record, ["s1", "s2", "missing"])
    assert len([x for x in lines if x]) == 1 and "torch 2.13.0" in lines[0]
    record_study(_run(tmp_path / "c", "s2", {"results.json": "{}"}, {**ENV, "cpus": 16}), record)
    lines = [x for x in environment_lines(record, ["s1", "s2"]) if x]
    assert lines[1].startswith("- s1: Python 3.11.7, 2 CPUs") and lines[2].startswith("- s2: Python 3.11.7, 16 CPUs")
    assert environment_lines(record, ["missing"]) == []
    record_study(_run(tmp_path / "d", "s3", {"results.json": "{}"}, {**ENV, "git_commit": "0123456789abcdef"}), record)
    assert environment_lines(record, ["s3"])[0].endswith("constraints.txt; commit 0123456789.")


def _attacked(forget_after, relearn, flagged):
    return {"quant8": {"forget_accuracy": forget_after, "recovered": 0.0},
            "quant4": {"forget_accuracy": forget_after, "recovered": 0.0},
            "relearn": {"forget_accuracy": relearn, "recovered": 0.5, "oracle_forget_accuracy": 0.3},
            "benign_relearn": {"forget_accuracy": forget_after, "recovered": 0.0},
            "flags": {"attacks": {"quant8": False, "quant4": False, "relearn": flagged, "benign_relearn": False}}}


def test_robustness_doc_joins_the_studies_and_the_smollm2_run_from_the_record(tmp_path):
    from bench.robustness import write_doc

    record = tmp_path / "record"
    row = {"before": {"forget_accuracy": 0.9}, "after": {"forget_accuracy": 0.2}}
    (record / "s1").mkdir(parents=True)
    (record / "s1" / "results.json").write_text(json.dumps({"methods": {"hdsu": row}}))
    (record / "s1" / "robustness.json").write_text(json.dumps({"hdsu": _attacked(0.2, 0.4, False)}))
    rob_cfg = {"quant_bits": [8], "group_size": 32, "relearn_steps": 6, "relearn_lr": 1e-4, "relearn_batch": 4,
               "relearn_fraction": 0.1, "max_recovery": 0.5}
    a = _attacked(0.3, 0.8, True)
    smol = {"config": {"robustness": rob_cfg}, "methods": {"hdsu": {
        **row, "robustness": {k: v for k, v in a.items() if k != "flags"}, "robustness_flags": a["flags"]}}}
    (record / "mhqa-smollm2").mkdir()
    (record / "mhqa-smollm2" / "results.json").write_text(json.dumps(smol))
    (record / "main-job").mkdir()  # the main job attacks its own models too, with its workflow's settings
    (record / "main-job" / "results.json").write_text(json.dumps(smol))
    text = write_doc(record, ["s1", "s2"], tmp_path / "ROBUSTNESS.md").read_text()
    assert text.index("## main-job (workflows/mhqa.yaml") < text.index("## mhqa-smollm2")
    assert "## s2\n\nNot attacked yet." in text
    assert "| hdsu | 0.900 | 0.200 | 0.200 (+0.00) | 0.200 (+0.00) | 0.400 (+0.50) (0.300) | 0.200 (+0.00) | no |" in text
    smol_part = text.split("## mhqa-smollm2 (SmolLM2-135M)")[1]
    assert "relearning, 6 AdamW steps (lr 0.0001, 4 rows)" in smol_part.split("|")[0]
    assert "| **relearn** |" in smol_part
    assert ("- hdsu: forgetting did not survive main-job (workflows/mhqa.yaml: MHQA Anxiety, seed 0): relearn; "
            "mhqa-smollm2 (SmolLM2-135M): relearn") in text


def test_main_job_attacks_of_the_tuning_studys_models_are_checked_not_counted_twice(tmp_path):
    """The main job's models are the tuning study's seed-0 models: once the study is attacked, equal
    in-run attacks collapse to one sentence and one verdict; a differing field keeps the table."""
    from bench.robustness import write_doc

    record = tmp_path / "record"
    row = {"before": {"forget_accuracy": 0.9}, "after": {"forget_accuracy": 0.2}}
    attacked = _attacked(0.2, 0.8, True)
    (record / "s1").mkdir(parents=True)
    (record / "s1" / "results.json").write_text(json.dumps({"methods": {"wga": row}}))
    (record / "s1" / "robustness.json").write_text(json.dumps({"wga": attacked}))
    rob_cfg = {"quant_bits": [8], "group_size": 32, "relearn_steps": 6, "relearn_lr": 1e-4, "relearn_batch": 4,
               "relearn_fraction": 0.1, "max_recovery": 0.5}

    def main_job(relearn):
        a = _attacked(0.2, relearn, True)
        (record / "main-job").mkdir(exist_ok=True)
        (record / "main-job" / "results.json").write_text(json.dumps({"config": {"robustness": rob_cfg}, "methods": {
            "wga": {**row, "robustness": {k: v for k, v in a.items() if k != "flags"}, "robustness_flags": a["flags"]}}}))
        return write_doc(record, ["s1"], tmp_path / "R.md", tuned_on="s1").read_text()

    text = main_job(0.8)
    part = text.split("## main-job")[1].split("## Verdict")[0]
    assert "equal this script's attacks on them field for field (1 methods, every attack)" in part and "| wga |" not in part
    assert "- wga: forgetting did not survive s1: relearn\n" in text + "\n"
    text = main_job(0.7)
    part = text.split("## main-job")[1].split("## Verdict")[0]
    assert "differ from this script's on them: wga: relearn." in part and "| wga |" in part
    assert "s1: relearn; main-job" in text
    (record / "s1" / "results.json").write_text(json.dumps({"methods": {"npo": row}}))  # no method in common
    (record / "s1" / "robustness.json").write_text(json.dumps({"npo": attacked}))
    part = main_job(0.8).split("## main-job")[1]
    assert "| wga |" in part and "field for field" not in part


def test_protocol_says_when_tpe_never_left_its_random_start():
    # Optuna's TPE samples its first n_startup_trials (10 by default) at random: 8 trials are random search.
    from bench.experiments_doc import searcher_words

    assert "in effect seeded random search" in searcher_words("tpe", 8)
    assert "10 random start-up trials" in searcher_words("tpe", 10)
    assert searcher_words("tpe", 11) == "tpe" and searcher_words("random", 8) == "random"
    assert searcher_words("qmc", 4).startswith("qmc: Optuna's scrambled Sobol sequence")


def test_searcher_help_states_the_installed_optunas_random_start():
    import inspect

    import optuna

    from hdsu_ray.config.fields import field_help
    from hdsu_ray.config.search import CompareConfig, SweepConfig

    start = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    generation = inspect.signature(optuna.samplers.NSGAIISampler).parameters["population_size"].default
    def help_of(cls) -> str:
        return next(row[3] for row in field_help(cls) if row[0] == "searcher")

    assert f"first {start} trials" in help_of(CompareConfig)
    sweep = help_of(SweepConfig)
    assert f"first {start} trials" in sweep and f"generation of {generation}" in sweep


def test_a_transfer_study_reports_its_ablations_as_the_tuning_study_does():
    from bench.experiments_doc import mark_frozen, paired_table

    ablation = {"tuned": False, "ablation_of": "hdsu", "changed": {"projection": False}}
    tuning = {"methods": {"hdsu": {"protocol": {"tuned": True}}, "ga": {"protocol": {"tuned": True}},
                          "hdsu-no-projection": {"protocol": ablation}}, "paired": {}}
    diff = {"diff": 0.04, "low": 0.01, "high": 0.06}
    # a run of frozen.yaml knows no ablations: it pairs the first method against every other one
    transfer = {"methods": {m: {"protocol": {"tuned": False}} for m in ("hdsu", "ga", "hdsu-no-projection")},
                "paired": {"hdsu - ga": {"forget_accuracy": diff},
                           "hdsu - hdsu-no-projection": {"forget_accuracy": diff, "retain_accuracy": {"absent": "x"}}}}
    mark_frozen({"tuning": tuning, "transfer": transfer}, "tuning")
    assert transfer["methods"]["ga"]["protocol"]["tuned_on"] == "tuning"
    assert transfer["methods"]["hdsu-no-projection"]["protocol"]["ablation_of"] == "hdsu"
    assert "tuned_on" not in transfer["methods"]["hdsu-no-projection"]["protocol"]
    assert transfer["paired"]["hdsu - ga"]["forget_accuracy"] == diff  # baselines keep their direction
    flipped = transfer["paired"]["hdsu-no-projection - hdsu"]
    assert (flipped["forget_accuracy"]["diff"], flipped["forget_accuracy"]["low"],
            flipped["forget_accuracy"]["high"]) == (-0.04, -0.06, -0.01)
    assert flipped["retain_accuracy"] == {"absent": "x"}
    assert "hdsu-no-projection - hdsu" in "\n".join(paired_table(transfer, ablations=True))
    assert "hdsu-no-projection" not in "\n".join(paired_table(transfer, ablations=False))


def test_ablations_are_counted_over_the_studies_by_their_intervals():
    from bench.experiments_doc import ablation_summary
    from bench.experiments_readme import ablation_line

    lower = {"diff": -0.05, "low": -0.09, "high": -0.01}  # interval below 0: the ablation forgets more
    across = {"diff": -0.02, "low": -0.06, "high": +0.03}  # interval spans 0: nothing shown
    def study(forget: dict) -> dict:
        return {"paired": {"hdsu - ga": {"forget_accuracy": lower},  # a baseline pair, not an ablation
                           "hdsu-no-anchor - hdsu": {"forget_accuracy": forget, "retain_accuracy": across},
                           "hdsu-no-projection - hdsu": {"forget_accuracy": across, "retain_accuracy": across}}}
    results = {"a": study(lower), "b": study(across), "c": study(lower)}
    line = ablation_line(results)
    assert "hdsu-no-anchor: forgets more in 2 of 3;" in line
    assert "hdsu-no-projection: no difference the items show in any of 3." in line
    assert "; ga:" not in line and "hdsu, ga" not in line and " ga:" not in line
    assert "| hdsu-no-anchor | 3 | 0 | 2 | 0 | 0 |" in ablation_summary(results)


def test_smollm2_doc_states_how_its_settings_were_chosen_and_what_tuning_cost():
    from bench.smollm2_doc import chosen, protocol_lines, setting_lines

    protocol = {"tuned": True, "trials": 4, "searcher": "tpe", "steps_cap": 12, "candidates": 2,
                "selection_rule": "hmean", "selection_data": "forget + retain_val", "space": ["lr", "steps", "beta"],
                "chosen": {"lr": 0.00123456, "steps": 9, "beta": 0.5}}
    res = {"methods": {"hdsu": {"protocol": protocol}}, "seeds": {"unlearn": [0]}, "params_total": 134.5e6,
           "splits": {"forget": {"n": 32}}, "timings": {"learn": 100.0, "tune": 1500.0, "runs": 400.0},
           "config": {"learn": {"epochs": 4, "lr": 1e-4, "batch_size": 16},
                      "unlearn": {"steps": 12, "param_budget": 0.001},
                      "evaluate": {"candidates": 2, "select": "hmean", "competence_samples": 100}}}
    text = " ".join(protocol_lines(res))
    assert "Tuned on this model" in text and "4 Ray Tune + Optuna trials" in text and "hdsu: lr, steps, beta" in text
    assert chosen(protocol) == "lr 0.00123, beta 0.5"  # steps have their own column
    cost = next(line for line in setting_lines(res, 2100.0, None) if line.startswith("**Cost.**"))
    assert "tuning stage took 1500 s; the study without it 600 s (10.0 min)" in cost
    res["methods"]["hdsu"]["protocol"] = {}
    assert "No method was tuned on this model" in protocol_lines(res)[0]


def _sweep(run_dir, label):
    """A compare's trial record for ``label``: two trials of an lr/steps search, the second chosen."""
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "steps": {"type": "int", "low": 6, "high": 12, "log": False}}
    trials = [{"trial_id": "a", "params": {"lr": 1e-3, "steps": 6}, "forget_rate": 0.5,
               "knowledge_preservation": 1.0, "selection": 0.667},
              {"trial_id": "b", "params": {"lr": 1e-2, "steps": 9}, "forget_rate": 0.75,
               "knowledge_preservation": 1.0, "selection": 0.857}]
    (run_dir / "tuning" / label).mkdir(parents=True)
    (run_dir / "tuning" / label / "sweep.json").write_text(json.dumps(
        {"config": {"sweep": {"space": space}}, "trials": trials, "best": {"trial_id": "b"}}))


def test_search_doc_shows_every_trial_and_how_much_of_each_range_they_covered(tmp_path):
    from bench.search_doc import search_section

    _sweep(tmp_path, "npo")
    res = {"methods": {"npo": {"protocol": {"tuned": True, "chosen": {"lr": 1e-2, "steps": 9}}},
                       "npo-ablation": {"protocol": {"tuned": False}}}}
    text = "\n".join(search_section(tmp_path, res))
    assert "| npo | lr 0.01, steps 9 | 0.750 | 1.000 | 0.857 | **chosen** |" in text
    assert "| npo | lr 0.001, steps 6 | 0.500 | 1.000 | 0.667 |  |" in text
    # lr: log10 span 1 of 2 decades; steps: 3 of 6
    assert "npo: the trials spanned lr 50%, steps 50% of each range; the pick is the largest learning rate" in text
    assert "npo-ablation" not in text
    assert search_section(tmp_path, {"methods": {"hdsu": {"protocol": {"tuned": True}}}}) == []  # no record


def test_search_doc_says_when_the_reported_rows_lost_what_retain_val_did_not_show(tmp_path):
    """The pick kept 1.000 of retain_val (the _sweep fixture); retain_test's interval tops out
    below that in one run and reaches it in the other."""
    from bench.search_doc import search_section

    _sweep(tmp_path, "npo")
    chosen = {"tuned": True, "chosen": {"lr": 1e-2, "steps": 9}}
    lost = {"methods": {"npo": {"protocol": chosen, "knowledge_preservation": 0.5,
                                "ci": {"knowledge_preservation": {"low": 0.3, "high": 0.7}}}},
            "splits": {"retain_val": {"n": 16}}}
    text = "\n".join(search_section(tmp_path, lost))
    assert ("its pick kept 1.000 of retain_val in the search but 0.500 [0.30, 0.70] of retain_test in the "
            "reported run: 16 retain_val rows did not show that loss.") in text
    lost["methods"]["npo"]["ci"]["knowledge_preservation"]["high"] = 1.0
    assert "did not show" not in "\n".join(search_section(tmp_path, lost))


def test_experiments_doc_shows_the_tuning_studys_search_and_no_other(tmp_path):
    """The transfer studies ran the tuning study's frozen settings, so only the tuning study has a
    search to show, even if a transfer study's run directory held a stray trial record."""
    from bench.experiments_doc import REPO, write_doc

    recorded = (REPO / "docs" / "experiments" / "mhqa-anxiety" / "results.json").read_text()
    for name in ("mhqa-anxiety", "mhqa-depression"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(recorded)
        _sweep(tmp_path / name, "hdsu")
    text = write_doc(tmp_path, ["mhqa-anxiety", "mhqa-depression"], "mhqa-anxiety", tmp_path / "E.md").read_text()
    assert text.count("### The search") == 1 and "### The search (mhqa-anxiety)" in text
    assert "| hdsu | lr 0.01, steps 9 | 0.750 | 1.000 | 0.857 | **chosen** |" in text
