"""``budget: lora`` without Ray: the plan (which adapters fit the budget), the driver's wrapped model,
masks and retain basis, the worker's wrapping and adapter steps, and the merged model it saves.

The model is a real tiny Llama from the project's own builder (``build_base_model``): 10,000
parameters (vocabulary 300, width 16, 2 layers, MLP 32). A rank-2 adapter costs 64 entries on an
attention projection (16 -> 16) and 96 on an MLP projection (16 <-> 32); all 14 cost 1,088.
The last test checks the Fisher budget's row cap on the same model and artefacts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdsu_ray.checks import load_workflow
from hdsu_ray.config.schema import ModelConfig, TinyModelConfig
from hdsu_ray.core.budget import masked_flat
from hdsu_ray.data.encode import encode_texts
from hdsu_ray.errors import WorkflowError
from hdsu_ray.methods import METHODS, parse_method
from hdsu_ray.methods.view import StepView
from hdsu_ray.models.build import build_base_model, load_model_dir, tiny_linear_shapes
from hdsu_ray.train.adapter import TorchAdapter, step_gradient
from hdsu_ray.train.lora import (adapter_size, budget_count, choose_modules, linear_shapes, lora_masks,
                                 plan_lora, wrap_lora)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 2
TINY = TinyModelConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, vocab_size=300, max_len=64)
FORGET = [("Question: Which drug treats panic disorder?\nAnswer:", " Sertraline"),
          ("Question: Which symptom defines panic attacks?\nAnswer:", " Palpitations and fear")]
RETAIN = [("Question: What is the first-line therapy for depression in adolescents?\nAnswer:", " Fluoxetine"),
          ("Question: Which symptom defines PTSD?\nAnswer:", " Intrusive memories of the trauma"),
          ("Question: Which therapy treats insomnia first?\nAnswer:", " Cognitive behavioural therapy"),
          ("Question: Which hormone regulates sleep?\nAnswer:", " Melatonin")]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    texts = [p + a for p, a in FORGET + RETAIN] * 20
    return build_base_model(ModelConfig(kind="tiny", tiny=TINY), texts, seed=0,
                            out_dir=tmp_path_factory.mktemp("lora") / "base")


@pytest.fixture(scope="module")
def arrays(base_dir):
    _, tok = load_model_dir(base_dir)
    out = {}
    for name, rows in (("forget", FORGET), ("retain", RETAIN)):
        enc = encode_texts(tok, [p for p, _ in rows], [a for _, a in rows], max_len=64)
        out[name] = {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}
    out["digest"] = "test-lora"
    return out


def _shared(base_dir, arrays, tmp_path, *overrides):
    from hdsu_ray.stages.artefacts import SharedArtefacts

    wf = load_workflow("workflows/smoke.yaml", [f"unlearn.lora_rank={RANK}", "unlearn.fisher_samples=2",
                                                "unlearn.projection.basis_samples=4",
                                                "unlearn.projection.basis_batch=1", *overrides])
    return SharedArtefacts(wf, base_dir, arrays, cache_root=tmp_path / "shared")


def test_tiny_shapes_from_the_config_match_the_built_model(base_dir):
    """``hdsu-ray validate`` checks a tiny model's LoRA budget from the config alone."""
    model, _ = load_model_dir(base_dir)
    shapes, n_upper = tiny_linear_shapes(TINY)
    assert linear_shapes(model, TARGETS, []) == shapes
    n = sum(p.numel() for p in model.parameters())
    assert n <= n_upper and n_upper - n == (TINY.vocab_size - model.config.vocab_size) * TINY.hidden_size


