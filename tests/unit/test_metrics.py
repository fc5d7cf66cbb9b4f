"""Evaluation metrics against reference implementations and hand-worked numbers.

hdsu_ray.eval.metrics: pure numpy/sklearn. hdsu_ray.eval.sample_stats: a tiny random Llama
checked against an unbatched per-token loop with an explicit softmax in float64, and stub models
whose outputs are known by hand.
"""

from __future__ import annotations

import json
import math
import types
import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hdsu_ray.data.encode import IGNORE, encode_texts
from hdsu_ray.eval.intervals import bootstrap_ci
from hdsu_ray.eval.metrics import (Absent, accuracy, aggregate_seeds_metrics, forget_rate, is_absent,
                                   knowledge_preservation, mean_and_spread, mia_auc, mia_resistance,
                                   per_level_preservation, privleak, to_json)
from hdsu_ray.eval.sample_stats import (MINKPP_MIN_VAR, STAT_KEYS, encoded_stats, n_lowest, perplexity,
                                        sequence_stats)
from hdsu_ray.models.build import train_tokenizer

# --------------------------------------------------------------------------- accuracy family


def test_accuracy_forget_rate_and_preservation_hand_numbers():
    assert accuracy([True, False, True, True]) == 0.75
    # the paper's arithmetic: surgical accuracy 17.3% after unlearning -> forgetting rate 82.7%
    after = np.array([True] * 173 + [False] * 827)
    assert forget_rate(after) == pytest.approx(0.827)
    before = np.array([1, 1, 1, 1, 0])
    assert knowledge_preservation(before, np.array([1, 1, 0, 1, 0])) == pytest.approx(0.75)
    assert knowledge_preservation([1, 0], [1, 1]) == pytest.approx(2.0)  # unlearning may fix items


def test_absent_for_empty_sets_and_zero_before_accuracy():
    for value in (accuracy([]), forget_rate([]), knowledge_preservation([], []),
                  knowledge_preservation([0, 0, 0], [1, 0, 1])):
        assert isinstance(value, Absent) and value.reason
    assert knowledge_preservation([0, 0], [1, 1]).to_json() == {
        "value": None, "absent": "retain accuracy before unlearning is 0"}
    with pytest.raises(TypeError):
        float(Absent("x"))  # never usable as a number


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        knowledge_preservation([1, 0], [1, 0, 1])
    with pytest.raises(ValueError):
        accuracy([0, 2])
    with pytest.raises(ValueError):
        mia_resistance(1.5)


def test_per_level_preservation_hand_table():
    levels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    before = np.array([1, 1, 1, 1, 0, 0, 0, 1], dtype=bool)
    after = np.array([1, 0, 1, 0, 0, 1, 0, 1], dtype=bool)
    table = per_level_preservation(before, after, levels)
    assert sorted(table) == [0, 1, 2, 3, 4]
    assert table[0] == {"n": 2, "before": 1.0, "after": 0.5, "preservation": 0.5}
    assert table[1]["n"] == 3
    assert table[1]["before"] == pytest.approx(2 / 3) and table[1]["after"] == pytest.approx(1 / 3)
    assert table[1]["preservation"] == pytest.approx(0.5)
    assert table[2]["before"] == 0.0 and table[2]["after"] == 0.5 and is_absent(table[2]["preservation"])
    assert table[3] == {"n": 1, "before": 1.0, "after": 1.0, "preservation": 1.0}
    assert table[4]["n"] == 0 and all(is_absent(table[4][key]) for key in ("before", "after", "preservation"))
    json.dumps(to_json(table))  # report-ready
    with pytest.raises(ValueError):
        per_level_preservation(before, after, levels + 2)  # level 5 does not exist


# --------------------------------------------------------------------------- MIA


def _pairwise_auc(members, nonmembers):
    """P(nonmember > member) + 1/2 P(tie), by counting every pair."""
    total = 0.0
    for m in members:
        for n in nonmembers:
            total += 1.0 if n > m else 0.5 if n == m else 0.0
    return total / (len(members) * len(nonmembers))


