"""Per-sample statistics of a causal LM on ``prompt + answer`` texts (torch; no Ray).

:func:`sequence_stats` gives, for every item, the membership-inference scores (LOSS, zlib, Min-k%,
Min-k%++) and the memorisation scores (Exact Memorization, Extraction Strength) that
OpenUnlearning computes, from ONE teacher-forced forward pass per batch. Texts are encoded with
:func:`hdsu_ray.data.encode.encode_texts` (the same encoding as training and MCQ scoring), and
every statistic is taken over the answer tokens only: the positions whose label is not -100 after
:func:`hdsu_ray.data.encode.shift`. The metrics in :mod:`hdsu_ray.eval.metrics` consume these
arrays. Formulas, orientations and sources: ``docs/metrics.md``.

MIA scores are oriented *higher = more non-member-like* (less memorised), so they feed
:func:`hdsu_ray.eval.metrics.mia_auc` unchanged. EM and ES are *higher = more memorised*.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from hdsu_ray.core.losses import token_logprobs
from hdsu_ray.data.encode import IGNORE, encode_texts, shift
from hdsu_ray.eval.metrics import Absent

__all__ = ["sequence_stats", "encoded_stats", "perplexity", "STAT_KEYS", "MINKPP_MIN_VAR", "n_lowest"]

STAT_KEYS = ("loss", "zlib", "min_k", "min_k_pp", "exact_memorization", "extraction_strength")
# Min-k%++ divides by sigma_t; the variance is clamped here as in OpenUnlearning
# (src/evals/metrics/mia/min_k_plus_plus.py), so a near-deterministic position cannot blow up.
MINKPP_MIN_VAR = 1e-6


def n_lowest(n_tokens: int, k: float) -> int:
    """How many tokens Min-k% averages: ``max(1, floor(k * T))``.

    This is the rounding of every reference implementation (Min-K% Prob and Min-K%++ authors'
    code, OpenUnlearning ``min_k.py``/``min_k_plus_plus.py``); anchors.md writes ``ceil(kT)``,
    which differs on short answers (T=3, k=0.4: 1 token here, 2 with ceil).
    """
    return max(1, int(n_tokens * k))


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-less stub
        return torch.device("cpu")


def _answer_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token quantities on the answer positions only.

    Args:
        logits: ``[M, V]`` float64 logits that predict ``labels`` (already shifted, already
            restricted to answer positions).
        labels: ``[M]`` token ids.

    Returns:
        ``logp [M]`` (log p of the label), ``z [M]`` (Min-k%++ z-score), ``match [M]`` bool
        (greedy prediction equals the label).
    """
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    # mu_t = E_{v~p} log p(v); 0 * log 0 = 0 where a logit is -inf
    safe_lp = torch.where(p > 0, logp_all, torch.zeros_like(logp_all))
    mu = (p * safe_lp).sum(-1)
    # sigma_t^2 = E log^2 p - mu^2, computed as E (log p - mu)^2 (same value, no cancellation)
    var = (p * torch.where(p > 0, (logp_all - mu.unsqueeze(-1)) ** 2, torch.zeros_like(logp_all))).sum(-1)
    z = (logp - mu) / var.clamp(min=MINKPP_MIN_VAR).sqrt()
    match = logits.argmax(-1) == labels
    return {"logp": logp, "z": z, "match": match}


def _trailing_run(match: np.ndarray) -> int:
    """Length of the run of True at the end of ``match``."""
    misses = np.flatnonzero(~match)
    return int(match.size if misses.size == 0 else match.size - 1 - misses[-1])


