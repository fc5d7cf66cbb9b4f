"""The parameter budget (hdsu_ray.core.budget): Fisher scores, exact top-k masks, flattening."""

import pytest
import torch

from hdsu_ray.core.budget import (
    cap_rows,
    fisher_diagonal,
    fisher_ratio,
    kth_largest,
    mask_fraction,
    masked_flat,
    scatter_flat,
    top_fraction_masks,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _params(shapes, seed=0):
    return {n: torch.randn(*s, generator=_gen(seed + i)) for i, (n, s) in enumerate(shapes.items())}


# 10,007 entries over four tensors of awkward sizes
SHAPES = {"w1": (50, 101), "b1": (7,), "w2": (40, 100), "b2": (950,)}
N = 10_007


def _naive_top(scores, k):
    """Reference: stable descending sort of the concatenation, first k indices win."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order[:k]] = True
    return chosen


def test_fisher_diagonal_is_mean_of_squares():
    """Two samples with grads [1, -2] and [3, 0]: F = [(1 + 9) / 2, (4 + 0) / 2] = [5, 2]."""
    grads = ({"w": torch.tensor(v)} for v in ([1.0, -2.0], [3.0, 0.0]))  # a generator works
    torch.testing.assert_close(fisher_diagonal(grads)["w"], torch.tensor([5.0, 2.0]))


def test_fisher_diagonal_matches_loop_and_upcasts_bf16():
    samples = [_params({"a": (3, 4), "b": (5,)}, seed=s) for s in range(6)]
    F = fisher_diagonal([{k: v.to(torch.bfloat16) for k, v in s.items()} for s in samples])
    assert F["a"].dtype == torch.float32
    for name in ("a", "b"):
        expected = sum(s[name].to(torch.bfloat16).float() ** 2 for s in samples) / len(samples)
        torch.testing.assert_close(F[name], expected)


def test_fisher_diagonal_rejects_empty_and_mismatched():
    with pytest.raises(ValueError):
        fisher_diagonal([])
    with pytest.raises(KeyError):
        fisher_diagonal([{"a": torch.ones(2)}, {"b": torch.ones(2)}])


def test_fisher_ratio():
    """F_f = [2, 0, 4], F_r = [1, 0, 3], eps = 1e-8: ratio = [2/(1+eps), 0, 4/(3+eps)]."""
    r = fisher_ratio({"w": torch.tensor([2.0, 0.0, 4.0])}, {"w": torch.tensor([1.0, 0.0, 3.0])})
    torch.testing.assert_close(r["w"], torch.tensor([2 / (1 + 1e-8), 0.0, 4 / (3 + 1e-8)]))
    with pytest.raises(KeyError):
        fisher_ratio({"w": torch.ones(1)}, {"v": torch.ones(1)})


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5, 1.0, 1e-9])
def test_top_fraction_count_is_exact(fraction):
    scores = _params(SHAPES)
    assert sum(s.numel() for s in scores.values()) == N
    masks = top_fraction_masks(scores, fraction)
    k = max(1, round(fraction * N))  # 0.001 -> round(10.007) = 10; 1e-9 -> 1
    assert sum(int(m.sum()) for m in masks.values()) == k
    assert mask_fraction(masks) == k / N
    # the chosen entries are the k largest: compare with the naive sort
    chosen = torch.cat([m.reshape(-1) for m in masks.values()])
    assert torch.equal(chosen, _naive_top(scores, k))


def test_cap_rows_by_hand():
    """Rows [5, 1, 4, 4] and [0, 2, 2, 9], cap 2: keep 5 and the first 4; then 9 and the first 2."""
    s = {"w": torch.tensor([[5.0, 1.0, 4.0, 4.0], [0.0, 2.0, 2.0, 9.0]]), "b": torch.tensor([3.0, 1.0, 2.0])}
    out = cap_rows(s, 2, fill=-1.0)
    assert out["w"].tolist() == [[5.0, -1.0, 4.0, -1.0], [-1.0, 2.0, -1.0, 9.0]]
    assert out["b"].tolist() == [3.0, 1.0, 2.0]  # vectors are not capped
    assert cap_rows(s, 4)["w"].tolist() == s["w"].tolist()  # rows no wider than the cap: unchanged
    assert cap_rows(s, 0) == s
    with pytest.raises(ValueError):
        cap_rows(s, -1)


def test_cap_rows_equals_a_stable_sort_on_tie_heavy_rows():
    """Against the definition (a stable descending sort of each row, first ``cap`` kept) on small
    integer scores, where most rows tie at their cap-th value."""
    gen = _gen(3)
    for _ in range(100):
        rows = torch.randint(0, 4, (6, 11), generator=gen).double()
        cap = int(torch.randint(1, 11, (1,), generator=gen))
        keep = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :cap]
        want = torch.full_like(rows, -9.0).scatter_(1, keep, rows.gather(1, keep))
        assert torch.equal(cap_rows({"w": rows}, cap, fill=-9.0)["w"], want)


def test_kth_largest_is_exact_through_the_sample_and_its_fallback():
    """The sampled bound and the plain topk agree with a sort on random ties; the large entries
    may sit between the sampled positions (a low bound, many candidates) or only on them (too
    few candidates reach the bound: the full topk)."""
    gen = _gen(4)
    for _ in range(50):
        flat = torch.randint(0, 30, (int(torch.randint(1, 3000, (1,), generator=gen)),), generator=gen).float()
        k = int(torch.randint(1, flat.numel() + 1, (1,), generator=gen))
        for stride in (1, 3, 64):
            assert kth_largest(flat, k, stride) == torch.sort(flat, descending=True).values[k - 1]
    between, on = torch.zeros(6400), torch.zeros(6400)
    between[1::64] = torch.arange(1, 101, dtype=torch.float32)  # every sampled entry is 0
    on[::64] = torch.arange(1001, 1101, dtype=torch.float32)  # the bound is the sample's 16th largest
    assert kth_largest(between, 40, 64) == 61.0
    assert kth_largest(on, 40, 64) == 1061.0
    with pytest.raises(ValueError):
        kth_largest(on, 0)


def test_capped_masks_hold_the_cap_and_the_exact_count():
    """The budget stays exact and no row of a matrix gets more than `cap` entries, even when the
    raw scores would put the whole budget in one row."""
    scores = _params(SHAPES)
    scores["w1"][3] += 100.0  # one row dominates: uncapped, all 101 of its entries win first
    k = round(0.02 * N)
    assert int(top_fraction_masks(scores, 0.02)["w1"][3].sum()) == 101
    masks = top_fraction_masks(cap_rows(scores, 5), 0.02)
    assert sum(int(m.sum()) for m in masks.values()) == k
    for name in ("w1", "w2"):
        assert int(masks[name].sum(1).max()) <= 5
    assert int(masks["w1"][3].sum()) == 5


def test_ties_break_by_flattened_index():
    """All scores equal except one: k = 5 takes the large one, then the 4 lowest flat indices."""
    scores = {"a": torch.zeros(3), "b": torch.zeros(2, 2), "c": torch.zeros(4)}
    scores["c"][2] = 1.0
    masks = top_fraction_masks(scores, 5 / 11)
    assert masks["a"].tolist() == [True, True, True]
    assert masks["b"].tolist() == [[True, False], [False, False]]
    assert masks["c"].tolist() == [False, False, True, False]


def test_heavy_ties_count_is_exact():
    scores = {n: torch.randint(0, 3, s, generator=_gen(1)).float() for n, s in SHAPES.items()}
    masks = top_fraction_masks(scores, 0.37)
    k = round(0.37 * N)
    assert sum(int(m.sum()) for m in masks.values()) == k
    assert torch.equal(torch.cat([m.reshape(-1) for m in masks.values()]), _naive_top(scores, k))


def test_masks_have_scores_keys_and_shapes():
    scores = _params(SHAPES)
    scores["b1"] = torch.full((7,), -1e9)  # never wins
    masks = top_fraction_masks(scores, 0.01)
    assert list(masks) == list(scores)
    assert all(masks[n].shape == scores[n].shape and masks[n].dtype == torch.bool for n in masks)
    assert not masks["b1"].any()


def test_top_fraction_rejects_bad_input():
    with pytest.raises(ValueError):
        top_fraction_masks({"a": torch.ones(3)}, 0.0)
    with pytest.raises(ValueError):
        top_fraction_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError):
        top_fraction_masks({}, 0.5)


def test_masked_flat_scatter_flat_round_trip():
    like = _params({"w": (3, 4), "b": (5,), "frozen": (2,)}, seed=3)
    masks = top_fraction_masks({n: like[n].abs() for n in ("w", "b")}, 0.4)
    names = ["b", "w"]  # any order, as long as both calls share it
    flat = masked_flat(like, masks, names)
    assert flat.shape == (round(0.4 * 17),)
    # explicit loop reference for the order: names, then row-major entries
    expected = [float(like[n].reshape(-1)[i]) for n in names
                for i in range(like[n].numel()) if masks[n].reshape(-1)[i]]
    assert flat.tolist() == expected
    dense = scatter_flat(flat, masks, names, like)
    assert set(dense) == set(names)
    for n in names:
        torch.testing.assert_close(dense[n], like[n] * masks[n])
    torch.testing.assert_close(masked_flat(dense, masks, names), flat)


def test_scatter_flat_checks_length():
    masks = {"a": torch.tensor([True, False, True])}
    with pytest.raises(ValueError):
        scatter_flat(torch.ones(3), masks, ["a"], {"a": torch.zeros(3)})


def test_top_fraction_ties_go_to_the_lowest_index_across_tensors():
    """Scores a = [5, 2, 2], b = [2, 9] (b in float32), k = round(0.6 * 5) = 3: 5 and 9 win, and
    of the three tied 2s the first in name order (a[1]) takes the last place."""
    masks = top_fraction_masks({"a": torch.tensor([5.0, 2.0, 2.0], dtype=torch.float64),
                                "b": torch.tensor([2.0, 9.0])}, 0.6)
    assert masks["a"].tolist() == [True, True, False] and masks["b"].tolist() == [False, True]
