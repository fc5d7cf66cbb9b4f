"""The unlearn stage on a real local Ray: one shared basis for several trainers, and that nothing
the run writes contains forget-set question text. (Determinism and seed aggregation are checked on
the job of test_job_submit.py, a second run of the smoke workflow.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hdsu_ray.checks import load_workflow
from hdsu_ray.data.select import select_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_learned(ray_local, tmp_path_factory, copy_learned):
    """The session's learned smoke model (a copy; run_learn finds it cached) for this module's
    in-process tests, with its unlearn arrays."""
    from hdsu_ray.stages.learn import run_learn
    from hdsu_ray.stages.tensors import unlearn_arrays

    tmp = tmp_path_factory.mktemp("learned")
    copy_learned(tmp / "cache")
    wf = load_workflow(REPO / "workflows" / "smoke.yaml", [f"cache_dir={tmp / 'cache'}"])
    data = select_data(wf)
    learned = run_learn(wf, data, tmp)
    return learned, unlearn_arrays(wf, data, learned, tmp)


def test_two_trainers_share_one_basis_computation(smoke_learned, tmp_path, caplog):
    """Two hdsu consumers at different ranks: the rank-8 bundle a sweep driver hands out, then a
    trainer at rank 4. The basis is computed once (a counter, not a timing), both get the same
    object-store reference, and only budgeted entries change. (Two trainers side by side, each
    truncating one shared basis, run in test_compare.py's tuning of hdsu.) Batched, the reference
    is read off the forget Fisher's forward passes, with no forward of its own."""
    from hdsu_ray.eval.records import changed_fraction
    from hdsu_ray.methods import parse_method, resolved
    from hdsu_ray.stages import artefacts
    from hdsu_ray.stages.unlearn import run_unlearn_method

    wf = load_workflow(REPO / "workflows" / "smoke.yaml",
                       [f"cache_dir={tmp_path / 'cache'}", "unlearn.steps=2", "unlearn.projection.rank=8",
                        "unlearn.projection.basis_samples=8", "unlearn.param_budget=0.01",
                        "unlearn.per_sample_chunk=4"])  # the batched path: the reference comes from the Fisher's passes
    learned, arrays = smoke_learned
    artefacts.COMPUTE_COUNTS.clear()
    shared = artefacts.SharedArtefacts(wf, learned, arrays)
    spec = {"name": "hdsu", "token_weights": False}
    params = parse_method(spec, "m", None)
    with caplog.at_level(logging.INFO, logger="hdsu_ray.stages.artefacts"):
        first = shared.bundle(params, resolved(params, wf.unlearn))
    assert "from the Fisher's forward passes" in caplog.text
    model_dir, _ = run_unlearn_method(wf, {**spec, "label": "r4"}, shared, tmp_path, rank=4)
    assert artefacts.COMPUTE_COUNTS == {"masks": 1, "reference": 1, "basis": 1}
    assert list(shared._refs.values()) == [first]  # one bundle, handed to both
    _, changed, total = changed_fraction(learned, model_dir)
    assert 0 < changed <= round(0.01 * total)
    # A rerun (a resumed sweep's driver, a second CLI run on the same cache_dir) reads them from disk.
    artefacts.COMPUTE_COUNTS.clear()
    artefacts.SharedArtefacts(wf, learned, arrays).bundle(params, resolved(params, wf.unlearn))
    assert artefacts.COMPUTE_COUNTS == {}


def _small_basis_workflow(tmp_path, *overrides: str):
    """smoke.yaml with a 1 % budget and a rank-4 basis from 6 micro-batches of 2 rows."""
    return load_workflow(REPO / "workflows" / "smoke.yaml",
                         [f"cache_dir={tmp_path / 'cache'}", "unlearn.param_budget=0.01",
                          "unlearn.projection.rank=4", "unlearn.projection.basis_samples=6",
                          "unlearn.projection.basis_batch=2", *overrides])


def test_basis_refresh_recomputes_in_the_worker(smoke_learned, tmp_path):
    """``projection.refresh_every: 1`` recomputes the retain basis before every step after the first
    (recorded in the curve, at the configured rank); the budget still holds."""
    from hdsu_ray.eval.records import changed_fraction
    from hdsu_ray.stages import artefacts
    from hdsu_ray.stages.unlearn import run_unlearn_method

    wf = _small_basis_workflow(tmp_path, "unlearn.steps=3", "unlearn.projection.refresh_every=1")
    learned, arrays = smoke_learned
    shared = artefacts.SharedArtefacts(wf, learned, arrays)
    model_dir, settings = run_unlearn_method(wf, {"name": "hdsu", "label": "refresh"}, shared, tmp_path)
    refreshed = {c["step"]: c["basis_refreshed"] for c in settings["curve"] if "basis_refreshed" in c}
    assert refreshed == {1: 4, 2: 4}
    _, changed, total = changed_fraction(learned, model_dir)
    assert 0 < changed <= round(0.01 * total)


def test_lora_budget_changes_only_the_adapted_weights(smoke_learned, tmp_path):
    """``budget: lora`` through Ray Train: the worker wraps the model by the driver's plan (in the
    bundle) and saves it merged. Outside the adapted weights every parameter is bit-identical;
    the run reports the plan, whose LoRA entries fit the budget."""
    import torch

    from hdsu_ray.models.build import load_model_dir
    from hdsu_ray.stages import artefacts
    from hdsu_ray.stages.unlearn import run_unlearn_method

    wf = _small_basis_workflow(tmp_path, "unlearn.steps=2", "unlearn.budget=lora")
    learned, arrays = smoke_learned
    shared = artefacts.SharedArtefacts(wf, learned, arrays)
    model_dir, settings = run_unlearn_method(wf, {"name": "hdsu", "token_weights": False, "label": "lora"},
                                                   shared, tmp_path)
    lora = settings["lora"]
    assert lora["rank"] == 4 and lora["modules"]
    assert 0 < lora["n_params"] / lora["n_base"] <= 0.01
    before = dict(load_model_dir(learned)[0].named_parameters())
    after = dict(load_model_dir(model_dir)[0].named_parameters())
    assert list(after) == list(before) and sum(p.numel() for p in before.values()) == lora["n_base"]
    adapted = {f"{m}.weight" for m in lora["modules"]}
    for name, p in after.items():
        assert torch.equal(p, before[name]) == (name not in adapted), name


def test_no_output_contains_forget_question_text(smoke_cold_run):
    wf = load_workflow(REPO / "workflows" / "smoke.yaml")
    questions = [r.question.strip() for r in select_data(wf).forget]
    assert questions
    texts = [smoke_cold_run.proc.stdout, smoke_cold_run.proc.stderr]
    for path in smoke_cold_run.out.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", errors="ignore"))
    for q in questions:
        assert not any(q in t for t in texts), "forget-set question text leaked into the run's output"
    audit = json.loads((smoke_cold_run.out / "audit.json").read_text())
    assert len(audit["data"]["forget_sha256"]) == 64


def test_sweep_over_row_cap_builds_one_mask_per_value(smoke_learned, tmp_path):
    """A sweep whose trials differ in ``row_cap`` (a key that changes the budget mask) gets a
    bundle, and so a mask, per value; each trial finds its own by its settings."""
    import ray

    from hdsu_ray.methods import parse_method, resolved
    from hdsu_ray.stages import artefacts
    from hdsu_ray.sweep.tuner import shared_bundles

    wf = load_workflow(REPO / "workflows" / "smoke.yaml", [
        f"cache_dir={tmp_path / 'cache'}", "unlearn.param_budget=0.01",
        "sweep={method: {name: graddiff}, num_samples: 2, space: {row_cap: {type: choice, values: [2, 8]}}}"])
    learned, arrays = smoke_learned
    artefacts.COMPUTE_COUNTS.clear()
    bundles = shared_bundles(wf, artefacts.SharedArtefacts(wf, learned, arrays), max_rank=4)
    assert artefacts.COMPUTE_COUNTS["masks"] == 2 and len(bundles.refs) == 2
    masks = {}
    for cap in (2, 8):
        params = parse_method({"name": "graddiff", "row_cap": cap}, "m", None)
        masks[cap] = ray.get(bundles.bundle(params, resolved(params, wf.unlearn)))["masks"]
        per_row = max(int(m.sum(axis=-1).max()) for m in masks[cap].values() if m.ndim == 2)
        assert per_row <= cap
    assert any((masks[2][n] != masks[8][n]).any() for n in masks[2])


def test_no_retain_test_row_reaches_unlearning_or_selection(smoke_learned, tmp_path):
    """The reported retain rows (retain_test) are never read by unlearning or selection: the arrays
    the workers, the Fisher budget, the basis and the references are computed from retain_train
    rows only, and the in-loop selection scores the forget sample and retain_val. Checked on the
    object-store bundle itself, by token sequence, not only by the ids the stage reports."""
    import ray

    from hdsu_ray.data.encode import encode_texts
    from hdsu_ray.data.text import qa_text
    from hdsu_ray.methods import parse_method, resolved
    from hdsu_ray.models.build import load_model_dir
    from hdsu_ray.stages import artefacts
    from hdsu_ray.stages.tensors import unlearn_arrays

    wf = load_workflow(REPO / "workflows" / "smoke.yaml", [f"cache_dir={tmp_path / 'cache'}", "evaluate.candidates=2",
                                                           "evaluate.select=hmean", "evaluate.sample=64"])
    data = select_data(wf)
    learned, _ = smoke_learned
    arrays = unlearn_arrays(wf, data, learned, tmp_path)
    test_ids = {r.uid for r in data.retain_test}
    assert arrays["uids"]["retain"] == [r.uid for r in data.retain_train]
    assert set(arrays["uids"]["eval_retain"]) == {r.uid for r in data.retain_val}
    assert not test_ids & {u for ids in arrays["uids"].values() for u in ids}
    params = parse_method({"name": "hdsu"}, "m", None)
    bundle = ray.get(artefacts.SharedArtefacts(wf, learned, arrays).bundle(params, resolved(params, wf.unlearn)))
    _, tok = load_model_dir(learned)

    def rows(enc) -> set[tuple]:
        return {tuple(ids[mask.astype(bool)]) for ids, mask in zip(enc["input_ids"], enc["attention_mask"])}

    prompts, answers = zip(*map(qa_text, data.retain_test))
    test_rows = rows(encode_texts(tok, list(prompts), list(answers), wf.model.tiny.max_len))
    read = rows(bundle["retain"]) | rows(bundle["forget"]) | rows(bundle["eval"]["retain"]) | rows(bundle["eval"]["forget"])
    assert len(bundle["retain"]["input_ids"]) == len(data.retain_train)
    assert not test_rows & read
