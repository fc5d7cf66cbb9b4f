"""Loaders on the real shared files (counts checked by hand with csv/json), malformed rows reported by
file and line, and deterministic selection."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from hdsu_ray.checks import load_workflow
from hdsu_ray.data.loaders import load_records
from hdsu_ray.data.select import select_data
from hdsu_ray.errors import WorkflowError

MHQA_HEADER = "id,topic,type,question,option1,option2,option3,option4,correct_option,correct_option_number\n"
MHQA_B_HEADER = "id,topic,type,question,option1,option2,option3,option4,correct_option,correct_option_num\n"
MMLU_COUNTS = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144, "college_medicine": 173,
               "medical_genetics": 100, "professional_medicine": 272}


@pytest.fixture(scope="module")
def medmcqa(data_root):
    return load_records("medmcqa", data_root / "medmcqa" / "dev.jsonl")


@pytest.fixture(scope="module")
def mhqa(data_root):
    return load_records("mhqa", data_root / "mhqa" / "mhqa_gold.csv")


# --- real files --------------------------------------------------------------------------------------

def test_medmcqa_dev(medmcqa):
    assert len(medmcqa) == 4183
    assert Counter(r.fields["subject_name"] for r in medmcqa)["Surgery"] == 369
    first, third = medmcqa[0], medmcqa[2]
    # line 1: "cop":1 -> opa; line 3: "cop":3 -> opc
    assert first.uid == "medmcqa:45258d3d-b974-44dd-a161-c3fccbdadd88"
    assert first.answer_index == 0
    assert first.answer == "Impulse through myelinated fibers is slower than non-myelinated fibers"
    assert first.fields["subject_name"] == "Physiology"
    assert third.answer_index == 2
    assert third.answer.startswith("Amniotic fluid samples plus chromosomal analysis")
    assert all(len(r.options) == 4 and 0 <= r.answer_index < 4 for r in medmcqa)
    assert len({r.uid for r in medmcqa}) == len(medmcqa)


def test_mhqa_gold(mhqa, data_root):
    assert len(mhqa) == 2475
    topics = Counter(r.fields["topic"] for r in mhqa)
    assert topics["Anxiety"] == 604
    assert set(topics) == {"Anxiety", "Depression", "Trauma", "Obsessive/Compulsive Disorders"}
    # row 1: correct_option_number 1; row 2: 4
    assert mhqa[0].answer_index == 0 and mhqa[0].answer == "Recurrent depressive disorder patients"
    assert mhqa[0].fields == {"topic": "Depression", "type": "Diagnostic"}
    assert mhqa[1].answer_index == 3 and mhqa[1].answer == "Patients with obsessive-compulsive disorder"
    assert len({r.uid for r in mhqa}) == len(mhqa)
    # The answer number agrees with the answer text on (almost) every row; the file has a few
    # rows whose text differs in case or whitespace, or disagrees.
    with (data_root / "mhqa" / "mhqa_gold.csv").open(newline="", encoding="utf-8") as fh:
        texts = [row["correct_option"].strip().lower() for row in csv.DictReader(fh)]
    agree = sum(r.answer.strip().lower() == t for r, t in zip(mhqa, texts))
    assert agree >= len(mhqa) - 10


@pytest.mark.parametrize("subject, count", sorted(MMLU_COUNTS.items()))
def test_mmlu(data_root, subject, count):
    path = data_root / "mmlu_medical" / f"{subject}_test.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == count
    records = load_records("mmlu", path)
    assert len(records) == count
    assert {r.fields["subject"] for r in records} == {subject}
    assert [r.options[r.answer_index] for r in records] == [row[1 + "ABCD".index(row[5])] for row in rows]


def test_mmlu_file_set(data_root):
    assert {p.name.removesuffix("_test.csv") for p in (data_root / "mmlu_medical").glob("*.csv")} \
        == set(MMLU_COUNTS)


def test_mmlu_anatomy_first_rows(data_root):
    records = load_records("mmlu", data_root / "mmlu_medical" / "anatomy_test.csv")
    assert records[0].answer_index == 0 and records[0].answer == "paralysis of the facial muscles."
    assert records[1].answer_index == 1 and records[0].uid == "mmlu:anatomy:1"


def test_pubmedqa(data_root):
    records = load_records("pubmedqa", data_root / "pubmedqa" / "ori_pqal.json")
    assert len(records) == 1000
    assert Counter(r.answer for r in records) == {"yes": 552, "no": 338, "maybe": 110}
    first = records[0]
    assert first.uid == "pubmedqa:21645374" and first.options == ("yes", "no", "maybe")
    assert first.question.startswith("Do mitochondria play a role") and first.answer == "yes"
    assert first.fields["context"]


# --- MHQA-B layout and malformed files -----------------------------------------------------------------

def _mhqa_row(i: int, answer: str, topic: str = "Anxiety") -> str:
    return f'{i},{topic},Factoid,"Question {i}, with a comma?",a{i},b{i},c{i},d{i},x,{answer}\n'


def test_mhqa_b_layout(tmp_path):
    path = tmp_path / "mhqa_b.csv"
    path.write_text(MHQA_B_HEADER + _mhqa_row(1, "3.0") + _mhqa_row(2, "1") + _mhqa_row(3, "4.0", "Trauma"))
    records = load_records("mhqa", path)
    assert [r.answer_index for r in records] == [2, 0, 3]
    assert [r.answer for r in records] == ["c1", "a2", "d3"]
    assert records[0].question == "Question 1, with a comma?" and records[2].fields["topic"] == "Trauma"


@pytest.mark.parametrize("bad_row, why", [
    ("4,Anxiety,Factoid,Q?,a,b,c,d,x\n", "line 5"),  # short row: still names file and line
    ("4,Anxiety,Factoid,Q?,a,b,c,d,x\n", "wrong number of columns"),
    ("4,Anxiety,Factoid,Q?,a,b,c,d,x,1,extra\n", "wrong number of columns"),
    (_mhqa_row(4, "7"), "outside 1..4"),
    (_mhqa_row(4, "0"), "outside 1..4"),
    (_mhqa_row(4, "2.5"), "outside 1..4"),
    (_mhqa_row(4, "two"), "not a number"),
    (_mhqa_row(4, ""), "not a number"),
])
def test_malformed_csv_row_names_file_and_line(tmp_path, bad_row, why):
    path = tmp_path / "bad.csv"
    path.write_text(MHQA_HEADER + _mhqa_row(1, "1") + _mhqa_row(2, "2") + _mhqa_row(3, "3") + bad_row
                    + _mhqa_row(5, "4"))
    with pytest.raises(WorkflowError) as exc:
        load_records("mhqa", path)
    assert exc.value.file == str(path)
    assert "line 5" in str(exc.value) and why in str(exc.value)


@pytest.mark.parametrize("answer", ["nan", "inf"])
def test_non_finite_answer_is_a_workflow_error(tmp_path, answer):
    path = tmp_path / "bad.csv"
    path.write_text(MHQA_B_HEADER + _mhqa_row(1, "1") + _mhqa_row(2, answer))
    with pytest.raises(WorkflowError, match="line 3"):
        load_records("mhqa", path)


def test_multiline_csv_field_reports_the_physical_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(MHQA_HEADER + '1,Anxiety,Factoid,"A question\nover two lines?",a,b,c,d,x,1\n'
                    + _mhqa_row(2, "9"))
    with pytest.raises(WorkflowError, match="line 4"):
        load_records("mhqa", path)


def test_csv_header_without_answer_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,topic,question,option1,option2,option3,option4\n1,A,Q,a,b,c,d\n")
    with pytest.raises(WorkflowError, match="line 1") as exc:
        load_records("mhqa", path)
    assert "correct_option_number" in str(exc.value) and exc.value.file == str(path)


def _medmcqa_line(i: int, cop) -> str:
    return json.dumps({"question": f"Q{i}", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": cop,
                       "subject_name": "Surgery", "topic_name": None, "id": f"id{i}"}) + "\n"


@pytest.mark.parametrize("bad_line, why", [
    ('{"question": "Q3", "opa": "a",\n', "not valid JSON"),
    (_medmcqa_line(3, 5), "outside 1..4"),
    (json.dumps({"question": "Q3", "opa": "a", "opb": "b", "opc": "c", "cop": 1, "id": "x"}) + "\n",
     "missing field 'opd'"),
])
def test_malformed_jsonl_line_names_file_and_line(tmp_path, bad_line, why):
    path = tmp_path / "dev.jsonl"
    path.write_text(_medmcqa_line(1, 1) + "\n" + bad_line + _medmcqa_line(4, 2))
    with pytest.raises(WorkflowError) as exc:
        load_records("medmcqa", path)
    assert exc.value.file == str(path)
    assert "line 3" in str(exc.value) and why in str(exc.value)


def test_malformed_mmlu_row(tmp_path):
    path = tmp_path / "anatomy_test.csv"
    path.write_text("Q1,a,b,c,d,A\nQ2,a,b,c,d,E\n")
    with pytest.raises(WorkflowError, match="line 2: answer 'E'"):
        load_records("mmlu", path)


def test_malformed_pubmedqa(tmp_path):
    path = tmp_path / "pq.json"
    path.write_text('{\n  "1": {"QUESTION": "q", "final_decision": "yes"},\n  "2": oops\n}\n')
    with pytest.raises(WorkflowError, match="line 3") as exc:
        load_records("pubmedqa", path)
    assert exc.value.file == str(path)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(WorkflowError, match="not found"):
        load_records("mhqa", tmp_path / "absent.csv")
    with pytest.raises(WorkflowError, match="unknown data source"):
        load_records("nope", tmp_path / "absent.csv")


# --- selection ---------------------------------------------------------------------------------------

def _uids(records) -> list[str]:
    return [r.uid for r in records]


def test_selection_is_deterministic_and_limited():
    wf = load_workflow("workflows/smoke.yaml")
    a, b = select_data(wf), select_data(wf)
    assert _uids(a.forget) == _uids(b.forget) and _uids(a.retain) == _uids(b.retain)
    assert len(a.forget) == 16 and len(a.retain) == 32 and len(a.holdout) == 16
    assert not {r.uid for r in a.holdout} & {r.uid for r in a.forget + a.retain}
    # retain is split into disjoint train / val / test parts that cover it
    parts = [a.retain_train, a.retain_val, a.retain_test]
    assert [len(x) for x in parts] == [13, 6, 13]
    assert sorted(r.uid for x in parts for r in x) == sorted(r.uid for r in a.retain)
    assert {r.fields["topic"] for r in a.forget} == {"Anxiety"}
    assert {r.fields["topic"] for r in a.retain} <= {"Depression", "Trauma"}
    assert a.digest("forget") == b.digest("forget")

    other = select_data(load_workflow("workflows/smoke.yaml", ["data.seed=1"]))
    assert len(other.forget) == 16
    assert set(_uids(other.forget)) != set(_uids(a.forget))
    assert other.digest("forget") != a.digest("forget")
    assert other.content_digest() != a.content_digest()


def test_selection_without_limit_takes_every_row():
    wf = load_workflow("workflows/smoke.yaml", ["data.forget.limit=null", "data.retain.limit=null",
                                                "data.holdout_fraction=0"])
    sel = select_data(wf)
    assert len(sel.forget) == 604 and len(sel.retain) == 617 * 2


def test_exclude_and_holdout(data_root):
    wf = load_workflow("workflows/smoke.yaml", [
        "data.source=medmcqa", "data.path=medmcqa/dev.jsonl", "data.forget.field=subject_name",
        "data.forget.values=[Surgery]", "data.forget.limit=null", "data.retain.field=subject_name",
        "data.retain.values=[Surgery]", "data.retain.exclude=true", "data.retain.limit=100",
        "data.holdout_fraction=0.25"])
    sel = select_data(wf)
    assert len(sel.holdout) == round(0.25 * 369) and len(sel.forget) == 369 - len(sel.holdout)
    assert not set(_uids(sel.holdout)) & set(_uids(sel.forget))
    assert len(sel.retain) == 100 and all(r.fields["subject_name"] != "Surgery" for r in sel.retain)


# --- bytes and shapes a loader must refuse in one line (the CLI cases are in test_bad_input.py) -----

@pytest.mark.parametrize("source, content, needles", [
    ("mhqa", MHQA_HEADER.encode() + "1,Anxiety,F,Caf\xe9?,a,b,c,d,a,1\n".encode("latin-1"), ["line 2", "0xe9"]),
    ("medmcqa", b'\x00\x01\xff\xfe', ["line 1", "0xff", "not UTF-8"]),
    ("medmcqa", b'"just a string"\n', ["line 1", "a string, not an object"]),
    ("medmcqa", b'{"question": "q", "opa": 1, "opb": 2, "opc": 3, "opd": 4, "cop": [1], "id": 1}\n',
     ["line 1", "answer number [1] is not a number"]),
    ("mmlu", ('"' + "x" * 200_000 + '",a,b,c,d,A\n').encode(), ["line 1", "not valid CSV", "field larger"]),
    ("pubmedqa", b'"a string"', ["the file holds a string"]),
    ("pubmedqa", b'{"7": {"QUESTION": 3, "final_decision": "yes"}}', ["entry '7'", "QUESTION is a number"]),
    ("pubmedqa", b'{"7": {"QUESTION": "q", "CONTEXTS": "c", "final_decision": "yes"}}',
     ["entry '7'", "CONTEXTS is not a list of strings"]),
    ("pubmedqa", b"[" * 100_000 + b"]" * 100_000, ["JSON nested too deep"]),
    ("medmcqa", b'{"cop": 1' + b"0" * 5000 + b"}\n", ["line 1", "not valid JSON", "4300 digits"]),
])
def test_malformed_file_is_one_workflow_error(tmp_path, source, content, needles):
    path = tmp_path / "bad.data"
    path.write_bytes(content)
    with pytest.raises(WorkflowError) as exc:
        load_records(source, path)
    assert exc.value.file == str(path) and exc.value.expected  # the file and its expected layout
    for needle in needles:
        assert needle in str(exc.value), (needle, str(exc.value))


def test_validate_loads_and_selects_the_rows(capsys, tmp_path, data_root):
    """validate reads every row (a bad one far below the selected rows still counts) before Ray."""
    from hdsu_ray.cli import main

    bad = tmp_path / "mhqa.csv"
    bad.write_bytes((data_root / "mhqa" / "mhqa_gold.csv").read_bytes()
                    + "99,Anxiety,F,Caf\xe9?,a,b,c,d,a,1\n".encode("latin-1"))
    wf = tmp_path / "wf.yaml"
    wf.write_text(Path("workflows/smoke.yaml").read_text().replace("path: mhqa/mhqa_gold.csv", f"path: {bad}"))
    assert main(["validate", str(wf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hdsu-ray: error: {bad}: data.path: line ") and "0xe9" in err


def test_competence_sets_are_fixed_samples_with_pubmedqa_abstracts():
    from hdsu_ray.data.competence import competence_sets

    wf = load_workflow("workflows/smoke.yaml", ["evaluate.mmlu_path=mmlu_medical",
                                                "evaluate.pubmedqa_path=pubmedqa/ori_pqal.json",
                                                "evaluate.competence_samples=50"])
    a, b = competence_sets(wf), competence_sets(wf)
    assert {k: len(v) for k, v in a.items()} == {"mmlu": 50, "pubmedqa": 50}
    assert [r.uid for r in a["mmlu"]] == [r.uid for r in b["mmlu"]]
    assert len({r.fields["subject"] for r in a["mmlu"]}) > 1  # every subject file is read
    assert all(r.options == ("yes", "no", "maybe") and "\n" in r.question for r in a["pubmedqa"])