def test_mia_auc_matches_pairwise_count_and_sklearn():
    rng = np.random.default_rng(3)
    for _ in range(5):
        members = rng.integers(0, 6, size=int(rng.integers(1, 30))).astype(float)  # many ties
        nonmembers = rng.integers(1, 8, size=int(rng.integers(1, 30))).astype(float)
        auc = mia_auc(members, nonmembers)
        assert auc == pytest.approx(_pairwise_auc(members, nonmembers), abs=1e-12)
        y = np.r_[np.zeros(members.size), np.ones(nonmembers.size)]
        assert auc == pytest.approx(roc_auc_score(y, np.r_[members, nonmembers]), abs=1e-12)
    # orientation: members with low loss (memorised) against unseen data with high loss -> 1
    assert mia_auc([0.1, 0.2], [1.0, 2.0]) == 1.0
    assert mia_auc([1.0, 2.0], [0.1, 0.2]) == 0.0
    assert mia_auc([1.0, 1.0], [1.0]) == 0.5
    assert is_absent(mia_auc([], [1.0])) and is_absent(mia_auc([1.0], []))
    with pytest.raises(ValueError):
        mia_auc([np.nan, 1.0], [2.0])


def test_mia_resistance_paper_numbers():
    assert mia_resistance(0.5) == 1.0
    assert mia_resistance(0.555) == pytest.approx(0.89)  # paper notes section 3
    assert mia_resistance(0.445) == pytest.approx(0.89)
    assert mia_resistance(0.0) == 0.0 and mia_resistance(1.0) == 0.0
    assert is_absent(mia_resistance(Absent("no holdout")))


def test_privleak_hand_numbers():
    # arguments are mia_auc values; PrivLeak is computed on 1 - AUC (MUSE orientation)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.99, 0.5) == pytest.approx((0.01 - 0.5) / 0.5 * 100)  # -98: under-unlearned
    assert privleak(0.2, 0.5) == pytest.approx(60.0)  # over-unlearned: forget looks unseen
    # MUSE News retrain AUC (muse_bench constants, Min-40%, MUSE orientation) is 0.4772
    assert privleak(0.9, 1 - 0.4772) == pytest.approx((0.1 - 0.4772) / 0.4772 * 100)
    assert privleak(0.9, 1 - 0.4772) == pytest.approx(-79.0444, abs=1e-4)
    assert is_absent(privleak(0.9, None))  # no 0.5 default is made up
    assert is_absent(privleak(0.9, Absent("no retrain model")))
    assert is_absent(privleak(Absent("empty holdout"), 0.5))
    assert is_absent(privleak(0.9, 1.0))  # denominator 0


# --------------------------------------------------------------------------- uncertainty


def test_bootstrap_ci_deterministic_and_contains_mean():
    # more cases, against slow reference loops: tests/unit/test_intervals.py
    values = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=bool)
    ci = bootstrap_ci(values, n=500, seed=7)
    assert ci == bootstrap_ci(values, n=500, seed=7)
    assert ci["low"] <= values.mean() <= ci["high"] and ci["low"] < ci["high"]
    assert 0.0 <= ci["low"] and ci["high"] <= 1.0 and ci["level"] == 0.95
    assert is_absent(bootstrap_ci([]))


def test_mean_and_spread():
    out = mean_and_spread([1.0, 2.0, 3.0])
    assert out == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    one = mean_and_spread([0.7])
    assert one["mean"] == 0.7 and one["n"] == 1 and is_absent(one["std"])
    none = mean_and_spread([])
    assert none["n"] == 0 and is_absent(none["mean"]) and is_absent(none["std"])
    partial = mean_and_spread([0.5, Absent("retain accuracy before unlearning is 0")])
    assert is_absent(partial["mean"]) and partial["n"] == 2
    assert "seed 1: retain accuracy before unlearning is 0" in partial["mean"].reason
    assert json.loads(json.dumps(to_json(one)))["std"]["value"] is None


