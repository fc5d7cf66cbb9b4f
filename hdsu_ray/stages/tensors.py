"""Encoded forget / retain arrays for unlearning, with the concept annotation's token weights.

Annotation rows index the tokens of ``prompt + answer`` (no special tokens); the encoded arrays
have a BOS at position 0 and may drop ``overflow`` prompt tokens on the left. A text token j sits
at position ``1 + j - overflow``, so its weight lands at shifted index ``j - overflow``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hdsu_ray.config.paths import data_path
from hdsu_ray.config.schema import Workflow
from hdsu_ray.data.encode import encode_texts
from hdsu_ray.data.select import SelectedData
from hdsu_ray.data.text import qa_text
from hdsu_ray.store import arrays_digest, content_key, file_digest, write_bytes_atomic

log = logging.getLogger(__name__)
LABEL_PRESERVE = 1


def _encode(tokenizer, records, max_len):
    prompts, answers = zip(*map(qa_text, records))
    return encode_texts(tokenizer, list(prompts), list(answers), max_len)


def add_option_arrays(arrays: dict[str, np.ndarray], tokenizer, records, max_len: int) -> None:
    """Add every answer option of each row for the question-conditioned forget loss.

    ``option_input_ids``, ``option_attention_mask``, ``option_labels`` ``[N, K, Lo]``,
    ``option_valid`` ``[N, K]`` (False for padding options) and ``option_answer`` ``[N]``. The
    right option's row is the same token sequence as the row in ``input_ids`` (same text, same
    encoder), so the option scores are exactly the evaluation's.
    """
    from hdsu_ray.eval.mcq import encode_options

    enc = encode_options(tokenizer, records, max_len)
    n, k = len(records), int(enc["n_options"])
    for key in ("input_ids", "attention_mask", "labels"):
        arrays[f"option_{key}"] = enc[key].reshape(n, k, -1)
    arrays["option_valid"] = np.array([[j < len(r.options) for j in range(k)] for r in records])
    arrays["option_answer"] = enc["answers"].astype(np.int64)


def place_weights(arrays: dict[str, np.ndarray], uids: list[str], annotations: dict[str, dict],
                  has_bos: bool) -> None:
    """Add ``token_weight`` and ``preserve_weight`` ``[N, L-1]`` (shifted positions) to ``arrays``."""
    n, width = arrays["input_ids"].shape
    token_w = np.zeros((n, width - 1), np.float32)
    preserve_w = np.zeros((n, width - 1), np.float32)
    token_label = np.zeros((n, width - 1), np.int8)
    token_level = np.zeros((n, width - 1), np.int8)
    for i, uid in enumerate(uids):
        ann = annotations.get(uid)
        if ann is None:
            continue
        weights = np.asarray(ann["weights"], np.float32)
        labels = np.asarray(ann["labels"])
        overflow = int(arrays["truncated"][i])
        offset = (1 if has_bos else 0) - 1 - overflow  # text token j -> shifted index j + offset
        j = np.arange(len(weights))
        pos = j + offset
        ok = (pos >= 0) & (pos < width - 1)
        token_w[i, pos[ok]] = weights[ok]
        preserve_w[i, pos[ok]] = (labels[ok] == LABEL_PRESERVE).astype(np.float32)
        token_label[i, pos[ok]] = labels[ok]
        if "levels" in ann:
            token_level[i, pos[ok]] = np.asarray(ann["levels"])[ok]
    arrays["token_weight"], arrays["preserve_weight"] = token_w, preserve_w
    arrays["token_label"], arrays["token_level"] = token_label, token_level


def _annotation_dir(workflow: Workflow, rows: list[dict], learned_dir: Path, spec) -> Path:
    """Cache directory of one annotation: keyed by the rows, the tokenizer (learned model), the
    concept spec and the hierarchy data files, so a rerun on a cached model skips the Ray Data job."""
    from dataclasses import asdict

    # The MeSH file counts by its bytes (below), not its path, so another checkout hits the cache.
    fields = {**asdict(spec), "mesh_file": None}
    files = sorted((Path(__file__).resolve().parents[1] / "hierarchy").glob("*.yaml"))
    files += [Path(f) for f in (spec.levels_file, spec.synonyms_file, spec.mesh_file) if f and Path(f).is_file()]
    key = content_key("annotation", rows, learned_dir.name, fields, [file_digest(f) for f in files])
    return Path(workflow.cache_dir) / "annotate" / key


def unlearn_arrays(workflow: Workflow, data: SelectedData, learned_dir: Path, run_dir: Path) -> dict:
    """What unlearning reads, and nothing it must not.

    Returns ``{"forget": arrays, "retain": arrays of retain_train only, "eval": {"forget",
    "retain": encoded options of the forget sample and of retain_val} (in-loop selection, when
    on), "uids": {part: [row ids]} of exactly those rows, "levels": [N] dominant hierarchy level of
    each retain_test item (reports only), "digest": str}``. Masks, bases and reference tensors are
    computed from these arrays, so a retain_test row never reaches them.
    """
    from hdsu_ray.models.build import load_model_dir

    _, tokenizer = load_model_dir(learned_dir)
    max_len = workflow.model.tiny.max_len
    forget, retain = _encode(tokenizer, data.forget, max_len), _encode(tokenizer, data.retain_train, max_len)
    add_option_arrays(forget, tokenizer, data.forget, max_len)
    uids = {"forget": [r.uid for r in data.forget], "retain": [r.uid for r in data.retain_train]}
    levels = None
    concepts = getattr(workflow, "concepts", None)
    if concepts is not None and concepts.enabled:
        ann = _annotations(workflow, data, learned_dir, run_dir, concepts)
        has_bos = tokenizer.bos_token_id is not None
        place_weights(forget, uids["forget"], ann, has_bos)
        place_weights(retain, uids["retain"], ann, has_bos)
        levels = _test_levels(tokenizer, data.retain_test, ann, has_bos, max_len)
    out = {"forget": forget, "retain": retain, "uids": uids, "levels": levels}
    if workflow.evaluate.every or workflow.evaluate.candidates:
        from hdsu_ray.eval.mcq import encode_options
        k = workflow.evaluate.sample
        out["eval"] = {"forget": encode_options(tokenizer, data.forget[:k], max_len),
                       "retain": encode_options(tokenizer, data.retain_val[:k], max_len)}
        uids.update(eval_forget=[r.uid for r in data.forget[:k]], eval_retain=[r.uid for r in data.retain_val[:k]])
    # Masks, bases and reference tensors are keyed by this: the encoded rows and token weights, on
    # the learned model (whose key hashes every selected row's content).
    out["digest"] = arrays_digest([forget, retain], learned_dir.name)[:16]
    return out


def _annotations(workflow: Workflow, data: SelectedData, learned_dir: Path, run_dir: Path, concepts) -> dict:
    """Concept labels of the forget and retain rows (the Ray Data job, or its cache)."""
    from hdsu_ray.stages.annotate import ConceptSpec, read_annotations, run_annotate

    rows = [{"uid": r.uid, "split": split, "prompt": p, "answer": a}
            for split, recs in (("forget", data.forget), ("retain", data.retain))
            for r in recs for p, a in [qa_text(r)]]
    # The MeSH tree lives under the workflow's data root (the CLI's data_root=, else HDSU_DATA_ROOT),
    # like the QA files, wherever this runs (a Tune trial's cwd differs).
    spec = ConceptSpec.from_config(concepts, mesh_file=str(data_path(workflow, "mesh/2017MeshTree.txt").resolve()))
    out = _annotation_dir(workflow, rows, learned_dir, spec)
    if (out / "coverage.json").is_file():  # same rows, tokenizer, hierarchy and targets
        log.info("[annotate] cached annotation %s", out)
        info = {"coverage": json.loads((out / "coverage.json").read_text())}
    else:
        info = run_annotate(rows, str(learned_dir), spec, out, parallelism=concepts.parallelism)
    # The run directory keeps its own copy of the coverage record (reports and audits read it).
    for name in ("coverage.json", "concepts.json"):
        if (out / name).is_file():
            write_bytes_atomic(run_dir / "annotate" / name, (out / name).read_bytes())
    cov = info.get("coverage", {})
    log.info("[annotate] forget items with a targeted token: %s, retain: %s",
             cov.get("forget_targeted_fraction"), cov.get("retain_targeted_fraction"))
    return read_annotations(out)


def _test_levels(tokenizer, records, ann: dict, has_bos: bool, max_len: int) -> np.ndarray:
    """``[N]`` dominant hierarchy level of each reported retain item (per-level preservation)."""
    from hdsu_ray.eval.suite import dominant_levels

    arrays = _encode(tokenizer, records, max_len)
    place_weights(arrays, [r.uid for r in records], ann, has_bos)
    return dominant_levels(arrays["token_label"], arrays["token_level"])
