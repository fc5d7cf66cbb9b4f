"""The concept hierarchy built from the real MeSH 2017 tree and ICD-10-CM."""

from pathlib import Path

import pytest
import yaml

from hdsu_ray.errors import WorkflowError
from hdsu_ray.hierarchy.build import (ConceptHierarchy, _add_synonyms, data_root,
                                      default_mesh_path, load_hierarchy)

pytestmark = pytest.mark.skipif(not default_mesh_path().is_file(),
                                reason=f"MeSH tree not found under {data_root()}")


@pytest.fixture(scope="module")
def h():
    return load_hierarchy()


def concept(h, ref):
    (i,) = set(h.lookup(ref))
    return h.concepts[i]


def test_levels_follow_levels_yaml(h):
    assert concept(h, "F03.080").name == "Anxiety Disorders"
    assert concept(h, "F03.080").level == 3            # F03 Mental Disorders: [3, 3, 4]
    assert concept(h, "F03.080.700").level == 4        # Panic Disorder: specific disorder
    assert concept(h, "E04").level == 3                # Surgical Procedures, Operative
    assert concept(h, "D000071938").level == 3         # Fasciotomy, E04.321 (one below E04)
    assert concept(h, "E04.210.120").level == 4        # a named procedure, two below
    assert concept(h, "A01.236").level == 1            # Breast: anatomy
    assert concept(h, "F01.470.132").level == 2        # Anxiety (emotion): behaviour
    assert concept(h, "F41").level == 3 and concept(h, "F41.1").level == 4
    assert concept(h, "I10").level == 2                # Essential hypertension: common diagnosis
    assert concept(h, "D014754").level == 0            # Violence: only in MeSH I, unmapped


def test_parent_links(h):
    anx = concept(h, "F03.080")
    assert {h.concepts[p].name for p in anx.parents} == {"Mental Disorders"}
    assert h.concepts[concept(h, "F41.1").parents[0]].id == "ICD10CM:F41"


def test_resolve_targets_includes_descendants_and_exclusions(h):
    names = {h.concepts[i].name for i in h.resolve_targets(["F03.080"])}
    assert {"Anxiety Disorders", "Panic Disorder", "Phobia, Social", "Hoarding Disorder",
            "Obsessive-Compulsive Disorder"} <= names
    kept = {h.concepts[i].name for i in h.resolve_targets(["F03.080", "-F03.080.600"])}
    assert "Panic Disorder" in kept and "Obsessive-Compulsive Disorder" not in kept
    assert "Hoarding Disorder" not in kept
    icd = {h.concepts[i].id for i in h.resolve_targets(["F41"])}
    assert {"ICD10CM:F41", "ICD10CM:F41.0", "ICD10CM:F41.1", "ICD10CM:F41.9"} <= icd
    # a bare code is a MeSH tree number when one exists; icd10cm: forces ICD-10-CM
    assert concept(h, "E04").id == "MESH:D013514"
    assert concept(h, "icd10cm:E04").id == "ICD10CM:E04"
    assert h.resolve_targets(["Anxiety Disorders"]) >= h.resolve_targets(["D001008"])


def test_tree_target_takes_subtree_of_that_position_only(h):
    # Neurotic Disorders sits under F03.080 and at F03.650; targeting F03.650 must not pull in
    # the other Anxiety Disorders
    names = {h.concepts[i].name for i in h.resolve_targets(["F03.650"])}
    assert names == {"Neurotic Disorders"}


def test_icd_synonyms(h):
    gad = concept(h, "F41.1")
    assert gad.name == "Generalized anxiety disorder"
    assert {"Anxiety neurosis", "Anxiety state"} <= set(gad.synonyms)
    assert "Anxiety disorder" in concept(h, "F41.9").synonyms         # ", unspecified" dropped
    assert "Panic disorder" in concept(h, "F41.0").synonyms           # "[...]" dropped


def test_mesh_uninverted_and_curated_synonyms(h):
    assert "Social Phobia" in concept(h, "F03.080.725.500").synonyms
    assert "Post-Traumatic Stress Disorders" in concept(h, "D013313").synonyms
    assert "PTSD" in concept(h, "D013313").synonyms


def test_unknown_target_names_the_key(h):
    with pytest.raises(WorkflowError) as err:
        h.resolve_targets(["F03.080", "Z99.999.999"], key="annotate.targets")
    assert err.value.key == "annotate.targets[1]"
    assert "Z99.999.999" in str(err.value)


def test_presets_resolve(h):
    presets = yaml.safe_load((Path(__file__).parents[2] / "hdsu_ray/hierarchy/targets.yaml").read_text())
    assert {"mhqa-anxiety", "mhqa-depression", "mhqa-trauma", "medmcqa-surgery"} <= set(presets)
    for name, targets in presets.items():
        assert h.resolve_targets(targets, key=name), name


def test_levels_file_is_replaceable_and_cached(tmp_path):
    levels = tmp_path / "levels.yaml"
    levels.write_text("mesh:\n  F: 1\nicd10cm:\n  default: {category: 2}\n")
    synonyms = tmp_path / "synonyms.yaml"
    synonyms.write_text("D001008: {name: Anxiety Disorders, terms: [nerves]}\n")
    h2 = load_hierarchy(levels_path=levels, synonyms_path=synonyms, cache_dir=tmp_path / "c")
    assert concept(h2, "F03.080").level == 1 and concept(h2, "A01").level == 0
    assert concept(h2, "F41").level == 2 and concept(h2, "F41.1").level == 0
    assert "nerves" in concept(h2, "F03.080").synonyms
    assert len(list((tmp_path / "c").glob("hierarchy-*.pkl"))) == 1
    again = load_hierarchy(levels_path=levels, synonyms_path=synonyms, cache_dir=tmp_path / "c")
    assert again.concepts == h2.concepts and again.sources == h2.sources
    levels.write_text("mesh:\n  F: 2\n")           # a changed input is a new cache entry
    assert concept(load_hierarchy(levels_path=levels, synonyms_path=synonyms,
                                  cache_dir=tmp_path / "c"), "F03.080").level == 2
    assert len(list((tmp_path / "c").glob("hierarchy-*.pkl"))) == 2


def test_synonym_entry_with_wrong_name_is_rejected(h, tmp_path):
    synonyms = tmp_path / "synonyms.yaml"
    synonyms.write_text("D001008: {name: Depression, terms: [x]}\n")
    copy = ConceptHierarchy(list(h.concepts), h.mesh_tree, h.icd_codes)
    with pytest.raises(WorkflowError, match="Anxiety Disorders"):
        _add_synonyms(copy, synonyms)