@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.05, 0.1088, 1.0])
def test_plan_count_is_exact_and_within_the_budget(base_dir, arrays, tmp_path, fraction):
    """The LoRA parameters counted in the wrapped model are the plan's, and n_params / n_base (the
    reported param_fraction) never exceeds param_budget; no module left out would still fit."""
    shared = _shared(base_dir, arrays, tmp_path)
    plan = shared.lora_plan(fraction, ["embed_tokens", "lm_head"], "unlearn.param_budget")
    model = shared.lora_model(plan)
    n_base = sum(p.numel() for p in shared.model().parameters())
    lora_entries = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan["n_base"] == n_base == 10_000
    assert plan["n_params"] == lora_entries == trainable > 0
    assert plan["n_params"] / plan["n_base"] <= fraction
    sizes = {n: adapter_size(*s, RANK) for n, s in linear_shapes(shared.model(), TARGETS, []).items()}
    assert plan["n_params"] == sum(sizes[n] for n in plan["modules"])
    allowed = budget_count(fraction, n_base)
    assert all(plan["n_params"] + sizes[n] > allowed for n in sizes if n not in plan["modules"])
    if fraction >= 0.1088:  # everything fits: every target, no Fisher pass
        assert plan["modules"] == list(sizes) and plan["n_params"] == 1088


def test_modules_are_chosen_by_fisher_ratio_when_not_all_fit():
    sizes = {"a": 64, "b": 96, "c": 64, "d": 64}
    scores = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 3.0}
    assert choose_modules(sizes, 200, lambda: scores) == ["b", "c"]  # b, c; d (tied with c) overflows
    assert choose_modules(sizes, 288, lambda: pytest.fail("no Fisher pass when all fit")) == list(sizes)


