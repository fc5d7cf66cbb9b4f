"""Batched per-sample gradients equal the one-row-at-a-time ones (Fisher diagonals, basis rows),
by layer hooks (Llama layers, tied or not) and by torch.func (a model with a layer hooks lack)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hdsu_ray.data.encode import encode_texts
from hdsu_ray.models.build import train_tokenizer
from hdsu_ray.train.hooked_grads import owners
from hdsu_ray.train.per_sample import sample_grads
from hdsu_ray.train.prepare import ForgetReference, fisher_diagonals, reference_tensors, retain_gradient_matrix

TEXTS = [("Question: Which drug treats panic disorder?\nAnswer:", " Sertraline"),
         ("Question: What is the first-line therapy for depression in adolescents?\nAnswer:", " Fluoxetine"),
         ("Question: Which symptom defines PTSD?\nAnswer:", " Intrusive memories of the trauma"),
         ("Question: Name a common anxiety scale.\nAnswer:", " GAD-7"),
         ("Question: What does CBT stand for?\nAnswer:", " Cognitive behavioural therapy")]


@pytest.fixture(scope="module")
def data():
    tok = train_tokenizer([p + a for p, a in TEXTS] * 3, vocab_size=300)
    arrays = encode_texts(tok, [p for p, _ in TEXTS], [a for _, a in TEXTS], max_len=64)  # rows of unequal length
    return tok, arrays


@pytest.fixture(params=["untied", "tied", "layernorm"])
def model(request, data, make_tiny_llama):
    """untied: every weight has one user; tied: lm_head shares the embedding, whose padding id is a
    token of the text (autograd gives that row no embedding gradient, but lm_head's still counts);
    layernorm: a final LayerNorm, which has no hook rule, so the batched path is torch.func's."""
    tok, arrays = data
    if request.param == "tied":
        m = make_tiny_llama(tok, max_position_embeddings=64, tie_word_embeddings=True,
                            pad_token_id=int(arrays["input_ids"][0][3]))
        assert len(owners(m)["model.embed_tokens.weight"]) == 2 and m.model.embed_tokens.padding_idx is not None
        return m
    m = make_tiny_llama(tok, max_position_embeddings=64)
    if request.param == "layernorm":
        m.model.norm = torch.nn.LayerNorm(m.config.hidden_size)
        assert owners(m) is None
    else:
        assert owners(m) is not None
    return m


def test_fisher_diagonals_batched_equal_the_loop(model, data):
    arrays = data[1]
    loop = fisher_diagonals(model, arrays, arrays, samples=5, seed=0)
    batched = fisher_diagonals(model, arrays, arrays, samples=5, seed=0, chunk=2)  # a short last chunk too
    assert all(p.requires_grad for p in model.parameters())  # the hooked pass unfreezes what it froze
    for a, b in zip(loop, batched):
        assert a.keys() == b.keys() == {n for n, _ in model.named_parameters()}
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=2e-4, atol=1e-10)
        assert sum(float(v.sum()) for v in a.values()) > 0


def test_basis_rows_batched_equal_the_loop(model, data):
    arrays = data[1]
    # sparse masks take the selected entries one by one, dense ones (budget: full) the whole term
    masks = {n: np.random.default_rng(i).random(tuple(p.shape)) < (0.2, 0.6)[i % 2]
             for i, (n, p) in enumerate(model.named_parameters())}
    loop = retain_gradient_matrix(model, arrays, masks, samples=2, batch=2, seed=0)
    batched = retain_gradient_matrix(model, arrays, masks, samples=2, batch=2, seed=0, chunk=2)
    assert loop.shape == batched.shape == (2, sum(int(m.sum()) for m in masks.values()))
    np.testing.assert_allclose(batched, loop, rtol=1e-4, atol=1e-7)
    assert np.abs(loop).max() > 0


def test_vmap_runs_attention_eagerly_without_a_fallback(data, make_tiny_llama):
    tok, arrays = data
    m = make_tiny_llama(tok, max_position_embeddings=64)
    attention = m.config._attn_implementation
    assert attention != "eager"  # vmap has batching rules for eager attention, not for CPU SDPA
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = next(sample_grads(m, arrays, np.arange(4)[:, None], 4))
    # no per-sample fallback inside vmap ("we have not yet implemented the batching rule for ...")
    assert not [w for w in caught if "batching rule" in str(w.message)], [str(w.message) for w in caught]
    assert m.config._attn_implementation == attention  # and back
    assert grads["lm_head.weight"].shape == (4, *m.lm_head.weight.shape)


