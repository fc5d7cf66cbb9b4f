"""Pure concept matching, token labelling and the concept-weight table on hand-made inputs (no Ray,
no tokenizer, no hierarchy data)."""

import numpy as np
import pytest

from hdsu_ray.config.schema import ConceptsConfig, default_concept_weights
from hdsu_ray.core.concepts import (LABEL_NEUTRAL, LABEL_PRESERVE, LABEL_TARGETED, build_matcher,
                                    label_tokens, normalize_term, normalize_word)
from hdsu_ray.core.weighting import reweight, reweight_arrays, weight_table
from hdsu_ray.errors import WorkflowError
from hdsu_ray.stages.concept_spec import ConceptSpec

TERMS = [("Anxiety", 0), ("Anxiety Disorders", 1), ("Generalized anxiety disorder", 2),
         ("Stress Disorders, Post-Traumatic", 3), ("Post-Traumatic Stress Disorders", 3),
         ("stress", 4), ("Crohn Disease", 5), ("headache", 6), ("therapy", 7), ("process", 8),
         ("Hemorrhage", 9), ("Tumor", 10)]


@pytest.fixture(scope="module")
def matcher():
    return build_matcher(TERMS)


def found(matcher, text):
    return [(text[s:e], c) for s, e, c in matcher.match(text)]


def test_case_insensitive(matcher):
    assert found(matcher, "ANXIETY and anxiety") == [("ANXIETY", 0), ("anxiety", 0)]


def test_plurals_both_ways(matcher):
    assert found(matcher, "an anxiety disorder") == [("anxiety disorder", 1)]
    assert found(matcher, "headaches, therapies, processes") == [
        ("headaches", 6), ("therapies", 7), ("processes", 8)]
    assert normalize_word("headache") == normalize_word("headaches")
    assert normalize_word("branch") == normalize_word("branches")


def test_british_spelling(matcher):
    assert found(matcher, "haemorrhage from a tumour") == [("haemorrhage", 9), ("tumour", 10)]


def test_longest_match_wins(matcher):
    text = "Generalized Anxiety Disorders and stress"
    assert found(matcher, text) == [("Generalized Anxiety Disorders", 2), ("stress", 4)]
    # the 4-word PTSD term beats the 1-word "stress" inside it; hyphen == space
    assert found(matcher, "post traumatic stress disorder") == [("post traumatic stress disorder", 3)]
    assert found(matcher, "post-traumatic stress disorders") == [("post-traumatic stress disorders", 3)]


def test_multiword_and_possessive(matcher):
    assert found(matcher, "Crohn's disease flare") == [("Crohn's disease", 5)]


def test_word_boundaries(matcher):
    assert found(matcher, "anxietyx distressed stressful") == []


def test_punctuation_breaks_multiword_terms(matcher):
    # "anxiety, disorders" must not be read as the term "anxiety disorders"
    assert found(matcher, "anxiety, disorders") == [("anxiety", 0)]


def test_offsets_point_into_original_string(matcher):
    text = "  Patients with GENERALIZED anxiety\tdisorder (GAD)."
    (start, end, concept), = matcher.match(text)
    assert text[start:end] == "GENERALIZED anxiety\tdisorder" and concept == 2


def test_first_pair_wins_for_same_key():
    m = build_matcher([("Depression", 1), ("depressions", 2)])
    assert m.match("depression") == [(0, 10, 1)]
    assert normalize_term("Depressions") == " depression "


def test_short_and_empty_terms_are_skipped():
    m = build_matcher([("GA", 0), ("", 1), ("...", 2)])
    assert m.n_terms == 0 and m.match("GA ...") == []


def test_label_tokens_by_offsets():
    text = "Fear of surgery now"
    #        tokens: "Fe" "ar" " of" " surg" "ery" " now" + special (0, 0)
    offsets = [(0, 2), (2, 4), (4, 7), (7, 12), (12, 15), (15, 19), (0, 0)]
    spans = [(0, 4, 0), (8, 15, 1)]         # "Fear" -> concept 0, "surgery" -> concept 1
    concept_label = [LABEL_PRESERVE, LABEL_TARGETED]
    concept_level = [2, 3]
    table = {(0, 0): 0.1, (1, 2): 0.0, (2, 3): 1.0}
    labels, levels, weights, cids = label_tokens(spans, offsets, concept_label, concept_level, table)
    assert text[8:15] == "surgery"
    assert labels.tolist() == [1, 1, 0, 2, 2, 0, 0]
    assert levels.tolist() == [2, 2, 0, 3, 3, 0, 0]
    assert cids.tolist() == [0, 0, -1, 1, 1, -1, -1]
    np.testing.assert_allclose(weights, [0.0, 0.0, 0.1, 1.0, 1.0, 0.1, 0.1])
    assert labels.dtype == np.int8 and weights.dtype == np.float32 and cids.dtype == np.int32


def test_label_tokens_token_over_two_spans_takes_higher_label():
    offsets = [(0, 10)]
    spans = [(0, 4, 0), (5, 10, 1)]
    labels, levels, weights, cids = label_tokens(spans, offsets, [LABEL_PRESERVE, LABEL_TARGETED],
                                                 [1, 4], {(0, 0): 0.1, (2, 4): 0.7})
    assert (labels[0], levels[0], cids[0]) == (LABEL_TARGETED, 4, 1)
    assert weights[0] == pytest.approx(0.7)


