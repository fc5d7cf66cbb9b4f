"""Token-weighted losses (hdsu_ray.core.losses): hand-worked values, naive loops, invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from hdsu_ray.core.losses import (
    ga_loss,
    kl_anchor,
    npo_loss,
    option_contrast_loss,
    option_scores,
    rmu_loss,
    sequence_logprob,
    simnpo_loss,
    token_logprobs,
    topk_reference,
    wga_loss,
    weighted_nll,
)

B, T, V = 2, 5, 7
LN2, LN4 = math.log(2), math.log(4)


def _logits(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g, dtype=dtype).requires_grad_()


def _labels(seed=1):
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    labels[0, :2] = -100  # a prompt
    labels[1, -1] = -100  # padding
    return labels


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def test_token_logprobs_matches_naive_loop():
    logits, labels = _logits(), _labels()
    logp, mask = token_logprobs(logits, labels)
    assert logp.shape == mask.shape == (B, T) and mask.dtype == torch.bool
    full = torch.log_softmax(logits, dim=-1)
    for b in range(B):
        for t in range(T):
            want = full[b, t, labels[b, t]] if labels[b, t] != -100 else torch.tensor(0.0)
            assert mask[b, t] == (labels[b, t] != -100)
            torch.testing.assert_close(logp[b, t], want.to(logp.dtype))


def test_token_logprobs_upcasts_bf16():
    logits = _logits(dtype=torch.float32).detach()
    logp, _ = token_logprobs(logits.to(torch.bfloat16), _labels())
    assert logp.dtype == torch.float32
    ref, _ = token_logprobs(logits.to(torch.bfloat16).float(), _labels())
    torch.testing.assert_close(logp, ref)


def test_weighted_nll_hand_worked():
    """Two tokens, p = 0.5 and 0.25, weights 1 and 3: NLL = (ln 2 + 3 ln 4) / 4 = 1.3863."""
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]], requires_grad=True)
    loss = weighted_nll(logp, torch.tensor([[1.0, 3.0]]))
    assert loss.item() == pytest.approx((LN2 + 3 * LN4) / 4)
    torch.testing.assert_close(_grad(loss, logp), torch.tensor([[-0.25, -0.75]]))


def test_weighted_nll_with_mask_weights_is_cross_entropy():
    """Invariant: weights = mask gives the plain token-mean NLL, i.e. F.cross_entropy."""
    logits, labels = _logits(), _labels()
    logp, mask = token_logprobs(logits, labels)
    ours = weighted_nll(logp, mask.float())
    ce = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ce)
    torch.testing.assert_close(_grad(ours, logits), _grad(ce, logits))


def test_zero_weights_give_zero_loss_with_grad():
    logits = _logits()
    zero = torch.zeros(B, T)
    for fn in (weighted_nll, ga_loss, wga_loss):
        loss = fn(token_logprobs(logits, _labels())[0], zero)
        assert loss.item() == 0.0 and loss.requires_grad
        assert torch.equal(_grad(loss, logits), torch.zeros_like(logits))
    for loss in (kl_anchor(logits, *topk_reference(logits, 3), zero),
                 rmu_loss(logits, torch.ones(V), logits, logits.detach(), zero, zero, 1.0)):
        assert loss.item() == 0.0 and loss.requires_grad
        assert torch.equal(_grad(loss, logits), torch.zeros_like(logits))


def test_sequence_logprob_hand_worked():
    """Row 0: 1*ln .5 + 3*ln .25 = -7 ln 2; row 1: 0.5*ln .5 = -0.5 ln 2."""
    logp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]])
    w = torch.tensor([[1.0, 3.0], [0.5, 0.0]])
    torch.testing.assert_close(sequence_logprob(logp, w), torch.tensor([-7 * LN2, -0.5 * LN2]))


def test_ga_gradient_is_minus_nll_gradient():
    logits, labels = _logits(), _labels()
    w = torch.rand(B, T, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logp, mask = token_logprobs(logits, labels)
    w = w * mask
    torch.testing.assert_close(ga_loss(logp, w), -weighted_nll(logp, w))
    g_ga = _grad(ga_loss(logp, w), logits)
    logp, _ = token_logprobs(logits, labels)
    torch.testing.assert_close(g_ga, -_grad(weighted_nll(logp, w), logits))


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_at_reference_is_2_ln2_over_beta(beta):
    """logp == ref_logp: -(2/b) log sigmoid(0) = (2/b) ln 2 (= 13.8629 for b = 0.1)."""
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.9]])).requires_grad_()
    loss = npo_loss(logp, logp.detach().clone(), torch.ones(2, 2), beta=beta)
    assert loss.item() == pytest.approx(2 / beta * LN2)
    # d/dlogp = (2/b) * sigmoid(0) * b / B = 1/B per token (weight 1): lowering logp lowers loss
    torch.testing.assert_close(_grad(loss, logp), torch.full((2, 2), 0.5))


def test_npo_hand_worked_off_reference():
    """beta = 0.1, one sequence, log-ratio sum = 2*5 = 10 (weights 2, 0 on +5, +7):
    -(2/0.1) log sigmoid(-1) = 20 ln(1 + e) = 26.2652."""
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[-5.0, -7.0]])
    loss = npo_loss(logp, ref, torch.tensor([[2.0, 0.0]]), beta=0.1)
    assert loss.item() == pytest.approx(20 * math.log(1 + math.e))


def test_simnpo_hand_worked():
    """beta = 2.5, delta = 0, p = 0.5 and 0.25 with weights 1, 1: log pi / |y| = -1.5 ln 2,
    loss = -(2/2.5) log sigmoid(2.5 * 1.5 ln 2) = 0.8 ln(1 + 2^-3.75) = 0.05728.
    With delta = 1: 0.8 ln(1 + exp(1 - 3.75 ln 2))."""
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    w = torch.ones(1, 2)
    assert simnpo_loss(logp, w).item() == pytest.approx(0.8 * math.log(1 + 2**-3.75))
    assert simnpo_loss(logp, w, delta=1.0).item() == pytest.approx(
        0.8 * math.log(1 + math.exp(1 - 3.75 * LN2))
    )
    # length normalisation: weights 2, 2 give the same average, hence the same loss
    assert simnpo_loss(logp, 2 * w).item() == pytest.approx(simnpo_loss(logp, w).item())


def test_wga_hand_worked_and_gradient_is_detached_weight_ga():
    """p = 0.5 and 0.25, weights 1, 1, beta = 1: (0.5 ln .5 + 0.25 ln .25) / 2 = -ln 2 / 2.
    Gradient wrt logp_t is w_t p_t^beta / sum w: the GA gradient with sg(p)^beta weights."""
    logp = torch.log(torch.tensor([[0.5, 0.25]], dtype=torch.float64)).requires_grad_()
    w = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    loss = wga_loss(logp, w)
    assert loss.item() == pytest.approx(-LN2 / 2)
    expected = torch.tensor([[0.25, 0.125]], dtype=torch.float64)
    torch.testing.assert_close(_grad(loss, logp), expected)
    # against GA with detached weights w * p^beta, rescaled to the same sum(w) normaliser
    logits, labels = _logits(), _labels()
    for beta in (0.5, 2.0):
        logp, mask = token_logprobs(logits, labels)
        w_eff = mask * torch.exp(beta * logp.detach())
        g_wga = _grad(wga_loss(logp, mask.double(), beta=beta), logits)
        logp, _ = token_logprobs(logits, labels)
        g_ga = _grad(ga_loss(logp, w_eff), logits) * w_eff.sum() / mask.sum()
        torch.testing.assert_close(g_wga, g_ga)


def _naive_topk_kl(logits, idx, ref_logp, weights):
    num = den = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            q = [math.exp(float(logits[b, t, int(i)])) for i in idx[b, t]]
            p = [math.exp(float(x)) for x in ref_logp[b, t]]
            q = [x / sum(q) for x in q]
            p = [x / sum(p) for x in p]
            kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            num += float(weights[b, t]) * kl
            den += float(weights[b, t])
    return num / den


def test_kl_anchor_zero_at_reference_positive_elsewhere():
    logits = _logits()
    w = torch.rand(B, T, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    idx, ref = topk_reference(logits, 3)
    assert idx.shape == ref.shape == (B, T, 3) and idx.dtype == torch.long
    at_ref = kl_anchor(logits, idx, ref, w)
    assert abs(at_ref.item()) < 1e-6 and at_ref.requires_grad
    moved = _logits(seed=5)
    kl = kl_anchor(moved, idx, ref, w)
    assert kl.item() > 1e-3
    assert kl.item() == pytest.approx(_naive_topk_kl(moved.detach(), idx, ref, w), rel=1e-5)


def test_kl_anchor_ignores_tokens_the_reference_rules_out():
    """Reference mass [1/2, 1/2, 0] (log 0 = -inf stored) vs model [1/4, 1/4, 1/2] on the same
    3 tokens: renormalised over them, KL = 2 * 1/2 * ln(1/2 / 1/4) = ln 2, not NaN."""
    logits = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]])).requires_grad_()
    idx = torch.tensor([[[0, 1, 2]]])
    ref = torch.log(torch.tensor([[[0.5, 0.5, 0.0]]]))
    kl = kl_anchor(logits, idx, ref, torch.ones(1, 1))
    assert kl.item() == pytest.approx(LN2)
    assert torch.isfinite(_grad(kl, logits)).all()


def test_kl_anchor_full_support_is_exact_kl():
    """With K = V nothing is truncated: the anchor equals KL(p_ref || p_theta) token-averaged."""
    ref_logits, logits = _logits(seed=2), _logits(seed=4)
    idx, ref = topk_reference(ref_logits, V)
    full = F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1).detach(),
                    log_target=True, reduction="none").sum(-1).mean()
    torch.testing.assert_close(kl_anchor(logits, idx, ref, torch.ones(B, T)), full,
                               atol=1e-6, rtol=1e-5)


def test_rmu_hand_worked():
    """H = 2. Forget: one counted position at control + [1, 1] -> ||.||^2 / H = 1 (the uncounted
    position at +100 is ignored). Retain: positions off by [2, 0] and [0, 0], both counted ->
    mean(4/2, 0) = 1. alpha = 3: loss = 1 + 3 * 1 = 4."""
    control = torch.tensor([0.5, -0.5])
    h_f = torch.stack([control + 1, control + 100]).reshape(1, 2, 2).requires_grad_()
    h_ref = torch.zeros(1, 2, 2)
    h_r = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    loss = rmu_loss(h_f, control, h_r, h_ref, torch.tensor([[1, 0]]), torch.tensor([[1, 1]]), 3.0)
    assert loss.item() == pytest.approx(4.0)
    g = _grad(loss, h_f)
    assert g[0, 1].abs().sum() == 0  # masked-out position gets no gradient


def test_every_loss_is_a_scalar_with_grad():
    logits, labels = _logits(), _labels()
    logp, mask = token_logprobs(logits, labels)
    w = mask.double()
    h = logits[..., :4]
    losses = [
        weighted_nll(logp, w), ga_loss(logp, w), npo_loss(logp, logp.detach() - 0.1, w),
        simnpo_loss(logp, w), wga_loss(logp, w), kl_anchor(logits, *topk_reference(logits, 3), w),
        rmu_loss(h, torch.ones(4), h, h.detach() + 1, mask, mask, 1.0),
    ]
    for loss in losses:
        assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss)


def test_option_scores_are_mean_answer_logprobs():
    logp = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, 0.0, 0.0], [-0.5, -0.5, -2.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    s = option_scores(logp, mask, n_options=2)
    assert s.tolist() == [[-2.0, -2.0], [-1.0, -4.0]]


def test_option_contrast_hand_worked_and_gradient_reaches_only_right_and_best_distractor():
    scores = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -0.2, -5.0, 0.0]], requires_grad=True)
    answer = torch.tensor([0, 1])
    valid = torch.tensor([[True] * 4, [True, True, True, False]])  # option 3 of row 1 is padding
    loss = option_contrast_loss(scores, answer, valid, margin=0.5, sharpness=2.0)
    # row 0: gap = -1 - (-0.5) + 0.5 = 0 -> softplus(0)/2 = ln2/2
    # row 1: padding (0.0) ignored; best distractor -1.0: gap = -0.2 + 1 + 0.5 = 1.3 -> softplus(2.6)/2
    expected = (LN2 / 2 + math.log1p(math.exp(2.6)) / 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    g = _grad(loss, scores)
    s0, s1 = 0.5, 1 / (1 + math.exp(-2.6))  # sigmoid(sharpness * gap)
    assert g[0].tolist() == pytest.approx([s0 / 2, 0.0, -s0 / 2, 0.0])
    assert g[1].tolist() == pytest.approx([-s1 / 2, s1 / 2, 0.0, 0.0])


def test_option_contrast_goes_flat_once_the_question_is_forgotten():
    scores = torch.tensor([[-9.0, -1.0, -2.0]], requires_grad=True)  # right option far below
    loss = option_contrast_loss(scores, torch.tensor([0]), torch.ones(1, 3, dtype=torch.bool), margin=0.5)
    assert loss.item() < 1e-30 and _grad(loss, scores).abs().max().item() < 1e-30


def test_concept_weighted_scores_by_hand():
    """Right answer (option 1) tokens log-lik (-1, -3): weights (1, 0) score it -1 (plain mean -2);
    uniform weights keep -2; all-zero weights keep the plain score; other options are untouched."""
    from hdsu_ray.core.losses import concept_weighted_scores

    scores = torch.tensor([[-5.0, -2.0, -4.0]])
    answer = torch.tensor([1])
    logp, mask = torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    got = concept_weighted_scores(scores, answer, logp, mask, torch.tensor([[1.0, 0.0, 9.0]]))
    assert got.tolist() == [[-5.0, -1.0, -4.0]]  # the weight on a non-answer token (9) is ignored
    assert concept_weighted_scores(scores, answer, logp, mask, torch.ones(1, 3)).tolist() == scores.tolist()
    assert concept_weighted_scores(scores, answer, logp, mask, torch.zeros(1, 3)).tolist() == scores.tolist()


def test_contrast_question_weight_scales_each_question():
    """Per question softplus(s*gap)/s; weights (1, 0) keep the first question's term and drop the
    second's; the batch mean divides by 2 either way."""
    from hdsu_ray.core.losses import option_contrast_loss

    scores = torch.tensor([[-1.0, -2.0], [-1.0, -2.0]])
    answer, valid = torch.tensor([0, 0]), torch.ones(2, 2, dtype=torch.bool)
    one = torch.nn.functional.softplus(torch.tensor(10.0 * 1.5)).item() / 10.0  # gap = -1 - (-2) + 0.5
    plain = option_contrast_loss(scores, answer, valid)
    assert plain.item() == pytest.approx(one)
    weighted = option_contrast_loss(scores, answer, valid, question_weight=torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(one / 2)