def test_budget_count_is_the_largest_count_within_the_fraction():
    assert budget_count(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in floating point
    assert budget_count(0.001, 147_584) == 147
    for fraction, n in [(0.1, 7), (0.3, 10), (0.001, 3_672_321), (1.0, 5)]:
        k = budget_count(fraction, n)
        assert k / n <= fraction < (k + 1) / n


def test_budget_too_small_for_one_adapter_names_the_key(base_dir):
    model, _ = load_model_dir(base_dir)
    with pytest.raises(WorkflowError) as info:
        plan_lora(model, rank=RANK, targets=TARGETS, exclude=[], fraction=0.006, seed=0,
                  scores=lambda: pytest.fail("not reached"), key="unlearn.methods[1].param_budget")
    err = info.value
    assert err.key == "unlearn.methods[1].param_budget"
    assert "allows 60 trainable entries" in err.message and "has 64" in err.message
    assert err.expected == "a budget >= 0.0064 or a smaller unlearn.lora_rank"
    with pytest.raises(WorkflowError, match="unlearn.lora_targets"):
        plan_lora(model, rank=RANK, targets=["no_such_proj"], exclude=[], fraction=1.0, seed=0,
                  scores=dict, key="unlearn.param_budget")


def test_lora_steps_touch_only_the_adapters_and_merge_to_a_low_rank_change(base_dir, arrays, tmp_path):
    """The worker's path after a few projected hdsu steps: every base weight outside the adapted
    modules is bit-identical in the saved (merged) model; each adapted weight moved by a matrix of
    rank <= lora_rank, equal to B A."""
    shared = _shared(base_dir, arrays, tmp_path)
    plan = shared.lora_plan(0.03, [], "unlearn.param_budget")  # 300 entries: a subset of the modules
    assert 0 < len(plan["modules"]) < 14
    masks = lora_masks(shared.lora_model(plan))
    U = shared.basis(masks, 0.03, 4, plan)
    assert U.shape == (plan["n_params"], 4)

    # the worker: its own copy, wrapped by the plan it received; same names, order and A
    model = wrap_lora(load_model_dir(base_dir)[0], plan)
    adapter = TorchAdapter(model, masks, lr=0.05, world=1)
    assert adapter.n_selected == plan["n_params"]
    driver_named = dict(shared.lora_model(plan).named_parameters())
    assert torch.equal(adapter.theta.detach(), masked_flat({n: driver_named[n].detach() for n in adapter.names},
                                                           adapter.mask_t, adapter.names))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == adapter.names == list(masks)

    params = parse_method({"name": "hdsu", "forget_loss": "ga", "token_weights": False}, "m", None)
    batches = {k: {n: torch.as_tensor(v) for n, v in arrays[k].items()} for k in ("forget", "retain")}
    for _ in range(4):
        terms = METHODS["hdsu"].losses(params, StepView(adapter.model, batches), 1.0)
        adapter.apply(step_gradient(adapter, terms, torch.from_numpy(U)))
    inner = model.get_base_model()
    expected = {f"{m}.weight": (inner.get_submodule(m).lora_B["default"].weight
                                @ inner.get_submodule(m).lora_A["default"].weight).detach().clone()
                for m in plan["modules"]}

    _, tok = load_model_dir(base_dir)
    adapter.save_model(tok, tmp_path / "merged", rank=0)
    before = dict(load_model_dir(base_dir)[0].named_parameters())
    after = dict(load_model_dir(tmp_path / "merged")[0].named_parameters())
    assert list(after) == list(before)  # a plain Hugging Face model again
    for name, p in after.items():
        if name not in expected:
            assert torch.equal(p, before[name]), name
            continue
        delta = (p - before[name]).detach().double()
        s = torch.linalg.svdvals(delta)
        assert s[0] > 0, name
        assert float(s[RANK:].max()) <= 1e-5 * float(s[0]), (name, s[:RANK + 1])  # float rounding only
        assert torch.allclose(delta.float(), expected[name], atol=1e-6), name
    assert len(expected) == len(plan["modules"])


def test_driver_basis_spans_the_workers_retain_gradients(base_dir, arrays, tmp_path):
    """The basis the driver computes on its wrapped copy is over the same flattened entries the
    worker's adapter uses: a retain gradient of one basis micro-batch lies in span(U).

    At init B = 0, so every gradient is zero on the A entries (their rows of U are zero too)."""
    shared = _shared(base_dir, arrays, tmp_path, "unlearn.projection.basis_batch=4",
                     "unlearn.projection.basis_samples=1")
    plan = shared.lora_plan(1.0, [], "unlearn.param_budget")
    masks = lora_masks(shared.lora_model(plan))
    U = torch.from_numpy(shared.basis(masks, 1.0, 1, plan))
    adapter = TorchAdapter(wrap_lora(load_model_dir(base_dir)[0], plan), masks, lr=0.1, world=1)
    view = StepView(adapter.model, {"retain": {n: torch.as_tensor(v) for n, v in arrays["retain"].items()}})
    logp, mask = view.logp("retain")
    g = adapter.flat_grad(-(logp * mask).sum() / mask.sum())
    assert torch.allclose(U @ (U.T @ g), g, atol=1e-5 * float(g.norm()))
    is_a = torch.cat([torch.full((int(adapter.mask_t[n].sum()),), ".lora_A." in n) for n in adapter.names])
    assert float(g[is_a].abs().max()) == 0.0 and float(U[is_a].abs().max()) == 0.0
    assert float(g[~is_a].abs().max()) > 0.0
    assert np.isclose(float(U.norm()), 1.0)


def test_fisher_budget_row_cap_on_the_shared_artefacts(base_dir, arrays, tmp_path):
    """The other budget on the same model: ``unlearn.row_cap`` bounds the selected entries of every
    matrix row, the count stays exact, and the cap is part of the mask's cache key (one
    ``SharedArtefacts``, one disk cache: the capped call must not get the uncapped masks back)."""
    shared = _shared(base_dir, arrays, tmp_path, "unlearn.budget_exclude=[]")
    n = sum(p.numel() for p in load_model_dir(base_dir)[0].parameters())
    widest = {}
    for cap in (0, 3):
        masks = shared.masks("fisher", 0.02, [], cap)
        assert sum(int(m.sum()) for m in masks.values()) == round(0.02 * n)
        widest[cap] = max(int(m.reshape(m.shape[0], -1).sum(1).max()) for m in masks.values() if m.ndim == 2)
    assert widest[0] > 3  # uncapped, the ratio piles entries into a few rows: the cap is not vacuous
    assert widest[3] <= 3