def test_mean_and_spread_never_raises():
    # an infinite perplexity (a model that assigns 0 to a token) is absent, not a ValueError
    inf = mean_and_spread([12.0, math.inf, 14.0], seeds=[0, 1, 2])
    assert is_absent(inf["mean"]) and "seed 1: not finite (inf)" in inf["mean"].reason
    assert inf["values"][0] == 12.0 and is_absent(inf["values"][1])
    assert is_absent(mean_and_spread([0.1, math.nan])["mean"])
    # what results.json rows hold: JSON absent records and missing keys (None)
    json_absent = mean_and_spread([0.4, {"value": None, "absent": "no holdout set"}, None], seeds=[3, 4, 5])
    assert json_absent["mean"].reason == ("absent on 2 of 3 seeds (seed 4: no holdout set; seed 5: missing)")
    assert is_absent(mean_and_spread(["min_k", 0.3])["mean"])  # not a number
    json.dumps(to_json(json_absent), allow_nan=False)


def test_aggregate_seeds_metrics_every_key():
    per_seed = [
        {"forget_rate": 0.8, "privleak": Absent("no retain-only reference model"), "mia_attack": "min_k",
         "perplexity_pubmedqa": 20.0, "holdout_accuracy": 0.5,
         "per_level_preservation": {1: {"n": 3, "preservation": 0.5}}},
        {"forget_rate": 0.9, "privleak": Absent("no retain-only reference model"), "mia_attack": "min_k",
         "perplexity_pubmedqa": math.inf, "per_level_preservation": Absent("no concept annotation")},
        {"forget_rate": 1.0, "privleak": {"value": None, "absent": "no retain-only reference model"},
         "mia_attack": "min_k", "perplexity_pubmedqa": 22.0, "extra_metric": 7,
         "per_level_preservation": {1: {"n": 5, "preservation": 1.0}}},
    ]
    out = aggregate_seeds_metrics(per_seed, seeds=[10, 11, 12])
    assert list(out) == ["forget_rate", "privleak", "perplexity_pubmedqa", "holdout_accuracy",
                         "per_level_preservation.1.n", "per_level_preservation.1.preservation", "extra_metric"]
    assert out["forget_rate"]["mean"] == pytest.approx(0.9) and out["forget_rate"]["std"] == pytest.approx(0.1)
    assert out["forget_rate"]["values"] == [0.8, 0.9, 1.0] and out["forget_rate"]["n"] == 3
    assert "seed 11: not finite (inf)" in out["perplexity_pubmedqa"]["mean"].reason
    assert "seed 11: missing; seed 12: missing" in out["holdout_accuracy"]["mean"].reason  # not a TypeError
    assert "seed 10: missing; seed 11: missing" in out["extra_metric"]["mean"].reason
    # a nested metric missing because its parent is absent says so
    assert "seed 11: no concept annotation" in out["per_level_preservation.1.preservation"]["std"].reason
    assert is_absent(out["privleak"]["mean"]) and "mia_attack" not in out  # strings are not metrics
    json.dumps(to_json(out), allow_nan=False)
    assert aggregate_seeds_metrics([]) == {}


# --------------------------------------------------------------------------- per-sample statistics

TEXTS = [("Question: Which drug treats panic disorder?\nAnswer:", " Sertraline"),
         ("Question: What is the first-line therapy for depression in adolescents?\nAnswer:",
          " Fluoxetine, an SSRI, at a low dose"),
         ("Question: Which symptom defines PTSD?\nAnswer:", " Intrusive memories of the trauma"),
         ("Question: Name the nerve at risk in thyroidectomy.\nAnswer:", " The recurrent laryngeal nerve")]
