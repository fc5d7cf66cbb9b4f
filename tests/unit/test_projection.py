"""Geometric-constrained updates (hdsu_ray.core.projection), against explicit float64 references."""

import math

import pytest
import torch

from hdsu_ray.core.projection import (
    first_order_retain_change,
    project_out,
    project_out_metric,
    retain_basis,
    slice_basis,
)

D, K = 12, 4


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _projector(U):
    """Explicit [d, d] projector onto span(U), the naive reference."""
    return U @ U.T


def _known_spectrum(s, d=D, seed=0):
    """G = A diag(s) B^T with orthonormal A [k, k], B [d, k]: singular values s, right vectors B."""
    A, _ = torch.linalg.qr(_rand(len(s), len(s), seed=seed))
    B, _ = torch.linalg.qr(_rand(d, len(s), seed=seed + 1))
    return A @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ B.T, B


@pytest.mark.parametrize("method", ["qr", "svd"])
def test_basis_is_orthonormal_and_spans_rows(method):
    G = _rand(K, D)
    U = retain_basis(G, method=method)
    assert U.shape == (D, K)
    torch.testing.assert_close(U.T @ U, torch.eye(K, dtype=torch.float64))
    # every retain gradient lies in span(U): the explicit projector leaves it unchanged
    torch.testing.assert_close(G @ _projector(U), G)


def test_basis_keeps_input_dtype():
    U = retain_basis(_rand(K, D, dtype=torch.float32))
    assert U.dtype == torch.float32


@pytest.mark.parametrize("method", ["qr", "svd"])
def test_zero_retain_gradients_give_empty_basis_and_noop_projection(method):
    U = retain_basis(torch.zeros(K, D), method=method)
    assert U.shape == (D, 0)
    g = _rand(D)
    assert torch.equal(project_out(g, U), g)
    assert torch.equal(project_out_metric(g, torch.zeros(K, D), torch.ones(D)), g)


@pytest.mark.parametrize("method", ["qr", "svd"])
def test_zero_rows_add_nothing(method):
    G = _rand(K, D)
    with_zeros = torch.cat([torch.zeros(1, D), G[:2], torch.zeros(2, D), G[2:]])
    U0, U1 = retain_basis(G, method=method), retain_basis(with_zeros, method=method)
    assert U1.shape == U0.shape
    torch.testing.assert_close(_projector(U1), _projector(U0))


@pytest.mark.parametrize("method", ["qr", "svd"])
def test_dependent_rows_are_dropped_and_span_is_kept(method):
    """Rows a, 2a, b: rank 2. Dropping by R's diagonal alone would lose b, because unpivoted
    QR gives the dependent column 2a an arbitrary Q direction that b then leans on."""
    a, b = _rand(D, seed=1), _rand(D, seed=2)
    U = retain_basis(torch.stack([a, 2 * a, b]), method=method)
    assert U.shape == (D, 2)
    for v in (a, b):
        assert project_out(v, U).norm() < 1e-10 * v.norm()


def test_qr_slice_spans_the_first_retain_gradients():
    G = _rand(K, D)
    U1 = slice_basis(retain_basis(G, method="qr"), 1)
    torch.testing.assert_close(_projector(U1), torch.outer(G[0], G[0]) / G[0].dot(G[0]))


def test_svd_slice_is_the_rank_truncation():
    G, B = _known_spectrum([5.0, 3.0, 2.0, 1.0])
    U = retain_basis(G, method="svd")
    for r in range(5):
        torch.testing.assert_close(_projector(slice_basis(U, r)), _projector(B[:, :r]))
        torch.testing.assert_close(
            _projector(retain_basis(G, rank=r, method="svd")), _projector(B[:, :r])
        )
    assert slice_basis(U, 10).shape == (D, 4)


@pytest.mark.parametrize(
    "energy, r",
    # s = 3, 2, 1: cumulative energy 9/14 = 0.643, 13/14 = 0.929, 14/14
    [(0.5, 1), (9 / 14, 1), (0.9, 2), (13 / 14, 2), (0.93, 3), (1.0, 3)],
)
def test_energy_threshold_picks_smallest_rank(energy, r):
    G, B = _known_spectrum([3.0, 2.0, 1.0])
    U = retain_basis(G, method="svd", energy=energy)
    assert U.shape == (D, r)
    torch.testing.assert_close(_projector(U), _projector(B[:, :r]))


def test_energy_is_capped_by_rank():
    G, _ = _known_spectrum([3.0, 2.0, 1.0])
    assert retain_basis(G, rank=1, method="svd", energy=1.0).shape == (D, 1)


def test_rank_caps():
    G = _rand(K, D)
    assert retain_basis(G, rank=0).shape == (D, 0)
    assert retain_basis(G, rank=2).shape == (D, 2)
    assert retain_basis(G, rank=99).shape == (D, K)


