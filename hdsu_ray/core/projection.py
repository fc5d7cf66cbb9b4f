"""Geometric-constrained updates: keep the forget step out of the retain gradients' span.

Strategy (a) of HDSU (arXiv 2511.19498, paper notes section 1.2 step 3). A small step ``-eta * u``
changes the retain loss of sample ``i`` by ``-eta * g_r,i . u`` to first order, so an update
orthogonal to every retain gradient leaves the retain losses unchanged to first order (GU,
arXiv 2511.17100; OrthoGrad, arXiv 2503.02312; GPM, arXiv 2103.09762 caches such a basis).

Everything here works on flat tensors: ``d`` is the number of trainable (LoRA or masked) entries,
``k`` the number of retain gradients. Gathering and flattening the gradients is the caller's job,
so this module never sees a model, a process group or a DeepSpeed engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "retain_basis",
    "slice_basis",
    "project_out",
    "project_out_metric",
    "first_order_retain_change",
]

# A retain gradient (or singular direction) whose part outside the earlier ones is below
# _RTOL_SCALE * k * eps of its own norm is treated as dependent, eps being that of the *input*
# precision (float32 for bf16/fp16/fp32, float64 for float64): float32 gradients cast to float64
# still carry float32 rounding, and a direction made only of that rounding must not be projected
# out. Capped so that a large k never declares genuinely different gradients dependent.
_RTOL_SCALE = 10.0
_RTOL_MAX = 1e-3
# svd: take the randomized path only when the requested rank is this many times below min(k, d).
_LOWRANK_FACTOR = 4
_OVERSAMPLE = 8
_POWER_ITERS = 2


def _rtol(G: Tensor) -> float:
    eps = torch.finfo(torch.float64 if G.dtype == torch.float64 else torch.float32).eps
    return min(_RTOL_SCALE * max(G.shape[0], 1) * eps, _RTOL_MAX)


def _qr_basis(A: Tensor, rtol: float) -> Tensor:
    """Orthonormal basis of the columns of ``A [d, k]``, in column order, skipping dependent ones.

    Unpivoted QR reads the rank correctly only up to the first dependent column: after it,
    Householder picks an arbitrary direction for that column's Q, and later columns may lean on
    it. So we drop the *first* column whose R diagonal is small against its own norm (it lies in
    the span of the columns before it) and factor again. Reruns happen once per dependent
    retain gradient, which is rare, and k is small.
    """
    norms = A.norm(dim=0)
    keep = list(range(A.shape[1]))
    while keep:
        Q, R = torch.linalg.qr(A[:, keep], mode="reduced")
        small = (R.diagonal().abs() <= rtol * norms[keep]).nonzero()
        if small.numel() == 0:
            return Q
        del keep[int(small[0])]
    return A.new_zeros(A.shape[0], 0)


def _randomized_svd(A: Tensor, q: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Top-``q`` left singular pairs of ``A [d, k]`` (Halko et al. 2011, with power iterations).

    Written out rather than calling ``torch.svd_lowrank`` so the sketch can take ``generator``
    and a sweep gets the same basis on every worker.
    """
    omega = torch.randn(A.shape[1], q, dtype=A.dtype, device=A.device, generator=generator)
    Y, _ = torch.linalg.qr(A @ omega)
    for _ in range(_POWER_ITERS):  # sharpen the spectrum so the sketch finds the top directions
        Z, _ = torch.linalg.qr(A.T @ Y)
        Y, _ = torch.linalg.qr(A @ Z)
    Ub, S, _ = torch.linalg.svd(Y.T @ A, full_matrices=False)
    return Y @ Ub, S


