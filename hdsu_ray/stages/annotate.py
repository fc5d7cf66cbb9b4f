"""Annotate stage: tokenize each training text and label every token (paper 1.2, step 1).

A row is ``{uid, split, prompt, answer}``; the annotated text is ``prompt + answer``, exactly what
the model trains on (:func:`hdsu_ray.data.text.qa_text`), so token positions line up with
training. Each token gets a label (0 neutral, 1 preserve, 2 targeted), a hierarchy level (0 none,
1-4), a loss weight and a concept index (-1 none; ``concepts.json`` names them).

Label rule: a concept under a forget target is *targeted*, whatever its level; otherwise a concept
whose level is in ``preserve_levels`` is *preserve*; every other token is *neutral*. The weight is
looked up by ``(label, level)`` in :attr:`ConceptSpec.weights` (``hdsu_ray/stages/concept_spec.py``).

Two entry points with the same output: :func:`annotate_rows` (single process) and
:func:`run_annotate` (Ray Data, one :class:`ConceptAnnotator` per actor, Parquet output written by the
driver).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hdsu_ray.core.concepts import (LABEL_NEUTRAL, LABEL_PRESERVE, LABEL_TARGETED, ConceptMatcher,
                                    label_tokens)
from hdsu_ray.data.records import MCQRecord
from hdsu_ray.data.text import qa_text
from hdsu_ray.errors import WorkflowError
from hdsu_ray.store import swap_dir, temp_dir_beside, write_text_atomic
from hdsu_ray.hierarchy.build import ConceptHierarchy
# ConceptSpec is also imported from here by callers: it is the annotate stage's input.
from hdsu_ray.stages.concept_spec import ConceptSpec, load_concepts

LABEL_NAMES = {LABEL_NEUTRAL: "neutral", LABEL_PRESERVE: "preserve", LABEL_TARGETED: "targeted"}
ANNOTATIONS_DIR, COVERAGE_FILE, CONCEPTS_FILE = "annotations.parquet", "coverage.json", "concepts.json"
SCHEMA = pa.schema([("uid", pa.string()), ("split", pa.string()),
                    ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int8())),
                    ("levels", pa.list_(pa.int8())), ("weights", pa.list_(pa.float32())),
                    ("concept_ids", pa.list_(pa.int32())), ("n_prompt_tokens", pa.int32())])


def load_backend_tokenizer(tokenizer_dir: str | Path):
    """The Rust tokenizer behind a saved HF fast tokenizer, without importing transformers.

    Same ids and offsets as transformers' ``AutoTokenizer`` for one text at a time (the annotate test
    checks it): transformers' call adds only Python bookkeeping and its import costs a Ray
    actor about 2 s. Padding and truncation stored in ``tokenizer.json`` are switched off, as
    transformers does for an unpadded call.
    """
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001  (the Rust error types are not exported)
        raise WorkflowError(f"cannot load tokenizer: {exc}", file=str(path),
                            expected="a HF fast tokenizer (tokenizer.json)") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


@dataclass(frozen=True)
class ConceptTables:
    """What an annotator needs from the hierarchy: per-concept label and level, and the matcher.

    Built once on the driver and shared through the object store, so actors skip loading the
    hierarchy (about 0.5 s each) and resolving the targets.
    """

    concept_label: np.ndarray  # [n_concepts] int8: LABEL_*
    concept_level: np.ndarray  # [n_concepts] int8: 0 none, 1-4
    matcher: ConceptMatcher

    @classmethod
    def from_spec(cls, spec: ConceptSpec) -> "ConceptTables":
        _, _, labels, levels, matcher = load_concepts(spec)
        return cls(labels, levels, matcher)


class ConceptAnnotator:
    """Tokenize and label rows; a Ray Data callable class (loads everything once per actor).

    Args:
        tokenizer_dir: a saved HF fast tokenizer (``tokenizer.json``).
        spec: labels, weights and special-token setting.
        tables: :class:`ConceptTables`, or an object-store reference to them; None loads them.
    """

    def __init__(self, tokenizer_dir: str, spec: ConceptSpec, tables: Any = None):
        self.tokenizer = load_backend_tokenizer(tokenizer_dir)
        self.add_special_tokens = spec.add_special_tokens
        if tables is None:
            tables = ConceptTables.from_spec(spec)
        elif not isinstance(tables, ConceptTables):  # [ObjectRef] handed over by run_annotate
            import ray

            tables = ray.get(tables[0])
        self.concept_label, self.concept_level = tables.concept_label, tables.concept_level
        self.matcher = tables.matcher
        self.table = spec.weight_table()

    def annotate(self, uid: str, split: str, prompt: str, answer: str) -> dict:
        """One row -> ``{uid, split, input_ids, labels, levels, weights, concept_ids,
        n_prompt_tokens}`` with Python lists."""
        text = prompt + answer
        enc = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
        offsets = enc.offsets
        spans = self.matcher.match(text)
        labels, levels, weights, concepts = label_tokens(spans, offsets, self.concept_label,
                                                         self.concept_level, self.table)
        cut = len(prompt)
        n_prompt = next((i for i, (s, e) in enumerate(offsets) if e > s and s >= cut), len(offsets))
        return {"uid": uid, "split": split, "input_ids": list(enc.ids),
                "labels": labels.tolist(), "levels": levels.tolist(), "weights": weights.tolist(),
                "concept_ids": concepts.tolist(), "n_prompt_tokens": int(n_prompt)}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [self.annotate(str(u), str(s), str(p), str(a)) for u, s, p, a in
                zip(batch["uid"], batch["split"], batch["prompt"], batch["answer"])]
        return to_table(rows)


def to_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def qa_rows(records: Iterable[MCQRecord], split_of: Callable[[MCQRecord], str]) -> list[dict]:
    """Annotate-stage rows from records: ``{uid, split, prompt, answer}`` via ``qa_text``."""
    rows = []
    for r in records:
        prompt, answer = qa_text(r)
        rows.append({"uid": r.uid, "split": split_of(r), "prompt": prompt, "answer": answer})
    return rows


def _check_rows(rows: Sequence[dict]) -> None:
    seen: set[str] = set()
    for i, r in enumerate(rows):
        missing = {"uid", "split", "prompt", "answer"} - set(r)
        if missing:
            raise WorkflowError(f"row {i} lacks {sorted(missing)}", expected="uid, split, prompt, answer")
        if r["uid"] in seen:
            raise WorkflowError(f"duplicate uid {r['uid']!r}", expected="unique uids")
        seen.add(r["uid"])


def annotate_rows(rows: Sequence[dict], tokenizer_dir: str | Path, spec: ConceptSpec) -> list[dict]:
    """Single-process annotation; the reference for :func:`run_annotate`."""
    _check_rows(rows)
    annotator = ConceptAnnotator(str(tokenizer_dir), spec)
    return [annotator.annotate(r["uid"], r["split"], r["prompt"], r["answer"]) for r in rows]


def coverage(annotations: pa.Table | Sequence[dict]) -> dict:
    """Token counts per label and level, and the share of items with a targeted token per split.

    Args:
        annotations: the Parquet table, or rows as returned by :func:`annotate_rows`.

    ``forget_targeted_fraction`` / ``retain_targeted_fraction`` are that share on the ``forget`` / ``retain`` splits;
    a good target list has a high forget fraction and a much lower retain fraction.
    """
    table = annotations if isinstance(annotations, pa.Table) else to_table(annotations)
    splits = table.column("split").to_numpy(zero_copy_only=False)
    labels_col, levels_col = table.column("labels").combine_chunks(), table.column("levels").combine_chunks()
    flat_labels = pc.list_flatten(labels_col).to_numpy(zero_copy_only=False)
    flat_levels = pc.list_flatten(levels_col).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(labels_col).to_numpy(zero_copy_only=False)
    has_target = np.zeros(len(splits), dtype=bool)
    has_target[parents[flat_labels == LABEL_TARGETED]] = True
    token_split = splits[parents] if len(parents) else np.array([], dtype=object)

    def counts(mask: np.ndarray) -> dict:
        return {"by_label": {LABEL_NAMES[k]: int(((flat_labels == k) & mask).sum()) for k in LABEL_NAMES},
                "by_level": {str(lv): int(((flat_levels == lv) & mask).sum()) for lv in range(5)},
                "total": int(mask.sum())}

    out: dict[str, Any] = {"items": int(len(splits)), "tokens": counts(np.ones(len(flat_labels), bool)),
                           "by_split": {}}
    for s in sorted(set(splits.tolist())):
        rows = splits == s
        out["by_split"][s] = {"items": int(rows.sum()),
                              "items_with_targeted": int(has_target[rows].sum()),
                              "fraction_with_targeted": float(has_target[rows].mean()),
                              "tokens": counts(token_split == s)}
    f = out["by_split"].get("forget", {}).get("fraction_with_targeted")
    r = out["by_split"].get("retain", {}).get("fraction_with_targeted")
    out["forget_targeted_fraction"], out["retain_targeted_fraction"] = f, r
    out["forget_retain_ratio"] = (f / r) if f is not None and r else None
    return out


def _concepts_used(h: ConceptHierarchy, table: pa.Table, targeted: set[int]) -> dict:
    ids = np.unique(pc.list_flatten(table.column("concept_ids").combine_chunks()).to_numpy())
    return {str(int(i)): {"id": h.concepts[i].id, "name": h.concepts[i].name,
                          "level": h.concepts[i].level, "targeted": int(i) in targeted}
            for i in ids if i >= 0}


def run_annotate(rows: Sequence[dict], tokenizer_dir: str | Path, spec: ConceptSpec,
                 out_dir: str | Path, parallelism: int | None = None,
                 batch_size: int = 1024) -> dict:
    """Annotate ``rows`` with Ray Data and write ``out_dir/annotations.parquet`` and
    ``coverage.json`` (both written under a temporary name, then renamed into place).

    Args:
        parallelism: number of annotator actors; default = the cluster's CPU count. Actors ask
            for a fractional CPU (half the cluster spread over them) so Ray Data's read and
            write tasks always find a free CPU (stack notes section 5: the 2-CPU deadlock).
        batch_size: rows per ``map_batches`` call.

    Returns:
        ``{"annotations": path, "coverage_file": path, "concepts_file": path, "coverage": dict}``.
    """
    import ray

    _check_rows(rows)
    load_backend_tokenizer(tokenizer_dir)
    # Validate targets and warm the hierarchy and matcher caches before any actor starts.
    h, targeted, labels, levels, matcher = load_concepts(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    size = int(parallelism or max(1, int(cpus)))
    if size < 1:
        raise WorkflowError(f"parallelism {parallelism!r}", key=f"{spec.key}.parallelism",
                            expected="an integer >= 1")
    actor_cpus = min(1.0, cpus / (2 * size))
    # In a list so Ray does not resolve it as a constructor argument: a top-level reference
    # makes every actor log that restarts depend on it. The actors read it with ray.get.
    tables = [ray.put(ConceptTables(labels, levels, matcher))]
    # One block per batch: Ray Data's default (200 blocks) meant 67 Parquet write tasks for
    # 25k rows, about 2 s of task overhead on two cores (docs/PERFORMANCE.md, profile notes).
    ds = ray.data.from_items(list(rows), override_num_blocks=max(size, -(-len(rows) // batch_size)))
    ds = ds.map_batches(ConceptAnnotator, batch_size=batch_size, batch_format="numpy",
                        fn_constructor_kwargs={"tokenizer_dir": str(tokenizer_dir), "spec": spec,
                                               "tables": tables},
                        compute=ray.data.ActorPoolStrategy(size=size), num_cpus=actor_cpus)
    # The annotated blocks come back to the driver, which writes the one Parquet file itself:
    # Ray Data's write tasks would put files on whichever node ran them (a local path on a
    # multi-node cluster without shared storage), and reading the files back for the coverage
    # record cost another pass (docs/PERFORMANCE.md). The blocks are small (token ids and labels).
    parts = ray.get(ds.to_arrow_refs())
    table = pa.concat_tables([t.select(SCHEMA.names).cast(SCHEMA) for t in parts]) if parts \
        else SCHEMA.empty_table()
    final = out / ANNOTATIONS_DIR
    tmp = temp_dir_beside(final)
    pq.write_table(table, tmp / "part-0.parquet")
    swap_dir(tmp, final)
    cov = coverage(table)
    cov["targets"] = list(spec.targets)
    cov["n_target_concepts"] = len(targeted)
    for name, payload in ((CONCEPTS_FILE, _concepts_used(h, table, targeted)), (COVERAGE_FILE, cov)):
        write_text_atomic(out / name, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return {"annotations": str(final), "coverage_file": str(out / COVERAGE_FILE),
            "concepts_file": str(out / CONCEPTS_FILE), "coverage": cov}


def read_annotations(out_dir: str | Path) -> dict[str, dict]:
    """``{uid: row}`` from ``out_dir/annotations.parquet`` (rows as in :func:`annotate_rows`)."""
    path = Path(out_dir) / ANNOTATIONS_DIR
    if not path.exists():
        raise WorkflowError("no annotations found", file=str(path),
                            expected="the output directory of the annotate stage")
    return {row["uid"]: row for row in pq.read_table(path, schema=SCHEMA).to_pylist()}
