"""The attacks' maths by hand: round-to-nearest group quantization and the relearning loop."""

from __future__ import annotations

import pytest
import torch

from hdsu_ray.core.attacks import finetune, quantize_linear_layers_, quantize_rtn


def test_quantize_rtn_by_hand():
    # bits 2: levels -1, 0, 1; group [0.2, -1.0, 0.6] has scale 1.0
    w = torch.tensor([[0.2, -1.0, 0.6]])
    assert quantize_rtn(w, bits=2, group_size=3).tolist() == [[0.0, -1.0, 1.0]]
    # two groups of 2 (the second padded): scales 0.5 and 0.1 at 8 bits -> exact to 1/127 of the scale
    w = torch.tensor([[0.5, -0.25, 0.1]])
    q = quantize_rtn(w, bits=8, group_size=2)
    assert q[0, 0] == pytest.approx(0.5) and q[0, 2] == pytest.approx(0.1)
    assert abs(q[0, 1] - (-0.25)) <= 0.5 / 127 / 2 + 1e-7
    assert quantize_rtn(torch.zeros(2, 4), bits=4, group_size=2).abs().sum() == 0


def test_fewer_bits_round_more_and_small_edits_vanish():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    err = {b: (quantize_rtn(w, b, 32) - w).abs().mean().item() for b in (4, 8)}
    assert err[4] > 10 * err[8] > 0
    # 4 bits: scale 1/7; 0.30 -> 2 steps and 0.32 -> 2 steps, so an unlearning edit of +0.02 is
    # rounded away; 8 bits: scale 1/127; 0.30 -> 38, 0.32 -> 41 steps, so it survives
    w = torch.tensor([[1.0, 0.30, -0.55, 0.0]])
    edited = torch.tensor([[1.0, 0.32, -0.55, 0.0]])
    assert torch.equal(quantize_rtn(w, 4, 4), quantize_rtn(edited, 4, 4))
    assert not torch.equal(quantize_rtn(w, 8, 4), quantize_rtn(edited, 8, 4))


def test_quantize_every_linear_layer_once(make_tiny_llama):
    from hdsu_ray.models.build import train_tokenizer

    tok = train_tokenizer(["a b c d e f g"] * 4, vocab_size=300)
    model = make_tiny_llama(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    n = quantize_linear_layers_(model, bits=4, group_size=8)
    linears = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert n == len(linears)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any("q_proj" in c for c in changed) and not any("norm" in c for c in changed)


def test_finetune_takes_one_step_per_batch_and_lowers_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    loss = lambda m, b: torch.nn.functional.mse_loss(m(b["x"]), b["y"])
    start = loss(model, {"x": x, "y": y}).item()
    seen = []
    finetune(model, [{"x": x, "y": y}] * 20, lr=0.05, loss_fn=loss, on_step=seen.append)
    assert seen == list(range(1, 21)) and loss(model, {"x": x, "y": y}).item() < start


def test_recovery_flags_by_hand():
    """Forget accuracy 0.9 before, 0.3 after (0.6 removed). 4-bit brings it to 0.66: 0.36/0.6 = 0.6
    recovered, flagged at 0.5; relearning reaches 0.8 on its rows (0.2 at its start) where the
    oracle reaches 0.7 from the same rows: only (0.8 - 0.7) / 0.6 = 0.17 is hidden knowledge."""
    from hdsu_ray.stages.robustness import robustness_flags

    row = {"before": {"forget_accuracy": 0.9}, "after": {"forget_accuracy": 0.3}}
    rec = {"quant4": {"forget_accuracy": 0.66}, "quant8": {"forget_accuracy": 0.3},
           "relearn": {"forget_accuracy": 0.8, "start_accuracy": 0.2, "oracle_forget_accuracy": 0.7}}
    flags = robustness_flags(row, rec, max_recovery=0.5)
    assert rec["quant4"]["recovered"] == pytest.approx(0.6) and rec["quant8"]["recovered"] == pytest.approx(0.0)
    assert rec["relearn"]["recovered"] == pytest.approx(0.1 / 0.6)
    assert flags == {"flagged": True, "attacks": {"quant4": True, "quant8": False, "relearn": False}, "max_recovery": 0.5}
    nothing = robustness_flags({"before": {"forget_accuracy": 0.3}, "after": {"forget_accuracy": 0.3}},
                               {"quant4": {"forget_accuracy": 0.9}}, 0.5)
    assert nothing["attacks"] == {"quant4": None} and nothing["flagged"] is False  # nothing was removed
    # Several seeds: "after" is their mean, but the attacks took the first seed's model, so its
    # recovery counts from that model's own 0.3 (0.66 - 0.3) / 0.6, not from the mean 0.5.
    seeds = {"before": {"forget_accuracy": 0.9}, "after": {"forget_accuracy": 0.5},
             "first_seed": {"seed": 0, "after": {"forget_accuracy": 0.3}}}
    rec = {"quant4": {"forget_accuracy": 0.66}}
    assert robustness_flags(seeds, rec, 0.5)["attacks"] == {"quant4": True}
    assert rec["quant4"]["recovered"] == pytest.approx(0.6)


def test_relearn_split_is_disjoint_and_seeded():
    from hdsu_ray.stages.robustness import relearn_split

    rows = list(range(30))
    a, b = relearn_split(rows, 0.1, seed=0)
    assert len(a) == 3 and sorted(a + b) == rows and not set(a) & set(b)
    assert relearn_split(rows, 0.1, seed=0) == (a, b) and relearn_split(rows, 0.1, seed=1) != (a, b)
