"""Deterministic forget / retain / holdout selection from one data file."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from hdsu_ray.config.paths import data_path
from hdsu_ray.config.schema import Selection, Workflow
from hdsu_ray.data.loaders import load_records
from hdsu_ray.data.records import MCQRecord
from hdsu_ray.errors import WorkflowError


SPLITS = ("forget", "retain_train", "retain_val", "retain_test", "holdout")


@dataclass(frozen=True)
class SelectedData:
    """The sets of one workflow.

    ``retain`` is every retain row the model learns; it is partitioned into ``retain_train`` (the
    only retain rows unlearning reads: retain losses, Fisher, basis, references), ``retain_val``
    (checkpoint selection and tuning) and ``retain_test`` (only reported). ``holdout`` rows come
    from the forget domain but are never learned: the non-members of membership inference.
    """

    forget: list[MCQRecord]
    retain: list[MCQRecord]
    holdout: list[MCQRecord]
    retain_train: list[MCQRecord] = field(default_factory=list)
    retain_val: list[MCQRecord] = field(default_factory=list)
    retain_test: list[MCQRecord] = field(default_factory=list)

    def splits(self) -> dict[str, dict]:
        """``{split: {"n", "sha256"}}``, the digest over the split's sorted row ids (results.json)."""
        return {name: {"n": len(getattr(self, name)),
                       "sha256": hashlib.sha256("\n".join(sorted(r.uid for r in getattr(self, name))).encode()).hexdigest()}
                for name in SPLITS}

    def digest(self, which: str) -> str:
        """SHA-256 over the sorted uids and answers of a set: identifies it without its text."""
        rows = sorted(f"{r.uid}\t{r.answer_index}" for r in getattr(self, which))
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()

    def content_digest(self) -> str:
        """SHA-256 over the full content of every selected row, in selection order: ids, question,
        options, answer and the selection fields (topic, subject, ...). Every cache key built on
        what a model learned hashes this, never the data file's path, so a changed row anywhere
        in the selection is a new key."""
        from hdsu_ray.store import digest

        return digest({name: [record_content(r) for r in getattr(self, name)]
                       for name in ("forget", "retain", "holdout")})


def record_content(r: MCQRecord) -> list:
    """The parts of a record that decide what a model learns from it or is scored on."""
    return [r.uid, r.source, r.question, list(r.options), r.answer_index, sorted(r.fields.items())]


def _matches(record: MCQRecord, sel: Selection) -> bool:
    return (record.fields.get(sel.field) in sel.values) != sel.exclude


def _shuffled(records: list[MCQRecord], seed: int, salt: str) -> list[MCQRecord]:
    # Sort first so the result depends on the rows, not on file order quirks; salt per set.
    out = sorted(records, key=lambda r: r.uid)
    random.Random(f"{seed}:{salt}").shuffle(out)
    return out


def select_data(workflow: Workflow, file: str | None = None) -> SelectedData:
    """Load the workflow's data file and cut it into forget, retain and holdout sets."""
    cfg = workflow.data
    records = load_records(cfg.source, data_path(workflow, cfg.path))
    if records and cfg.forget.field not in records[0].fields:
        raise WorkflowError(f"field {cfg.forget.field!r} does not exist in {cfg.source} records", file=file,
                            key="data.forget.field", expected=f"one of {sorted(records[0].fields)}")
    if records and cfg.retain.field not in records[0].fields:
        raise WorkflowError(f"field {cfg.retain.field!r} does not exist in {cfg.source} records", file=file,
                            key="data.retain.field", expected=f"one of {sorted(records[0].fields)}")
    forget_pool = _shuffled([r for r in records if _matches(r, cfg.forget)], cfg.seed, "forget")
    retain_pool = _shuffled([r for r in records if _matches(r, cfg.retain)], cfg.seed, "retain")
    if not forget_pool:
        raise WorkflowError("selects no rows", file=file, key="data.forget.values",
                            expected=f"values of field {cfg.forget.field!r} present in the data file")
    if not retain_pool:
        raise WorkflowError("selects no rows", file=file, key="data.retain.values",
                            expected=f"values of field {cfg.retain.field!r} present in the data file")
    overlap = {r.uid for r in forget_pool} & {r.uid for r in retain_pool}
    if overlap:
        raise WorkflowError(f"retain set overlaps the forget set in {len(overlap)} rows", file=file,
                            key="data.retain", expected="disjoint forget and retain selections")
    n_hold = round(cfg.holdout_fraction * len(forget_pool))
    holdout, forget = forget_pool[:n_hold], forget_pool[n_hold:]
    limit = cfg.forget.limit
    forget = forget[:limit] if limit else forget
    holdout = holdout[:limit] if limit else holdout
    retain = retain_pool[: cfg.retain.limit] if cfg.retain.limit else retain_pool
    if not forget:
        raise WorkflowError("holdout_fraction leaves no forget rows", file=file, key="data.holdout_fraction")
    return SelectedData(forget, retain, holdout, **split_retain(retain, cfg.splits, cfg.seed, file))


def split_retain(retain: list[MCQRecord], splits, seed: int, file: str | None) -> dict[str, list[MCQRecord]]:
    """Partition the retain rows deterministically (by seed and row ids, not file order) into
    ``retain_train``, ``retain_val`` and ``retain_test``; each part keeps the selection's order."""
    order = _shuffled(retain, seed, "splits")
    n_test, n_val = round(splits.retain_test * len(retain)), round(splits.retain_val * len(retain))
    if min(n_test, n_val, len(retain) - n_test - n_val) < 1:
        raise WorkflowError(f"{len(retain)} retain rows cannot be split into train, val and test "
                            f"({splits.retain_val:g} / {splits.retain_test:g})", file=file, key="data.splits",
                            expected="at least one row in each part: more retain rows, or other shares")
    part = {r.uid: "retain_test" for r in order[:n_test]}
    part.update({r.uid: "retain_val" for r in order[n_test:n_test + n_val]})
    out = {name: [] for name in ("retain_train", "retain_val", "retain_test")}
    for r in retain:
        out[part.get(r.uid, "retain_train")].append(r)
    return out