MAX_LEN = 96


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([p + a for p, a in TEXTS] * 3, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_model(tokenizer, make_tiny_llama):
    # a wide initialisation so the next-token distributions are far from flat (sigma_t >> clamp)
    return make_tiny_llama(tokenizer, initializer_range=0.5).eval()


def _naive(model, ids: np.ndarray, labels: np.ndarray, k: float) -> dict[str, float]:
    """One unpadded sequence, one position at a time, explicit softmax in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids[None])).logits[0].double().numpy()
    lps, zs, hits = [], [], []
    for t in range(1, len(ids)):
        if labels[t] == IGNORE:
            continue
        x = logits[t - 1]
        e = np.exp(x - x.max())
        p = e / e.sum()
        logp_all = np.log(p)
        y = labels[t]
        mu = float(np.sum(p * logp_all))
        var = float(np.sum(p * logp_all ** 2) - mu ** 2)  # OpenUnlearning's form
        lps.append(float(logp_all[y]))
        zs.append((lps[-1] - mu) / math.sqrt(max(var, MINKPP_MIN_VAR)))
        hits.append(int(np.argmax(x)) == int(y))
    T = len(lps)
    m = max(1, int(T * k))
    k_star = next(j for j in range(T + 1) if all(hits[j:]))  # smallest k with a correct suffix
    return {"loss": -sum(lps) / T, "min_k": -sum(sorted(lps)[:m]) / m, "min_k_pp": -sum(sorted(zs)[:m]) / m,
            "exact_memorization": sum(hits) / T, "extraction_strength": 1 - k_star / T, "T": T}


def test_n_lowest_rounding():
    assert [n_lowest(T, 0.4) for T in (1, 2, 3, 5, 10, 11)] == [1, 1, 1, 2, 4, 4]


def test_sequence_stats_match_naive_loop(tiny_model, tokenizer):
    prompts, answers = [p for p, _ in TEXTS], [a for _, a in TEXTS]
    k = 0.4
    stats = sequence_stats(tiny_model, tokenizer, prompts, answers, MAX_LEN, batch_size=3, k=k)  # padded batches
    assert set(STAT_KEYS) <= set(stats) and all(stats[key].shape == (len(TEXTS),) for key in stats)
    for i, (prompt, answer) in enumerate(TEXTS):
        enc = encode_texts(tokenizer, [prompt], [answer], MAX_LEN)  # one row: no padding
        ids, labels = enc["input_ids"][0], enc["labels"][0]
        assert tokenizer.decode(labels[labels != IGNORE].tolist()) == answer
        ref = _naive(tiny_model, ids, labels, k)
        assert stats["n_tokens"][i] == ref["T"] >= 3
        for key in ("loss", "min_k", "min_k_pp", "exact_memorization", "extraction_strength"):
            assert stats[key][i] == pytest.approx(ref[key], rel=1e-5, abs=1e-5), key
        assert stats["zlib"][i] == pytest.approx(ref["loss"] / len(zlib.compress(answer.encode("utf-8"))), rel=1e-5)
    assert np.all(stats["min_k"] >= stats["loss"] - 1e-9)  # the lowest log-probs lose at least the mean


def test_own_argmax_answer_has_full_memorization(tiny_model, tokenizer):
    """Labels = the model's own greedy tokens: every answer token is the argmax -> EM = ES = 1."""
    prompt_ids = encode_texts(tokenizer, [TEXTS[0][0]], [""], MAX_LEN)["input_ids"][0].tolist()
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
    enc = {"input_ids": np.array([ids, ids]), "attention_mask": np.ones((2, len(ids)), dtype=np.int64),
           "labels": np.array([labels, [IGNORE] * (len(ids) - 1) + [(ids[-1] + 1) % len(tokenizer)]])}
    stats = encoded_stats(tiny_model, tokenizer, enc)
    assert stats["n_tokens"].tolist() == [6, 1]
    assert stats["exact_memorization"][0] == 1.0 and stats["extraction_strength"][0] == 1.0
    assert stats["exact_memorization"][1] == 0.0 and stats["extraction_strength"][1] == 0.0


class _StubLM(torch.nn.Module):
    """Logits known by hand. ``mode="zero"``: all logits 0 (uniform). ``mode="oracle"``: the
    argmax at position t is the next input token, except at ``wrong`` positions (row, t)."""

    def __init__(self, vocab: int, mode: str, wrong=()):
        super().__init__()
        self.vocab, self.mode, self.wrong = vocab, mode, set(wrong)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.zeros(B, L, self.vocab)
        if self.mode == "oracle":
            nxt = torch.roll(input_ids, -1, dims=1)
            for b, t in self.wrong:
                nxt[b, t] = (nxt[b, t] + 1) % self.vocab
            logits.scatter_(-1, nxt.unsqueeze(-1), 5.0)
        return types.SimpleNamespace(logits=logits)


def test_uniform_model_hand_values(tokenizer):
    V = len(tokenizer)
    stub = _StubLM(V, "zero")
    stats = sequence_stats(stub, tokenizer, [p for p, _ in TEXTS], [a for _, a in TEXTS], MAX_LEN)
    assert np.allclose(stats["loss"], math.log(V)) and np.allclose(stats["min_k"], math.log(V))
    assert np.allclose(stats["min_k_pp"], 0.0)  # log p_t == mu_t: z = 0 (sigma clamped)
    assert np.all(stats["exact_memorization"] == 0.0)  # argmax is id 0 (<pad>), never a label
    assert perplexity(stub, tokenizer, [p + a for p, a in TEXTS], MAX_LEN) == pytest.approx(V, rel=1e-6)


def test_extraction_strength_by_hand(tokenizer):
    """Answer of T tokens; the oracle misses one answer position j -> EM (T-1)/T, ES (T-1-j)/T."""
    prompt, answer = TEXTS[3]
    enc = encode_texts(tokenizer, [prompt], [answer], MAX_LEN)
    positions = np.flatnonzero(enc["labels"][0] != IGNORE)  # unshifted answer positions
    T = positions.size
    assert T >= 4
    for j in (0, 1, T - 1):
        stub = _StubLM(len(tokenizer), "oracle", wrong=[(0, int(positions[j]) - 1)])  # logits at t-1 predict t
        stats = sequence_stats(stub, tokenizer, [prompt], [answer], MAX_LEN)
        assert stats["exact_memorization"][0] == pytest.approx((T - 1) / T)
        assert stats["extraction_strength"][0] == pytest.approx((T - 1 - j) / T)
    perfect = sequence_stats(_StubLM(len(tokenizer), "oracle"), tokenizer, [prompt], [answer], MAX_LEN)
    assert perfect["exact_memorization"][0] == 1.0 and perfect["extraction_strength"][0] == 1.0


def test_empty_answer_is_nan_not_a_number_made_up(tiny_model, tokenizer):
    stats = sequence_stats(tiny_model, tokenizer, [TEXTS[0][0], TEXTS[1][0]], ["", TEXTS[1][1]], MAX_LEN)
    assert stats["n_tokens"][0] == 0 and all(np.isnan(stats[key][0]) for key in STAT_KEYS)
    assert stats["n_tokens"][1] > 0 and all(np.isfinite(stats[key][1]) for key in STAT_KEYS)
    empty = sequence_stats(tiny_model, tokenizer, [], [], MAX_LEN)
    assert all(v.shape == (0,) for v in empty.values())


def test_perplexity_is_exp_of_pooled_token_nll(tiny_model, tokenizer):
    texts = [p + a for p, a in TEXTS[:3]]
    total, count = 0.0, 0
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        for t in range(1, len(ids)):  # every token after BOS
            x = logits[t - 1]
            total += -(x[ids[t]] - x.max() - math.log(np.exp(x - x.max()).sum()))
            count += 1
    tiny_model.train()
    assert perplexity(tiny_model, tokenizer, texts, MAX_LEN, batch_size=2) == pytest.approx(
        math.exp(total / count), rel=1e-5)
    assert tiny_model.training  # mode restored
    tiny_model.eval()
    assert is_absent(perplexity(tiny_model, tokenizer, [], MAX_LEN))


def test_truth_ratio_and_forget_quality_by_hand():
    """Scores (mean log-lik) right -1, wrong -2 and -4 (mean -3): ratio exp(-3 - -1) = e^-2. A
    missing option (-inf) is left out. Identical samples have forget quality 1."""
    import math

    from hdsu_ray.eval.forgetting import forget_quality, over_forgetting, truth_ratios

    scores = np.array([[-1.0, -2.0, -4.0], [-3.0, -1.0, -np.inf]])
    r = truth_ratios(scores, np.array([0, 0]))
    assert r[0] == pytest.approx(math.exp(-2.0)) and r[1] == pytest.approx(math.exp(2.0))
    assert forget_quality(r, r) == pytest.approx(1.0)
    assert forget_quality(np.full(30, 0.1), np.full(30, 5.0)) < 1e-6
    assert "absent" in to_json(forget_quality(r, None))
    # 0 of 40 right: interval [0, ~0.0]; a never-seen model scores 0.3 -> flagged; 0.0 -> not
    assert over_forgetting(np.zeros(40, bool), 0.3, "oracle")["flag"] is True
    assert over_forgetting(np.zeros(40, bool), 0.0, "oracle")["flag"] is False