def retain_basis(
    G: Tensor,
    rank: int | None = None,
    method: str = "qr",
    energy: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Orthonormal basis ``U`` of the span of the retain gradient rows.

    Args:
        G: ``[k, d]`` retain gradients, one per row (per sample or per micro-batch).
        rank: keep at most this many directions. ``None`` keeps all independent ones.
        method: ``"qr"`` keeps the span of the leading retain gradients in row order;
            ``"svd"`` keeps the leading left singular directions of ``G.T``.
        energy: ``svd`` only. In ``(0, 1]``: keep the smallest ``r`` whose cumulative squared
            singular values reach ``energy * ||G||_F^2`` (then cap by ``rank``). The total is the
            exact Frobenius norm, so a randomized sketch that misses energy keeps all it found.
        generator: seeds the randomized SVD sketch, which is used when ``method="svd"`` and
            ``rank * 4 <= min(k, d)``.

    Returns:
        ``[d, r]`` with orthonormal columns, in ``G``'s dtype; ``r <= min(rank, k)``. Zero rows
        add nothing; an all-zero (or empty) ``G`` gives ``[d, 0]``.
    """
    if G.dim() != 2:
        raise ValueError(f"G must be [k, d], got shape {tuple(G.shape)}")
    if method not in ("qr", "svd"):
        raise ValueError(f"method must be 'qr' or 'svd', got {method!r}")
    if rank is not None and rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if energy is not None and method != "svd":
        raise ValueError("energy needs method='svd' (QR directions have no energy order)")
    d, rtol = G.shape[1], _rtol(G)
    # float64 throughout: Gram-type products of float32 gradients lose half their digits.
    A = G.detach().to(torch.float64)
    A = A[A.abs().amax(dim=1) > 0].T  # [d, k'] without zero rows
    if A.shape[1] == 0 or rank == 0:
        return G.new_zeros(d, 0)

    if method == "qr":
        U = _qr_basis(A, rtol)
    else:
        kk = min(A.shape)
        if rank is not None and energy is None and rank * _LOWRANK_FACTOR <= kk:
            U, S = _randomized_svd(A, min(rank + _OVERSAMPLE, kk), generator)
        else:
            U, S, _ = torch.linalg.svd(A, full_matrices=False)
        U = U[:, S > rtol * S[0]]  # numerically zero singular values span nothing
        S = S[: U.shape[1]]
        if energy is not None:
            cum = torch.cumsum(S**2, 0) / A.pow(2).sum()
            # 1e-12 slack: an energy of exactly 13/14 must stop at the direction that reaches it
            reached = (cum >= energy - 1e-12).nonzero()
            r = int(reached[0]) + 1 if reached.numel() else U.shape[1]
            U = U[:, :r]
    if rank is not None:
        U = U[:, :rank]
    return U.to(G.dtype)


def slice_basis(U: Tensor, rank: int) -> Tensor:
    """Leading ``min(rank, R)`` columns of ``U [d, R]``, so a rank sweep factors once.

    For an ``svd`` basis the columns are ordered by singular value, so the slice is exactly the
    rank-``rank`` truncation. For a ``qr`` basis the slice spans the first retain gradients in
    row order (skipping dependent ones), which is a different subspace from the SVD truncation.
    """
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return U[:, :rank]


def _work_dtype(*ts: Tensor) -> torch.dtype:
    # bf16/fp16 gradients lose the projection to rounding; compute in float32 at least.
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def project_out(g: Tensor, U: Tensor) -> Tensor:
    """Remove the part of ``g`` in the span of ``U``: ``g - U (U^T g)``.

    Args:
        g: ``[d]`` or ``[d, m]`` (e.g. the token-weighted forget gradient).
        U: ``[d, r]`` orthonormal columns from :func:`retain_basis`.

    Returns:
        Same shape and dtype as ``g``, orthogonal to every column of ``U``. ``r = 0`` returns
        ``g`` itself. ``U U^T`` is never formed: it would be ``[d, d]``.
    """
    if U.shape[0] != g.shape[0]:
        raise ValueError(f"g has {g.shape[0]} rows but U has {U.shape[0]}")
    if U.shape[1] == 0:
        return g
    wd = _work_dtype(g, U)
    gw, Uw = g.to(wd), U.to(wd)
    return (gw - Uw @ (Uw.T @ gw)).to(g.dtype)


def project_out_metric(g: Tensor, G: Tensor, metric_diag: Tensor, ridge: float = 1e-8) -> Tensor:
    """Forget gradient whose *preconditioned* step keeps the retain losses fixed to first order.

    The optimizer applies ``-eta * P g_perp`` with ``P = diag(metric_diag)`` (e.g.
    ``1 / (sqrt(v) + eps)`` for Adam, or an inverse Fisher diagonal). The retain losses change by
    ``-eta * G P g_perp``, so we want ``G P g_perp = 0`` while moving ``g`` as little as possible
    in the metric ``P``. Writing ``g_perp = g - G^T a`` gives ``G P g = (G P G^T) a``, hence::

        g_perp = g - G^T (G P G^T + lambda I)^{-1} G P g

    which is the ``P``-orthogonal projection onto the complement of ``span(G rows)`` under
    ``<x, y>_P = x^T P y``; ``P = I`` recovers the Euclidean :func:`project_out`. (The paper notes
    write it with gradients as columns, ``G_r (G_r^T F G_r)^{-1} G_r^T F g``.)

    Args:
        g: ``[d]`` forget gradient (``[d, m]`` also works).
        G: ``[k, d]`` retain gradients, one per row.
        metric_diag: ``[d]`` non-negative diagonal of ``P``.
        ridge: ``lambda`` relative to the mean diagonal of ``G P G^T``, so it does not depend on
            the gradients' scale; it regularises duplicate or dependent retain gradients. The
            residual ``G P g_perp`` is ``O(ridge)`` relative to ``G P g``.

    Returns:
        ``[d]`` in ``g``'s dtype. All-zero ``G P G^T`` returns ``g`` unchanged.
    """
    if G.dim() != 2 or G.shape[1] != g.shape[0] or metric_diag.shape != g.shape[:1]:
        raise ValueError(
            f"shapes: g {tuple(g.shape)}, G {tuple(G.shape)}, "
            f"metric_diag {tuple(metric_diag.shape)}"
        )
    # float64: the k x k system is tiny, and its conditioning is the square of G's.
    Gd, gd = G.detach().to(torch.float64), g.to(torch.float64)
    p = metric_diag.detach().to(torch.float64)
    if bool((p < 0).any()):
        raise ValueError("metric_diag must be non-negative (a preconditioner is PSD)")
    GP = Gd * p  # [k, d] = G P, without forming diag(p)
    M = GP @ Gd.T  # [k, k]
    scale = M.diagonal().mean() if M.numel() else M.new_zeros(())
    if M.numel() == 0 or scale <= 0:
        return g
    M = M + ridge * scale * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    a = torch.linalg.solve(M, GP @ gd)  # solve, never invert
    return (gd - Gd.T @ a).to(g.dtype)


def first_order_retain_change(g_update: Tensor, G: Tensor) -> Tensor:
    """``G @ g_update``: ``[k]`` directional derivatives of the retain losses along the update.

    A diagnostic: with ``g_update = P g_perp`` it should be ~0 for every retain gradient.
    """
    wd = _work_dtype(g_update, G)
    return G.to(wd) @ g_update.to(wd)
