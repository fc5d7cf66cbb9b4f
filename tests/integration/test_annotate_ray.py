"""Annotate stage: the Ray Data job writes exactly what the single-process function returns."""

import json
from pathlib import Path

import pytest

from hdsu_ray.data.loaders import load_records
from hdsu_ray.errors import WorkflowError
from hdsu_ray.hierarchy.build import data_root, default_mesh_path
from hdsu_ray.stages.annotate import (ConceptSpec, annotate_rows, coverage, qa_rows,
                                      read_annotations, run_annotate)

MHQA = data_root() / "mhqa" / "mhqa_gold.csv"
pytestmark = pytest.mark.skipif(not (MHQA.is_file() and default_mesh_path().is_file()),
                                reason=f"MHQA / MeSH not found under {data_root()}")


def train_tokenizer(texts, out_dir: Path, vocab_size: int = 2000) -> Path:
    """The project's own BPE (as the learn stage trains it), saved to ``out_dir``."""
    from hdsu_ray.models.build import train_tokenizer as project_tokenizer

    project_tokenizer(list(texts), vocab_size).save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def rows():
    records = load_records("mhqa", MHQA)
    picked, per_topic = [], {}
    for r in records:  # the first 15 rows of each of the four domains
        if per_topic.get(r.fields["topic"], 0) < 15:
            per_topic[r.fields["topic"]] = per_topic.get(r.fields["topic"], 0) + 1
            picked.append(r)
    return qa_rows(picked, lambda r: "forget" if r.fields["topic"] == "Anxiety" else "retain")


@pytest.fixture(scope="module")
def tokenizer_dir(rows, tmp_path_factory):
    return train_tokenizer([r["prompt"] + r["answer"] for r in rows],
                           tmp_path_factory.mktemp("tok"))


SPEC = ConceptSpec(targets=["preset:mhqa-anxiety"])


def test_ray_output_equals_single_process(ray_local, rows, tokenizer_dir, tmp_path):
    assert len(rows) == 60
    single = annotate_rows(rows, tokenizer_dir, SPEC)
    result = run_annotate(rows, tokenizer_dir, SPEC, tmp_path / "out", parallelism=2,
                          batch_size=16)
    from_ray = read_annotations(tmp_path / "out")
    assert set(from_ray) == {r["uid"] for r in rows}
    assert from_ray == {a["uid"]: a for a in single}

    cov = json.loads(Path(result["coverage_file"]).read_text())
    assert cov == json.loads(json.dumps(result["coverage"]))
    expected = coverage(single)
    assert cov["tokens"] == expected["tokens"] and cov["by_split"] == expected["by_split"]
    assert cov["by_split"]["forget"]["items"] == 15 and cov["by_split"]["retain"]["items"] == 45
    assert cov["forget_targeted_fraction"] > cov["retain_targeted_fraction"]
    assert sum(cov["tokens"]["by_label"].values()) == cov["tokens"]["total"]
    concepts = json.loads(Path(result["concepts_file"]).read_text())
    assert any(c["targeted"] and c["name"] == "Anxiety" for c in concepts.values())
    assert not list((tmp_path / "out").glob(".*tmp*")), "temporary files left behind"


def test_labels_align_with_text(rows, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))  # how training tokenizes
    out = annotate_rows(rows[:20], tokenizer_dir, SPEC)
    seen_targeted = set()
    for row, ann in zip(rows, out):
        text = row["prompt"] + row["answer"]
        n = len(ann["input_ids"])
        assert n == len(ann["labels"]) == len(ann["levels"]) == len(ann["weights"]) == len(ann["concept_ids"])
        enc = tok(text, return_offsets_mapping=True)  # transformers, as training tokenizes
        assert ann["input_ids"] == list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        for (s, e), lab, lvl, w, c in zip(offsets, ann["labels"], ann["levels"], ann["weights"],
                                          ann["concept_ids"]):
            if lab == 2:
                seen_targeted.add(text[s:e].strip().lower())
                assert w == pytest.approx(1.0) and c >= 0 and lvl >= 1
            elif lab == 0:
                assert w == pytest.approx(0.1)
            else:
                assert lvl in (1, 2) and w == 0.0
        # prompt/answer boundary: the answer text starts at token n_prompt_tokens
        k = ann["n_prompt_tokens"]
        assert offsets[k][0] >= len(row["prompt"]) and offsets[k - 1][0] < len(row["prompt"])
    assert any("anx" in t for t in seen_targeted), seen_targeted


def test_unknown_target_fails_before_ray(rows, tokenizer_dir, tmp_path):
    spec = ConceptSpec(targets=["F03.080", "NOT-A-CODE-XYZ"], key="annotate.concepts")
    with pytest.raises(WorkflowError) as err:
        run_annotate(rows, tokenizer_dir, spec, tmp_path)
    assert err.value.key == "annotate.concepts.targets[1]"
    with pytest.raises(WorkflowError):
        ConceptSpec(targets=["F03.080"], weights={"targeted": {7: 1.0}})