def test_randomized_svd_matches_exact_top_subspace():
    """k = 24 rows, rank 3 << 24: the generator-seeded sketch must find the same top-3 subspace."""
    s = [10.0, 8.0, 6.0] + [0.1 / (i + 1) for i in range(21)]
    G, B = _known_spectrum(s, d=40)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    U = retain_basis(G, rank=3, method="svd", generator=gen())
    assert U.shape == (40, 3)
    torch.testing.assert_close(_projector(U), _projector(B[:, :3]), atol=1e-6, rtol=0)
    assert torch.equal(U, retain_basis(G, rank=3, method="svd", generator=gen()))


def test_project_out_matches_explicit_projector_and_is_idempotent():
    U = retain_basis(_rand(K, D))
    g = _rand(D, seed=3)
    out = project_out(g, U)
    torch.testing.assert_close(out, (torch.eye(D, dtype=torch.float64) - _projector(U)) @ g)
    torch.testing.assert_close(U.T @ out, torch.zeros(K, dtype=torch.float64))
    torch.testing.assert_close(project_out(out, U), out)
    m = _rand(D, 3, seed=4)  # [d, m] projects each column
    torch.testing.assert_close(project_out(m, U)[:, 1], project_out(m[:, 1], U))


def test_bf16_gradients_keep_full_rank():
    """32 random bf16 rows are independent: the dependence tolerance must not scale with bf16 eps
    (10 * 32 * 2^-7 > 1 would drop every row)."""
    G = _rand(32, 64, dtype=torch.float32).to(torch.bfloat16)
    for method in ("qr", "svd"):
        U = retain_basis(G, method=method)
        assert U.shape == (64, 32) and U.dtype == torch.bfloat16


def test_project_out_bf16_keeps_dtype():
    U = retain_basis(_rand(K, D, dtype=torch.float32))
    g = _rand(D, seed=3, dtype=torch.float32).to(torch.bfloat16)
    out = project_out(g, U)
    assert out.dtype == torch.bfloat16
    assert (U.T @ out.float()).abs().max() < 0.05 * g.float().norm()


def test_metric_projection_is_first_order_neutral_for_the_preconditioned_step():
    G, g = _rand(K, D), _rand(D, seed=3)
    p = _rand(D, seed=5).abs() + 0.1  # e.g. Adam's 1 / (sqrt(v) + eps)
    g_perp = project_out_metric(g, G, p)
    # the step the optimizer takes is P g_perp; it must not move any retain loss to first order
    assert first_order_retain_change(p * g_perp, G).abs().max() < 1e-6 * g.norm()
    # naive reference: explicit diag(P) and explicit inverse
    P = torch.diag(p)
    expected = g - G.T @ torch.linalg.inv(G @ P @ G.T) @ G @ P @ g
    torch.testing.assert_close(g_perp, expected, atol=1e-7, rtol=1e-6)
    # and the plain (unpreconditioned) projection is NOT neutral for that step
    assert first_order_retain_change(p * project_out(g, retain_basis(G)), G).abs().max() > 1e-3


def test_metric_projection_with_unit_metric_is_euclidean():
    G, g = _rand(K, D), _rand(D, seed=3)
    torch.testing.assert_close(
        project_out_metric(g, G, torch.ones(D, dtype=torch.float64)),
        project_out(g, retain_basis(G)),
        atol=1e-7,
        rtol=1e-6,
    )


def test_metric_projection_handles_dependent_rows_through_ridge():
    a, b, g = _rand(D, seed=1), _rand(D, seed=2), _rand(D, seed=3)
    G = torch.stack([a, 3 * a, b])
    p = _rand(D, seed=5).abs() + 0.1
    g_perp = project_out_metric(g, G, p)
    assert torch.isfinite(g_perp).all()
    assert first_order_retain_change(p * g_perp, G).abs().max() < 1e-6 * g.norm()


def test_metric_projection_rejects_negative_metric():
    with pytest.raises(ValueError):
        project_out_metric(_rand(D), _rand(K, D), -torch.ones(D))


def test_first_order_retain_change_is_the_dot_with_each_row():
    G, u = _rand(K, D), _rand(D, seed=3)
    expected = torch.tensor([sum(G[i, j] * u[j] for j in range(D)) for i in range(K)])
    torch.testing.assert_close(first_order_retain_change(u, G), expected.to(torch.float64))
    assert first_order_retain_change(project_out(u, retain_basis(G)), G).abs().max() < 1e-12


def test_bad_arguments_raise():
    G = _rand(K, D)
    with pytest.raises(ValueError):
        retain_basis(G, method="eig")
    with pytest.raises(ValueError):
        retain_basis(G, energy=0.9)  # energy needs svd
    with pytest.raises(ValueError):
        retain_basis(G, method="svd", energy=1.5)
    with pytest.raises(ValueError):
        project_out(_rand(D + 1), retain_basis(G))
    assert not math.isnan(float(project_out(_rand(D), retain_basis(G)).sum()))
