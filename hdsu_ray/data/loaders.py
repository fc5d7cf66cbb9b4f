"""Loaders for the four QA sources, all producing :class:`MCQRecord`.

Each loader reads one file and fails with a :class:`WorkflowError` that names the file, the line
(or entry) of a malformed row and the layout it expected, so a user can fix the file instead of
reading a traceback: bytes that are not UTF-8 (a latin-1 export, a binary file), a JSON value of
the wrong shape, a missing field. ``hdsu-ray validate`` loads the files, so these errors come
before Ray starts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

from hdsu_ray.data.records import MCQRecord
from hdsu_ray.errors import WorkflowError, read_utf8

Loader = Callable[[Path], list[MCQRecord]]
LOADERS: dict[str, Loader] = {}

# What each source's file must look like (the "expected" of its errors).
LAYOUTS = {
    "medmcqa": "JSON lines, each an object with question, opa, opb, opc, opd, cop (1-4) and id",
    "mhqa": "a CSV with the header id, topic, question, option1..option4, correct_option_number (or _num)",
    "mmlu": "a CSV without header: question, A, B, C, D, answer letter",
    "pubmedqa": "a JSON object keyed by PMID, each entry an object with QUESTION, CONTEXTS and final_decision",
}


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


def _bad_row(path: Path, line: int | str, why: str, source: str) -> WorkflowError:
    where = f"line {line}" if isinstance(line, int) else line
    return WorkflowError(f"{where}: {why}", file=str(path), expected=LAYOUTS[source])


def _read_text(path: Path, source: str) -> str:
    """The whole file as text; the first byte that is not UTF-8 is reported with its line."""
    return read_utf8(path, "data file", lambda line, why: _bad_row(
        path, line, why + " (a latin-1 or binary file?)", source))


def _json(text: str, path: Path, line: int, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad_row(path, line + exc.lineno - 1, f"not valid JSON ({exc.msg})", source) from None
    except ValueError as exc:  # a number of more than 4300 digits
        raise _bad_row(path, line, f"not valid JSON ({str(exc)[:80]})", source) from None
    except RecursionError:
        raise _bad_row(path, line, "JSON nested too deep", source) from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number")


def _answer_index(raw: Any, n_options: int, path: Path, line: int, base: int, source: str) -> int:
    """Parse an answer number such as ``"3"``, ``3`` or ``"3.0"`` (MHQA-B) into a 0-based index."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise _bad_row(path, line, f"answer number {raw!r} is not a number", source) from None
    if not math.isfinite(value) or value != int(value) or not base <= int(value) < base + n_options:
        raise _bad_row(path, line, f"answer number {raw!r} outside {base}..{base + n_options - 1}", source)
    return int(value) - base


