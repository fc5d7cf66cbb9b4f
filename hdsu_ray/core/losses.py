"""Token-weighted forget and retain losses over log-prob, logit and hidden-state tensors.

Strategy (b) of HDSU (arXiv 2511.19498, paper notes section 1.2 steps 1 and 4): each token gets a
weight from the concept hierarchy (unlearning-targeted tokens high, preservation-critical tokens
0 in the forget loss), and the forget losses below average over tokens with those weights.

Functions take tensors, never models, so the same code runs under DDP, ZeRO or on one CPU
(torchtune's ``DPOLoss`` works the same way). Shapes: ``B`` sequences, ``T`` positions, ``V``
vocabulary, ``K`` stored reference tokens, ``H`` hidden size. ``weights`` are non-negative and
must be 0 wherever the label is ignored. Every loss returns a scalar tensor that carries grad,
also when all weights are 0 (then it is 0, or a constant, with zero gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "token_logprobs",
    "weighted_nll",
    "sequence_logprob",
    "ga_loss",
    "npo_loss",
    "simnpo_loss",
    "wga_loss",
    "topk_reference",
    "kl_anchor",
    "rmu_loss",
    "option_scores",
    "option_contrast_loss",
]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 only when every weight is 0; then num is 0 too and the result 0 keeps the graph.
    return num / torch.where(den > 0, den, torch.ones_like(den))


def token_logprobs(
    logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """Log-probability of each label token.

    The logits must ALREADY be shifted: ``logits[:, t]`` predicts ``labels[:, t]``. For a causal
    LM that means ``logits[:, :-1]`` with ``input_ids[:, 1:]`` (or labels shifted by the collator).

    Args:
        logits: ``[B, T, V]``.
        labels: ``[B, T]`` token ids, ``ignore_index`` where no loss applies (prompt, padding).

    Returns:
        ``(logp [B, T], mask [B, T] bool)``; ``logp`` is 0 where ``mask`` is False. Computed as
        ``logit[label] - logsumexp(logits)`` (as TRL's ``selective_log_softmax``), which never
        holds a second ``[B, T, V]`` tensor; half-precision logits are upcast to float32 first.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    mask = labels != ignore_index
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    safe = torch.where(mask, labels, torch.zeros_like(labels))  # gather needs a valid index
    logp = x.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)
    return torch.where(mask, logp, torch.zeros_like(logp)), mask


def weighted_nll(logp: Tensor, weights: Tensor) -> Tensor:
    """``sum(w * -logp) / sum(w)``: token-weighted negative log-likelihood.

    Args:
        logp: ``[B, T]`` from :func:`token_logprobs`.
        weights: ``[B, T]``, 0 outside the label mask. ``weights = mask.float()`` gives the plain
            token-mean NLL, equal to ``F.cross_entropy(..., ignore_index=-100)``.

    Returns:
        Scalar; 0 (with grad) when all weights are 0.
    """
    w = weights.to(logp.dtype)
    return _safe_div((w * -logp).sum(), w.sum())


def sequence_logprob(logp: Tensor, weights: Tensor) -> Tensor:
    """``[B]`` weighted sequence log-likelihood ``sum_t w_t logp_t``."""
    return (weights.to(logp.dtype) * logp).sum(dim=-1)


def ga_loss(logp: Tensor, weights: Tensor) -> Tensor:
    """Token-weighted gradient ascent on the forget set: ``-weighted_nll`` (minimised)."""
    return -weighted_nll(logp, weights)


def npo_loss(logp: Tensor, ref_logp: Tensor, weights: Tensor, beta: float = 0.1) -> Tensor:
    """Token-weighted Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868).

    ``-(2/beta) * mean_b log sigmoid(-beta * sum_t w_t (logp - ref_logp))``. At ``logp ==
    ref_logp`` it is ``(2/beta) ln 2``; it falls towards 0 as the model's likelihood of the
    forget answer drops below the reference's, which bounds the push (unlike GA).

    Args:
        logp: ``[B, T]`` current model. ref_logp: ``[B, T]`` frozen reference (detached here).
        weights: ``[B, T]``. beta: inverse temperature.
    """
    ratio = sequence_logprob(logp - ref_logp.detach(), weights)
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def simnpo_loss(logp: Tensor, weights: Tensor, beta: float = 2.5, delta: float = 0.0) -> Tensor:
    """Token-weighted SimNPO (Fan et al. 2024, arXiv 2410.07163): NPO without a reference model.

    ``-(2/beta) * mean_b log sigmoid(-(beta/|y|) log pi(y|x) - delta)`` with
    ``log pi(y|x) = sum_t w_t logp_t`` and length ``|y| = sum_t w_t``. A sequence whose weights
    are all 0 adds the constant ``-(2/beta) log sigmoid(-delta)`` with no gradient.
    """
    w = weights.to(logp.dtype)
    avg = _safe_div(sequence_logprob(logp, w), w.sum(dim=-1))
    return -(2.0 / beta) * F.logsigmoid(-beta * avg - delta).mean()