def test_square_sums_of_a_linear_layer_tile_by_output_rows():
    """Blocks of 16 output rows (the smallest block, forced by a wide input), the last one short,
    give the squared per-sample gradients summed over samples, as the whole product does."""
    from hdsu_ray.train.grad_terms import square_sum_linear as _square_sum_linear

    gen = torch.Generator().manual_seed(0)
    g, x = torch.randn(2, 3, 50, generator=gen), torch.randn(2, 3, 2 ** 16, generator=gen)
    want = torch.einsum("npo,npi->noi", g, x).square().sum(0)
    torch.testing.assert_close(_square_sum_linear(g, x), want, rtol=1e-4, atol=1e-5)


def test_no_whole_per_sample_matrix_is_built_for_a_fisher_or_a_basis(data, make_tiny_llama, monkeypatch):
    """The Fisher squares a matrix's per-sample gradients a block at a time (a tied output head
    and embedding too), and the basis takes the masked entries only: neither holds a matrix's
    ``[n, out, in]`` (on SmolLM2 the tied embedding's alone is n x 113 MiB)."""
    import hdsu_ray.train.hooked_grads as hooked

    tok, arrays = data
    m = make_tiny_llama(tok, max_position_embeddings=64, tie_word_embeddings=True)
    built = []
    dense = hooked.dense_term

    def spy(*args, **kwargs):
        out = dense(*args, **kwargs)
        built.append(tuple(out.shape))
        return out
    monkeypatch.setattr(hooked, "dense_term", spy)
    fisher_diagonals(m, arrays, arrays, samples=5, seed=0, chunk=4)
    masks = {n: np.random.default_rng(1).random(tuple(p.shape)) < 0.01 for n, p in m.named_parameters()}
    retain_gradient_matrix(m, arrays, masks, samples=2, batch=2, seed=0, chunk=2)
    assert built and all(len(shape) == 2 for shape in built)  # [n, features]: norm scales only


def test_dead_positions_are_dropped_without_changing_a_product():
    """At the output head only answer positions carry a gradient; dropping the rest (per sample,
    padded with dead ones) leaves every per-sample product as it was."""
    from hdsu_ray.train.grad_terms import live_positions

    gen = torch.Generator().manual_seed(0)
    g, x = torch.randn(3, 10, 6, generator=gen), torch.randn(3, 10, 4, generator=gen)
    g[0, 2:] = 0
    g[1, :7] = 0
    g[2, [0, 1, 3, 4, 5, 6, 8, 9]] = 0
    gl, xl = live_positions(g, x)
    assert gl.shape[1] == 3  # the most live positions of any sample (sample 1: 7, 8, 9)
    torch.testing.assert_close(torch.bmm(gl.transpose(1, 2), xl), torch.bmm(g.transpose(1, 2), x))
    few_dead = torch.ones(1, 8, 2)
    few_dead[0, 3] = 0
    assert live_positions(few_dead, torch.ones(1, 8, 2))[0] is few_dead  # 1 of 8 dead: left as it is


def test_the_forget_fishers_forward_passes_give_the_reference(model, data):
    """The prepare stage takes the forget rows' reference log-probs and top-K from the forget
    Fisher's own forward passes (chunks cut to their longest row) instead of a forward of its
    own: on every real position they equal the reference's separate forward; a model the hooks
    cannot take leaves the reference to that forward."""
    arrays = data[1]
    fill = ForgetReference(arrays, topk=4)
    fisher_diagonals(model, arrays, arrays, samples=5, seed=0, chunk=2, on_forget_logits=fill)
    if owners(model) is None:
        assert fill.result() is None
        return
    got, want = fill.result(), reference_tensors(model, arrays, arrays, topk=4, hidden_layer=None)
    real = arrays["attention_mask"][:, 1:].astype(bool)
    assert got.keys() == want.keys() and (~real).any()  # rows of unequal length: padding is left out
    np.testing.assert_array_equal(got["forget_ref_topk_idx"][real], want["forget_ref_topk_idx"][real])
    for key in ("forget_ref_logp", "forget_ref_topk_logp"):
        np.testing.assert_allclose(got[key][real], want[key][real], rtol=1e-5, atol=1e-5)