def _csv_rows(reader, path: Path, source: str):
    """``reader``'s rows; a csv.Error (a NUL byte, an unclosed quote at the end) names its line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _bad_row(path, reader.line_num, f"not valid CSV ({exc})", source) from None


@register_loader("medmcqa")
def load_medmcqa(path: Path) -> list[MCQRecord]:
    """MedMCQA JSONL: ``question, opa..opd, cop`` (1-4 in this copy), ``subject_name, topic_name, id``."""
    records = []
    for line_no, line in enumerate(_read_text(path, "medmcqa").split("\n"), start=1):
        if not line.strip():
            continue
        row = _json(line, path, line_no, "medmcqa")
        if not isinstance(row, dict):
            raise _bad_row(path, line_no, f"{_kind(row)}, not an object", "medmcqa")
        try:
            options = tuple(str(row[k]) for k in ("opa", "opb", "opc", "opd"))
            question, rid, cop = str(row["question"]), str(row["id"]), row["cop"]
        except KeyError as exc:
            raise _bad_row(path, line_no, f"missing field {exc.args[0]!r}", "medmcqa") from None
        index = _answer_index(cop, 4, path, line_no, base=1, source="medmcqa")
        fields = {"subject_name": str(row.get("subject_name") or "Unknown"),
                  "topic_name": str(row.get("topic_name") or ""),
                  "choice_type": str(row.get("choice_type") or "")}
        records.append(MCQRecord(f"medmcqa:{rid}", "medmcqa", question, options, index, fields))
    return records


@register_loader("mhqa")
def load_mhqa(path: Path) -> list[MCQRecord]:
    """MHQA CSV, gold layout (``correct_option_number``) or MHQA-B layout (``correct_option_num``)."""
    records = []
    reader = csv.DictReader(io.StringIO(_read_text(path, "mhqa"), newline=""))
    try:
        header = set(reader.fieldnames or ())
    except csv.Error as exc:
        raise _bad_row(path, 1, f"not valid CSV ({exc})", "mhqa") from None
    answer_col = next((c for c in ("correct_option_number", "correct_option_num") if c in header), None)
    needed = {"id", "topic", "question", "option1", "option2", "option3", "option4"}
    if answer_col is None or not needed <= header:
        missing = sorted(needed - header) + ([] if answer_col else ["correct_option_number"])
        raise _bad_row(path, 1, f"header lacks {missing}", "mhqa")
    for row in _csv_rows(reader, path, "mhqa"):
        line_no = reader.line_num
        if None in row or any(row[c] is None for c in (*needed, answer_col)):
            raise _bad_row(path, line_no, "wrong number of columns", "mhqa")
        options = tuple(row[f"option{i}"] for i in range(1, 5))
        index = _answer_index(row[answer_col], 4, path, line_no, base=1, source="mhqa")
        fields = {"topic": row["topic"], "type": row.get("type") or ""}
        uid = f"mhqa:{row['id']}:{line_no}"  # PMIDs repeat across questions of one abstract
        records.append(MCQRecord(uid, "mhqa", row["question"], options, index, fields))
    return records


@register_loader("mmlu")
def load_mmlu(path: Path) -> list[MCQRecord]:
    """MMLU CSV without header: ``question, A, B, C, D, answer letter``; subject from the file name."""
    subject = path.stem.removesuffix("_test")
    records = []
    reader = csv.reader(io.StringIO(_read_text(path, "mmlu"), newline=""))
    for row in _csv_rows(reader, path, "mmlu"):
        line_no = reader.line_num
        if len(row) != 6:
            raise _bad_row(path, line_no, f"expected 6 columns, found {len(row)}", "mmlu")
        letter = row[5].strip().upper()
        if letter not in "ABCD" or len(letter) != 1:
            raise _bad_row(path, line_no, f"answer {row[5]!r} is not one of A, B, C, D", "mmlu")
        records.append(MCQRecord(f"mmlu:{subject}:{line_no}", "mmlu", row[0], tuple(row[1:5]),
                                 "ABCD".index(letter), {"subject": subject}))
    return records


@register_loader("pubmedqa")
def load_pubmedqa(path: Path) -> list[MCQRecord]:
    """PubMedQA labelled JSON keyed by PMID: a yes/no/maybe question over its abstract."""
    data = _json(_read_text(path, "pubmedqa"), path, 1, "pubmedqa")
    if not isinstance(data, dict):
        raise _bad_row(path, 1, f"the file holds {_kind(data)}, not an object keyed by PMID", "pubmedqa")
    options = ("yes", "no", "maybe")
    records = []
    for pmid, row in data.items():
        where = f"entry {pmid!r}"
        if not isinstance(row, dict):
            raise _bad_row(path, where, f"{_kind(row)}, not an object", "pubmedqa")
        question, contexts, decision = row.get("QUESTION"), row.get("CONTEXTS", []), row.get("final_decision")
        if not isinstance(question, str):
            raise _bad_row(path, where, "no QUESTION text" if question is None else
                           f"QUESTION is {_kind(question)}, not a string", "pubmedqa")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise _bad_row(path, where, "CONTEXTS is not a list of strings", "pubmedqa")
        if decision not in options:
            raise _bad_row(path, where, f"final_decision {decision!r} not yes/no/maybe", "pubmedqa")
        fields = {"year": str(row.get("YEAR", "")), "context": " ".join(contexts)}
        records.append(MCQRecord(f"pubmedqa:{pmid}", "pubmedqa", question, options, options.index(decision),
                                 fields))
    return records
