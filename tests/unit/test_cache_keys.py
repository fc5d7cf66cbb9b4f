"""Cache keys hash content: a changed row is a new learned model (and so new masks, bases and
references, whose keys build on it); an unchanged selection hits the cache wherever its file lies."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from hdsu_ray.checks import load_workflow
from hdsu_ray.data.select import select_data
from hdsu_ray.stages.learn import learned_key
from hdsu_ray.store import content_key, digest


def _copy_mhqa(data_root: Path, dest: Path, edit=None) -> Path:
    """A data root holding mhqa/mhqa_gold.csv, optionally with one row's question changed."""
    target = dest / "mhqa" / "mhqa_gold.csv"
    target.parent.mkdir(parents=True)
    if edit is None:
        shutil.copyfile(data_root / "mhqa" / "mhqa_gold.csv", target)
        return dest
    with open(data_root / "mhqa" / "mhqa_gold.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    edit(rows)
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dest


def _key(root: Path) -> tuple[str, list]:
    # The copies hold MHQA only; competence sets do not enter the learned model's key.
    wf = load_workflow("workflows/smoke.yaml", [f"data_root={root}", "evaluate.mmlu_path=null"])
    data = select_data(wf)
    return learned_key(wf, data), data.forget


def test_same_rows_under_another_root_hit_the_cache(data_root, tmp_path):
    key, _ = _key(data_root)
    copy_key, _ = _key(_copy_mhqa(data_root, tmp_path / "copy"))
    assert copy_key == key


def test_one_changed_question_is_a_new_learned_model(data_root, tmp_path):
    key, forget = _key(data_root)
    def edit(rows):
        row = next(r for r in rows if r["question"] == forget[0].question and r["topic"] == "Anxiety")
        row["question"] = row["question"] + " (edited)"

    edited_key, edited_forget = _key(_copy_mhqa(data_root, tmp_path / "edited", edit))
    # The same file name and selection settings, the same rows selected, one question differs.
    assert [r.uid for r in edited_forget] == [r.uid for r in forget]
    assert edited_key != key


def test_keys_hash_every_part_in_a_stable_order():
    assert content_key("mask", {"b": 1, "a": [1, 2]}) == content_key("mask", {"a": [1, 2], "b": 1})
    assert content_key("mask", 1) != content_key("basis", 1)
    assert content_key("mask", [8]) != content_key("mask", [1])
    assert len(digest("x")) == 64 and len(content_key("x")) == 16