def test_label_tokens_weight_fallbacks_and_empty():
    labels, levels, weights, cids = label_tokens([(0, 3, 0)], [(0, 3), (3, 5)], {0: LABEL_NEUTRAL},
                                                 {0: 4}, {(0, 0): 0.25})
    assert labels.tolist() == [0, 0] and levels.tolist() == [4, 0] and cids.tolist() == [0, -1]
    np.testing.assert_allclose(weights, [0.25, 0.25])
    empty = label_tokens([], [], [], [], {(0, 0): 0.1})
    assert all(len(a) == 0 for a in empty)


def test_matcher_end_to_end_with_labels(matcher):
    text = "Anxiety after surgery"
    spans = matcher.match(text)
    offsets = [(0, 7), (7, 13), (13, 21)]
    labels, *_ = label_tokens(spans, offsets, {c: LABEL_TARGETED for _, c in TERMS},
                              {c: 3 for _, c in TERMS}, {(0, 0): 0.1, (2, 3): 1.0})
    assert labels.tolist() == [2, 0, 0]


# --- the weight table: one home (core.weighting), one default (config.schema) --------------------------

def test_default_table_is_the_paper_rule():
    t = weight_table(default_concept_weights(), [1, 2])
    assert all(t[(LABEL_TARGETED, lv)] == 1.0 for lv in range(5))   # level 0: the largest targeted weight
    assert t[(LABEL_PRESERVE, 1)] == t[(LABEL_PRESERVE, 2)] == 0.0   # they feed the KL anchor instead
    assert all(t[(LABEL_NEUTRAL, lv)] == 0.1 for lv in range(5))
    assert set(t) == {(label, lv) for label in range(3) for lv in range(5)}  # complete: no fallbacks left


def test_a_label_left_out_keeps_its_default_and_a_given_label_is_replaced_whole():
    t = weight_table({"targeted": {3: 2.0}}, [1, 2, 3])
    assert t[(LABEL_TARGETED, 3)] == 2.0 and t[(LABEL_TARGETED, 1)] == t[(LABEL_TARGETED, 0)] == 2.0
    assert t[(LABEL_NEUTRAL, 0)] == 0.1 and t[(LABEL_PRESERVE, 3)] == 0.0   # default neutral; preserved level
    assert weight_table({"preserve": 0.5}, [1])[(LABEL_PRESERVE, 4)] == 0.5   # one number: every level


@pytest.mark.parametrize("weights, key, expected", [
    ({"targeted": {7: 1.0}}, "w.targeted", "levels 1-4"),
    ({"neutral": -1}, "w.neutral", "a number >= 0"),
    ({"preserve": {1: True}}, "w.preserve.1", "a number >= 0"),
    ({"preserve": "high"}, "w.preserve", None),
    ({"other": 1}, "w", "targeted, preserve, neutral"),
])
def test_bad_weights_name_their_key(weights, key, expected):
    with pytest.raises(WorkflowError) as exc:
        weight_table(weights, [1, 2], key="w")
    assert exc.value.key == key and exc.value.expected == expected


def test_reweight_matches_what_label_tokens_stored():
    """Weights recomputed from stored labels and levels equal the annotation's, for every pair."""
    table = weight_table({"targeted": {2: 0.7, 4: 1.5}, "preserve": {1: 0.2}, "neutral": 0.05}, [1, 2])
    labels = np.array([[0, 1, 1, 2, 2, 2], [2, 0, 1, 0, 2, 0]], np.int8)
    levels = np.array([[0, 1, 2, 2, 4, 0], [3, 4, 4, 0, 1, 2]], np.int8)
    concept_label = {i: int(lab) for i, lab in enumerate(labels.ravel())}
    concept_level = {i: int(lev) for i, lev in enumerate(levels.ravel())}
    spans = [(i, i + 1, i) for i in range(labels.size)]
    offsets = [(i, i + 1) for i in range(labels.size)]
    _, _, stored, _ = label_tokens(spans, offsets, concept_label, concept_level, table)
    np.testing.assert_array_equal(reweight(labels, levels, table).ravel(), stored)
    arrays = {"token_label": labels, "token_level": levels}
    np.testing.assert_array_equal(reweight_arrays(arrays, {"neutral": 0.5})[0, 0], np.float32(0.5))


def test_concept_spec_defaults_are_the_config_sections():
    spec = ConceptSpec(targets=["F03.080"])
    section = ConceptsConfig(targets=["F03.080"])
    assert spec.weights == section.weights == default_concept_weights()
    assert spec.preserve_levels == section.preserve_levels
    built = ConceptSpec.from_config(ConceptsConfig(targets=["preset:mhqa-anxiety"], preserve_levels=[1]),
                                    cache_dir="")
    assert built.key == "concepts" and not built.add_special_tokens and built.cache_dir == ""
    assert "F03.080" in built.expanded_targets()
    with pytest.raises(WorkflowError) as exc:
        ConceptSpec(targets=["preset:nope"], key="k").expanded_targets()
    assert exc.value.key == "k.targets[0]"
