"""What to forget and how to weight tokens: the annotate stage's concept specification.

:class:`ConceptSpec` is the runtime view of the workflow's ``concepts`` section
(:class:`~hdsu_ray.config.schema.ConceptsConfig`, built by :meth:`ConceptSpec.from_config`) plus
what only the stage knows (hierarchy files, cache, tokenizer setting). Its defaults are the
section's and its weight table is :func:`hdsu_ray.core.weighting.weight_table`, so neither is
written twice. :func:`load_concepts` turns it into per-concept labels and levels over the hierarchy
plus the term matcher; the matcher is cached on disk next to the hierarchy because building it
takes seconds and loading it well under one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from hdsu_ray.config.schema import DEFAULT_PRESERVE_LEVELS, ConceptsConfig, default_concept_weights
from hdsu_ray.core.concepts import LABEL_NEUTRAL, LABEL_PRESERVE, LABEL_TARGETED, ConceptMatcher, build_matcher
from hdsu_ray.core.weighting import LEVELS, weight_table
from hdsu_ray.errors import WorkflowError
from hdsu_ray.hierarchy.build import ConceptHierarchy, default_cache_dir, load_hierarchy


def preset_targets(name: str, key: str | None = None) -> list[str]:
    """A default target list from ``hdsu_ray/hierarchy/targets.yaml`` (e.g. ``mhqa-anxiety``)."""
    presets = yaml.safe_load((resources.files("hdsu_ray.hierarchy") / "targets.yaml").read_text())
    if name not in presets:
        raise WorkflowError(f"unknown target preset {name!r}", key=key,
                            expected=f"one of {sorted(presets)}")
    return [str(t) for t in presets[name]]


@dataclass(frozen=True)
class ConceptSpec:
    """What to forget and how to weight tokens.

    Attributes:
        targets: concept references to forget, with their subtrees: MeSH tree numbers
            (``F03.080``), descriptor UIs, ICD-10-CM codes (``F41``), names, ``-ref`` to exclude,
            or ``preset:<name>`` for a list in ``targets.yaml``.
        preserve_levels: hierarchy levels whose (non-targeted) concepts are preservation-critical.
        weights: ``{"targeted": {level: w}, "preserve": {level: w}, "neutral": w}``; a label left
            out keeps config's default; a targeted concept with no level (0) takes the largest
            targeted weight.
        add_special_tokens: passed to the tokenizer; must match how training tokenizes.
        mesh_file, levels_file, synonyms_file: override the hierarchy inputs (None = defaults).
        cache_dir: hierarchy cache (None = ``$HDSU_CACHE_DIR`` or ``~/.cache/hdsu_ray``; "" = off).
        key: the workflow key path of this spec, named in errors.
    """

    targets: list[str]
    preserve_levels: list[int] = field(default_factory=lambda: list(DEFAULT_PRESERVE_LEVELS))
    weights: dict = field(default_factory=default_concept_weights)
    add_special_tokens: bool = True
    mesh_file: str | None = None
    levels_file: str | None = None
    synonyms_file: str | None = None
    cache_dir: str | None = None
    key: str = "annotate"

    @classmethod
    def from_config(cls, concepts: ConceptsConfig, **runtime) -> "ConceptSpec":
        """The spec of a workflow's ``concepts`` section; ``runtime`` sets the stage-only fields
        (``mesh_file``, ``cache_dir``). Texts are tokenized without special tokens, as training does."""
        return cls(targets=list(concepts.targets), preserve_levels=list(concepts.preserve_levels),
                   weights=concepts.weights, add_special_tokens=False, levels_file=concepts.levels_file,
                   synonyms_file=concepts.synonyms_file, key="concepts", **runtime)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str) or not self.targets or \
                not all(isinstance(t, str) and t.strip() for t in self.targets):
            raise WorkflowError("targets must be a non-empty list of concept references",
                                key=f"{self.key}.targets", expected="e.g. [F03.080, F41]")
        if not all(isinstance(lv, int) and not isinstance(lv, bool) and lv in LEVELS
                   for lv in self.preserve_levels):
            raise WorkflowError(f"bad preserve_levels {self.preserve_levels!r}",
                                key=f"{self.key}.preserve_levels", expected="levels among 1-4")
        self.weight_table()  # validates weights

    def expanded_targets(self) -> list[str]:
        """The targets with every ``preset:<name>`` replaced by its list (an unknown one raises)."""
        out: list[str] = []
        for i, t in enumerate(self.targets):
            if t.startswith("preset:"):
                out.extend(preset_targets(t.split(":", 1)[1].strip(), f"{self.key}.targets[{i}]"))
            else:
                out.append(t)
        return out

    def weight_table(self) -> dict[tuple[int, int], float]:
        """``(label, level) -> weight`` for :func:`hdsu_ray.core.concepts.label_tokens`."""
        return weight_table(self.weights, self.preserve_levels, key=f"{self.key}.weights")


def load_spec_hierarchy(spec: ConceptSpec) -> tuple[ConceptHierarchy, set[int]]:
    """The hierarchy named by ``spec`` and the resolved target concept indices."""
    h = load_hierarchy(spec.mesh_file, spec.levels_file, spec.synonyms_file, spec.cache_dir)
    return h, h.resolve_targets(spec.expanded_targets(), key=f"{spec.key}.targets")


def load_concepts(spec: ConceptSpec) -> tuple[ConceptHierarchy, set[int], np.ndarray, np.ndarray,
                                                ConceptMatcher]:
    """``(hierarchy, targeted concept indices, label per concept, level per concept, matcher)``."""
    h, targeted = load_spec_hierarchy(spec)
    levels = np.array(h.levels(), dtype=np.int8)
    labels = np.where(np.isin(levels, spec.preserve_levels), LABEL_PRESERVE,
                      LABEL_NEUTRAL).astype(np.int8)
    labels[list(targeted)] = LABEL_TARGETED
    return h, targeted, labels, levels, load_matcher(h, labels, levels, spec.cache_dir)


def load_matcher(h: ConceptHierarchy, labels: np.ndarray, levels: np.ndarray,
                 cache_dir: str | None = None) -> ConceptMatcher:
    """The matcher over every term of a levelled or targeted concept, cached like the hierarchy.

    Terms that normalise alike keep the first concept in the order targeted, preserve, rest, so
    a targeted concept is never hidden by a synonym of another one. Building takes seconds (~90k
    terms); the pickle loads in well under one, so each Ray actor loads it from the cache that
    :func:`run_annotate` warms on the driver.
    """
    included = np.flatnonzero((labels == LABEL_TARGETED) | (levels > 0))
    target = None
    if h.sources and cache_dir != "":
        digest = hashlib.sha256(repr(sorted(h.sources.items())).encode())
        digest.update(included.astype(np.int64).tobytes())
        digest.update(labels[included].tobytes())
        target = Path(cache_dir or default_cache_dir()) / f"matcher-{digest.hexdigest()[:24]}.pkl"
        if target.is_file():
            try:
                with target.open("rb") as fh:
                    return pickle.load(fh)
            except Exception:  # corrupt entry: rebuild
                pass
    keep = set(included.tolist())
    pairs = [(t, i) for t, i in h.iter_terms() if i in keep]
    pairs.sort(key=lambda p: -int(labels[p[1]]))  # stable: MeSH before ICD within a label
    matcher = build_matcher(pairs)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        with tmp.open("wb") as fh:
            pickle.dump(matcher, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
        _prune(target.parent, "matcher-*.pkl", keep=MATCHER_CACHE_ENTRIES)
    return matcher


MATCHER_CACHE_ENTRIES = 8  # ~50 MB each; one per distinct (hierarchy, targets, preserve levels)


def _prune(folder: Path, pattern: str, keep: int) -> None:
    """Delete all but the ``keep`` most recently written cache files."""
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)
