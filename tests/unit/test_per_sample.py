"""Batched per-sample gradients equal the one-row-at-a-time ones (Fisher diagonals, basis rows)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hdsu_ray.data.encode import encode_texts
from hdsu_ray.models.build import train_tokenizer
from hdsu_ray.train.prepare import fisher_diagonals, retain_gradient_matrix

TEXTS = [("Question: Which drug treats panic disorder?\nAnswer:", " Sertraline"),
         ("Question: What is the first-line therapy for depression in adolescents?\nAnswer:", " Fluoxetine"),
         ("Question: Which symptom defines PTSD?\nAnswer:", " Intrusive memories of the trauma"),
         ("Question: Name a common anxiety scale.\nAnswer:", " GAD-7"),
         ("Question: What does CBT stand for?\nAnswer:", " Cognitive behavioural therapy")]


@pytest.fixture(scope="module")
def setup(make_tiny_llama):
    tok = train_tokenizer([p + a for p, a in TEXTS] * 3, vocab_size=300)
    model = make_tiny_llama(tok, max_position_embeddings=64)
    arrays = encode_texts(tok, [p for p, _ in TEXTS], [a for _, a in TEXTS], max_len=64)  # rows of unequal length
    return model, arrays


def test_fisher_diagonals_batched_equal_the_loop(setup):
    model, arrays = setup
    attention = model.config._attn_implementation
    assert attention != "eager"  # the batched path switches to eager attention (vmap has rules for it)
    loop = fisher_diagonals(model, arrays, arrays, samples=5, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = fisher_diagonals(model, arrays, arrays, samples=5, seed=0, chunk=2)  # a short last chunk too
    # no per-sample fallback inside vmap ("we have not yet implemented the batching rule for ...")
    assert not [w for w in caught if "batching rule" in str(w.message)], [str(w.message) for w in caught]
    assert model.config._attn_implementation == attention  # and back
    for a, b in zip(loop, batched):
        assert a.keys() == b.keys()
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-10)
        assert sum(float(v.sum()) for v in a.values()) > 0


def test_basis_rows_batched_equal_the_loop(setup):
    model, arrays = setup
    masks = {n: np.random.default_rng(0).random(tuple(p.shape)) < 0.2 for n, p in model.named_parameters()}
    loop = retain_gradient_matrix(model, arrays, masks, samples=2, batch=2, seed=0)
    batched = retain_gradient_matrix(model, arrays, masks, samples=2, batch=2, seed=0, chunk=2)
    assert loop.shape == batched.shape == (2, sum(int(m.sum()) for m in masks.values()))
    np.testing.assert_allclose(batched, loop, rtol=1e-4, atol=1e-7)