def wga_loss(logp: Tensor, weights: Tensor, beta: float = 1.0) -> Tensor:
    """Weighted gradient ascent (Wang et al. 2025, arXiv 2502.19301).

    Each token's GA term is scaled by ``sg(p_t)^beta``, so tokens already forgotten (small
    ``p_t``) stop pushing and the ascent does not diverge:
    ``sum_t w_t sg(p_t)^beta logp_t / sum_t w_t``. The gradient is that of GA with the
    detached weights ``w_t p_t^beta``, still normalised by ``sum w``.
    """
    w = weights.to(logp.dtype)
    conf = torch.exp(beta * logp.detach())  # = sg(p_t)^beta; no grad through the weight
    return _safe_div((w * conf * logp).sum(), w.sum())


@torch.no_grad()
def topk_reference(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Stored form of the reference distribution for :func:`kl_anchor`.

    Args:
        logits: ``[B, T, V]`` reference model logits (shifted like :func:`token_logprobs`).
        k: tokens kept per position.

    Returns:
        ``(idx [B, T, K] long, logp [B, T, K] float32)``: the reference's top-K tokens and their
        full-vocabulary log-probs (not renormalised; :func:`kl_anchor` does that).
    """
    logp, idx = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return idx, logp


def kl_anchor(
    logits: Tensor, ref_topk_idx: Tensor, ref_topk_logp: Tensor, weights: Tensor
) -> Tensor:
    """``KL(p_ref || p_theta)`` on the reference's top-K support, weighted over tokens.

    Both distributions are restricted to the K stored tokens and renormalised there, so the
    reference costs K log-probs per token instead of V and no second model has to be resident
    while unlearning. The approximation: the anchor sees only how mass is shared *among* those K
    tokens; moving mass from the whole set to other tokens costs nothing. Keep K large enough
    that the reference's top-K mass is near 1 on preservation-critical tokens.

    Args:
        logits: ``[B, T, V]`` current model (shifted like :func:`token_logprobs`).
        ref_topk_idx: ``[B, T, K]`` long, from :func:`topk_reference`.
        ref_topk_logp: ``[B, T, K]`` reference log-probs of those tokens.
        weights: ``[B, T]``, e.g. 1 on preservation-critical tokens, 0 elsewhere.

    Returns:
        Scalar ``sum_t w_t KL_t / sum_t w_t``; 0 when ``logits`` equal the reference's.
    """
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    # softmax over the gathered logits == p_theta restricted to the K tokens and renormalised
    log_q = torch.log_softmax(x.gather(-1, ref_topk_idx), dim=-1)
    ref = ref_topk_logp.detach().to(log_q.dtype)
    log_p = ref - torch.logsumexp(ref, dim=-1, keepdim=True)
    p = log_p.exp()
    # 0 * log 0 = 0: a stored -inf (a token the reference rules out) must not turn into NaN
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)  # [B, T]
    w = weights.to(kl.dtype)
    return _safe_div((w * kl).sum(), w.sum())


def rmu_loss(
    h_forget: Tensor,
    control: Tensor,
    h_retain: Tensor,
    h_retain_ref: Tensor,
    forget_mask: Tensor,
    retain_mask: Tensor,
    alpha: float,
) -> Tensor:
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP, arXiv 2403.03218).

    Pushes the hidden states of forget tokens towards a fixed random control vector and keeps
    retain tokens' hidden states at the frozen model's::

        mean_{forget t} ||h_t - control||^2 / H + alpha * mean_{retain t} ||h_t - h_ref_t||^2 / H

    Args:
        h_forget: ``[B, T, H]`` updated model's hidden states (one layer) on forget text.
        control: ``[H]``, ``c * u`` with ``u`` a unit random vector and ``c`` a steering scale.
        h_retain: ``[B, T, H]`` updated model on retain text.
        h_retain_ref: ``[B, T, H]`` frozen model on the same retain text (detached here).
        forget_mask, retain_mask: ``[B, T]``; positions that count (token weights work too).
        alpha: retain coefficient.
    """
    H = h_forget.shape[-1]
    fm = forget_mask.to(h_forget.dtype)
    rm = retain_mask.to(h_retain.dtype)
    d_forget = (h_forget - control.detach()).square().sum(dim=-1) / H  # [B, T]
    d_retain = (h_retain - h_retain_ref.detach()).square().sum(dim=-1) / H
    forget = _safe_div((fm * d_forget).sum(), fm.sum())
    retain = _safe_div((rm * d_retain).sum(), rm.sum())
    return forget + alpha * retain


def option_scores(logp: Tensor, mask: Tensor, n_options: int) -> Tensor:
    """``[B, K]`` mean answer-token log-likelihood of every option, the evaluation's MCQ score.

    Args:
        logp, mask: ``[B * K, T]`` from :func:`token_logprobs` over option rows, the K options of
            question b in rows ``b * K ... b * K + K - 1``.
        n_options: K.
    """
    m = mask.to(logp.dtype)
    total = (logp * m).sum(dim=-1)
    return _safe_div(total, m.sum(dim=-1)).view(-1, n_options)


def concept_weighted_scores(scores: Tensor, answer: Tensor, logp_right: Tensor, mask_right: Tensor,
                            weights: Tensor) -> Tensor:
    """``scores`` with each right option's score replaced by its concept-weighted mean.

    The concept-aware token intervention inside the question-conditioned loss: the right answer's
    tokens count by their concept weight (targeted concepts fully, neutral tokens little,
    preservation-critical ones not at all), so the loss pushes hardest on the tokens that carry
    the concept to forget. Uniform weights give back the plain mean, the evaluation's score; a
    right answer whose tokens all weigh 0 keeps its plain score.

    Args:
        scores: ``[B, K]`` from :func:`option_scores`.
        answer: ``[B]`` index of the right option.
        logp_right, mask_right: ``[B, T]`` token log-likelihoods and answer mask of the right option.
        weights: ``[B, T]`` concept weight of each of those tokens.

    Example: right-answer log-likelihoods (-1, -3), weights (1, 0) -> weighted score -1 (plain -2).
    """
    w = weights.to(logp_right.dtype) * mask_right.to(logp_right.dtype)
    total = w.sum(dim=-1)
    weighted = _safe_div((logp_right * w).sum(dim=-1), total)
    plain = scores.gather(1, answer[:, None])[:, 0]
    right = torch.where(total > 0, weighted, plain)
    return scores.scatter(1, answer[:, None], right[:, None])


def option_contrast_loss(scores: Tensor, answer: Tensor, valid: Tensor, margin: float = 0.5,
                         sharpness: float = 10.0, question_weight: Tensor | None = None) -> Tensor:
    """Question-conditioned forget loss: rank the right option below the best distractor.

    ``mean_b softplus(s * (score_right - max_distractor + margin)) / s`` with ``s`` the
    sharpness. Unlike GA it is bounded and goes flat once the right answer sits ``margin`` below a
    distractor, so a forgotten question stops pulling on the shared weights; it moves the right
    option down *and* the best distractor up, the smallest change that flips the model's choice.

    Args:
        scores: ``[B, K]`` from :func:`option_scores`.
        answer: ``[B]`` long, index of the right option.
        valid: ``[B, K]`` bool, False for padding options (a question with fewer than K).
        margin: log-likelihood gap (nats per token) to open below the best distractor.
        sharpness: ``s``; large values approach the hinge ``max(0, gap + margin)``.
        question_weight: ``[B]`` how much each question counts (its strongest concept weight);
            ``None`` counts every question 1. The mean is over the batch, not over the weights, so
            a question about no targeted concept pulls only as hard as its weight says.

    Returns:
        Scalar; ``ln(2) / s`` per question when right and best distractor tie and ``margin = 0``.
    """
    right = scores.gather(1, answer[:, None])[:, 0]
    is_right = torch.zeros_like(valid).scatter_(1, answer[:, None], True)
    distractors = scores.masked_fill(is_right | ~valid, float("-inf"))
    gap = right - distractors.max(dim=1).values + margin
    per_question = F.softplus(sharpness * gap) / sharpness
    if question_weight is not None:
        per_question = per_question * question_weight.to(per_question.dtype)
    return per_question.mean()