def sequence_stats(model, tokenizer, prompts: list[str], answers: list[str], max_len: int,
                   batch_size: int = 32, k: float = 0.4) -> dict[str, np.ndarray]:
    """Per-item MIA and memorisation statistics of ``model`` on ``prompt + answer``.

    With ``logp_t`` the log-probability of answer token t (t = 0..T-1) under teacher forcing:

    - ``loss``: ``-mean_t logp_t``.
    - ``zlib``: ``loss / len(zlib.compress(answer_text.encode("utf-8")))``, the answer text being
      the decoded scored answer tokens (OpenUnlearning's ``extract_target_texts``).
    - ``min_k``: ``-mean`` of the ``n_lowest(T, k)`` smallest ``logp_t``.
    - ``min_k_pp``: the same on ``z_t = (logp_t - mu_t) / sigma_t`` with ``mu_t = E_{v~p_t} log p_t(v)``
      and ``sigma_t^2 = Var_{v~p_t} log p_t(v)`` over the full next-token distribution
      (variance clamped at :data:`MINKPP_MIN_VAR`).
    - ``exact_memorization``: share of answer tokens whose argmax prediction equals the label.
    - ``extraction_strength``: ``1 - k*/T`` with ``k*`` the smallest 0-based index such that
      every answer token from ``k*`` on is predicted (argmax) correctly; 1 if all are, 0 if the
      last is not (OpenUnlearning's loop yields ``1/T`` there instead).

    Args:
        model: a causal LM (``model(input_ids=..., attention_mask=...).logits``), any device and
            dtype (the answer positions' logits are upcast to float64). Left in the train/eval mode it came in.
        tokenizer: its tokenizer (with a pad token).
        prompts, answers: parallel lists; see :func:`hdsu_ray.data.text.qa_text`.
        max_len: token limit per text; longer prompts lose their left side (``encode_texts``).
        batch_size: texts per forward pass.
        k: Min-k% fraction (0.4 as OpenUnlearning's configs and MUSE PrivLeak).

    Returns:
        ``{key: [N] float64}`` for every key of :data:`STAT_KEYS`, plus ``"n_tokens"``
        ``[N] int64`` (answer tokens scored). An item with no answer token has ``n_tokens`` 0 and
        NaN in every statistic (no number is made up for it).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must lie in (0, 1], got {k}")
    n = len(prompts)
    out = _empty_stats(n)
    for begin in range(0, n, batch_size):
        stop = min(n, begin + batch_size)
        enc = encode_texts(tokenizer, list(prompts[begin:stop]), list(answers[begin:stop]), max_len)
        _fill_batch(model, tokenizer, enc, k, out, begin)
    return out


def encoded_stats(model, tokenizer, enc: dict[str, np.ndarray], batch_size: int = 32,
                  k: float = 0.4) -> dict[str, np.ndarray]:
    """:func:`sequence_stats` on already encoded rows.

    Args:
        enc: ``input_ids``, ``attention_mask`` and ``labels`` ``[N, L]`` arrays laid out as
            :func:`hdsu_ray.data.encode.encode_texts` returns them (right-padded, labels -100
            outside the answer, unshifted).
        tokenizer: used only to decode the answer tokens for the zlib score.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must lie in (0, 1], got {k}")
    n = int(enc["input_ids"].shape[0])
    out = _empty_stats(n)
    for begin in range(0, n, batch_size):
        part = {key: enc[key][begin:begin + batch_size] for key in ("input_ids", "attention_mask", "labels")}
        _fill_batch(model, tokenizer, part, k, out, begin)
    return out


def _empty_stats(n: int) -> dict[str, np.ndarray]:
    out = {key: np.full(n, np.nan) for key in STAT_KEYS}
    out["n_tokens"] = np.zeros(n, dtype=np.int64)
    return out


def _fill_batch(model, tokenizer, enc: dict[str, np.ndarray], k: float, out: dict[str, np.ndarray],
                begin: int) -> None:
    """One forward pass over the rows of ``enc``; writes rows ``begin..`` of ``out``."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.as_tensor(enc["input_ids"], dtype=torch.long, device=device)
            attn = torch.as_tensor(enc["attention_mask"], dtype=torch.long, device=device)
            logits = model(input_ids=ids, attention_mask=attn).logits
            logits, labels = shift(logits, torch.as_tensor(enc["labels"], dtype=torch.long, device=device))
            mask = labels != IGNORE
            # [M, V]: answer positions of the whole batch, row-major. float64 because mu_t and
            # sigma_t are sums over the vocabulary and Min-k%++ divides by sigma_t (>= 1e-3):
            # float32 rounding alone moves z by ~1e-3 on a flat distribution. M is small.
            sel = logits[mask].double()
            tok = _answer_token_stats(sel, labels[mask])
    finally:
        model.train(was_training)
    logp = tok["logp"].double().cpu().numpy()
    z = tok["z"].double().cpu().numpy()
    match = tok["match"].cpu().numpy()
    label_ids = labels[mask].cpu().numpy()
    counts = mask.sum(-1).cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for row, T in enumerate(counts.tolist()):
        i = begin + row
        out["n_tokens"][i] = T
        if T == 0:
            continue
        a, b = offsets[row], offsets[row + 1]
        lp, zz, mt = logp[a:b], z[a:b], match[a:b]
        m = n_lowest(T, k)
        loss = float(-lp.mean())
        text = tokenizer.decode(label_ids[a:b].tolist(), skip_special_tokens=True)
        out["loss"][i] = loss
        out["zlib"][i] = loss / len(zlib.compress(text.encode("utf-8")))
        out["min_k"][i] = float(-np.sort(lp)[:m].mean())
        out["min_k_pp"][i] = float(-np.sort(zz)[:m].mean())
        out["exact_memorization"][i] = float(mt.mean())
        out["extraction_strength"][i] = _trailing_run(mt) / T


def perplexity(model, tokenizer, texts: list[str], max_len: int, batch_size: int = 16) -> float | Absent:
    """Token-level perplexity ``exp(sum NLL / number of tokens)`` pooled over all texts.

    Every token after BOS is predicted (``encode_texts(..., loss_on="all")`` with an empty
    prompt); texts longer than ``max_len`` lose their beginning, as in ``encode_texts``. Lower is
    more fluent. :class:`Absent` when there is no token to predict.
    """
    if not texts:
        return Absent("no texts")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start:start + batch_size])
                enc = encode_texts(tokenizer, [""] * len(chunk), chunk, max_len, loss_on="all")
                ids = torch.from_numpy(enc["input_ids"]).to(device)
                attn = torch.from_numpy(enc["attention_mask"]).to(device)
                logits = model(input_ids=ids, attention_mask=attn).logits
                lg, lab = shift(logits, torch.from_numpy(enc["labels"]).to(device))
                logp, mask = token_logprobs(lg.float(), lab)
                total += float(-(logp.double() * mask).sum())
                count += int(mask.sum())
    finally:
        model.train(was_training)
    if count == 0:
        return Absent("no token to predict")
    return float(np.exp(total / count))
