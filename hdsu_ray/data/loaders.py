"""Loaders for the four QA sources, all producing :class:`MCQRecord`.

Each loader reads one file and fails with a :class:`WorkflowError` that names the file and the
line (or key) of a malformed row, so a user can fix the file instead of reading a traceback.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable

from hdsu_ray.data.records import MCQRecord
from hdsu_ray.errors import WorkflowError

Loader = Callable[[Path], list[MCQRecord]]
LOADERS: dict[str, Loader] = {}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn
    return wrap


def load_records(source: str, path: str | Path) -> list[MCQRecord]:
    """Read every row of ``path`` with the loader registered as ``source``."""
    if source not in LOADERS:
        raise WorkflowError(f"unknown data source {source!r}", expected=f"one of {sorted(LOADERS)}")
    path = Path(path)
    if not path.is_file():
        raise WorkflowError("data file not found", file=str(path), expected="an existing file")
    return LOADERS[source](path)


def _bad_row(path: Path, line: int, why: str) -> WorkflowError:
    return WorkflowError(f"line {line}: {why}", file=str(path))


def _answer_index(raw: str, n_options: int, path: Path, line: int, base: int) -> int:
    """Parse an answer number such as ``"3"``, ``3`` or ``"3.0"`` (MHQA-B) into a 0-based index."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _bad_row(path, line, f"answer number {raw!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or not base <= int(value) < base + n_options:
        raise _bad_row(path, line, f"answer number {raw!r} outside {base}..{base + n_options - 1}")
    return int(value) - base


@register_loader("medmcqa")
def load_medmcqa(path: Path) -> list[MCQRecord]:
    """MedMCQA JSONL: ``question, opa..opd, cop`` (1-4 in this copy), ``subject_name, topic_name, id``."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                options = tuple(str(row[k]) for k in ("opa", "opb", "opc", "opd"))
                question, rid, cop = str(row["question"]), str(row["id"]), row["cop"]
            except json.JSONDecodeError as exc:
                raise _bad_row(path, line_no, f"not valid JSON ({exc.msg})") from None
            except KeyError as exc:
                raise _bad_row(path, line_no, f"missing field {exc.args[0]!r}") from None
            index = _answer_index(cop, 4, path, line_no, base=1)
            fields = {"subject_name": str(row.get("subject_name") or "Unknown"),
                      "topic_name": str(row.get("topic_name") or ""),
                      "choice_type": str(row.get("choice_type") or "")}
            records.append(MCQRecord(f"medmcqa:{rid}", "medmcqa", question, options, index, fields))
    return records


@register_loader("mhqa")
def load_mhqa(path: Path) -> list[MCQRecord]:
    """MHQA CSV, gold layout (``correct_option_number``) or MHQA-B layout (``correct_option_num``)."""
    records = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = set(reader.fieldnames or ())
        answer_col = next((c for c in ("correct_option_number", "correct_option_num") if c in header), None)
        needed = {"id", "topic", "question", "option1", "option2", "option3", "option4"}
        if answer_col is None or not needed <= header:
            missing = sorted(needed - header) + ([] if answer_col else ["correct_option_number"])
            raise WorkflowError(f"line 1: header lacks {missing}", file=str(path))
        for row in reader:
            line_no = reader.line_num
            if None in row or any(row[c] is None for c in (*needed, answer_col)):
                raise _bad_row(path, line_no, "wrong number of columns")
            options = tuple(row[f"option{i}"] for i in range(1, 5))
            index = _answer_index(row[answer_col], 4, path, line_no, base=1)
            fields = {"topic": row["topic"], "type": row.get("type") or ""}
            uid = f"mhqa:{row['id']}:{line_no}"  # PMIDs repeat across questions of one abstract
            records.append(MCQRecord(uid, "mhqa", row["question"], options, index, fields))
    return records


@register_loader("mmlu")
def load_mmlu(path: Path) -> list[MCQRecord]:
    """MMLU CSV without header: ``question, A, B, C, D, answer letter``; subject from the file name."""
    subject = path.stem.removesuffix("_test")
    records = []
    with path.open(encoding="utf-8", newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if len(row) != 6:
                raise _bad_row(path, line_no, f"expected 6 columns, found {len(row)}")
            letter = row[5].strip().upper()
            if letter not in "ABCD" or len(letter) != 1:
                raise _bad_row(path, line_no, f"answer {row[5]!r} is not one of A, B, C, D")
            records.append(MCQRecord(f"mmlu:{subject}:{line_no}", "mmlu", row[0], tuple(row[1:5]),
                                     "ABCD".index(letter), {"subject": subject}))
    return records


@register_loader("pubmedqa")
def load_pubmedqa(path: Path) -> list[MCQRecord]:
    """PubMedQA labelled JSON keyed by PMID: a yes/no/maybe question over its abstract."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _bad_row(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    options = ("yes", "no", "maybe")
    records = []
    for pmid, row in data.items():
        decision = row.get("final_decision")
        if decision not in options:
            raise WorkflowError(f"entry {pmid}: final_decision {decision!r} not yes/no/maybe", file=str(path))
        fields = {"year": str(row.get("YEAR", "")), "context": " ".join(row.get("CONTEXTS", []))}
        records.append(MCQRecord(f"pubmedqa:{pmid}", "pubmedqa", row["QUESTION"], options,
                                 options.index(decision), fields))
    return records
