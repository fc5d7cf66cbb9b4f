"""The concept hierarchy's data model: concepts and the lookups forget targets resolve through.

A :class:`ConceptHierarchy` holds MeSH descriptors (``MESH:D001008``) and ICD-10-CM codes
(``ICD10CM:F41.1``) with their levels, synonyms and parent links; hdsu_ray/hierarchy/build.py
builds one from MeSH 2017, ICD-10-CM and this package's data files, and caches it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator, Sequence

from hdsu_ray.core.concepts import normalize_term
from hdsu_ray.errors import WorkflowError

_MESH_TREE = re.compile(r"^[A-Z]\d{2}(\.\d{3})*$")
_MESH_UI = re.compile(r"^D\d{6,9}$")
_ICD = re.compile(r"^[A-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?$|^[A-Z]\d[0-9A-Z]-[A-Z]\d[0-9A-Z]$")
TARGET_SYNTAX = ("a MeSH tree number (F03.080), MeSH descriptor UI (D001008), ICD-10-CM code or "
                 "block (F41, F41.1, F40-F48), optionally prefixed mesh:/icd10cm:, or a concept "
                 "name; prefix '-' to exclude")



@dataclass(frozen=True)
class Concept:
    """One node of the hierarchy.

    Attributes:
        id: ``MESH:<descriptor UI>`` or ``ICD10CM:<code>``.
        name: preferred name.
        level: 1-4, or 0 when ``levels.yaml`` maps none of its positions.
        synonyms: further surface forms (name variants, inclusion terms, curated synonyms).
        codes: MeSH tree numbers, or the one ICD-10-CM code.
        parents: indices of parent concepts in :attr:`ConceptHierarchy.concepts`.
    """

    id: str
    name: str
    level: int
    synonyms: tuple[str, ...]
    codes: tuple[str, ...]
    parents: tuple[int, ...]

    @property
    def terms(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


@dataclass
class ConceptHierarchy:
    """MeSH descriptors and ICD-10-CM codes with levels, synonyms and parent links."""

    concepts: list[Concept]
    mesh_tree: dict[str, int]   # tree number -> concept index
    icd_codes: dict[str, int]   # ICD-10-CM code (dotted) -> concept index
    sources: dict[str, str] = field(default_factory=dict)  # input name -> sha256

    @cached_property
    def by_id(self) -> dict[str, int]:
        return {c.id: i for i, c in enumerate(self.concepts)}

    @cached_property
    def _sorted_tree(self) -> list[str]:
        return sorted(self.mesh_tree)

    @cached_property
    def _children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for i, c in enumerate(self.concepts):
            for p in c.parents:
                kids.setdefault(p, []).append(i)
        return kids

    @cached_property
    def _by_term(self) -> dict[str, list[int]]:
        index: dict[str, list[int]] = {}
        for i, c in enumerate(self.concepts):
            for t in c.terms:
                index.setdefault(normalize_term(t), []).append(i)
        return index

    def levels(self) -> list[int]:
        return [c.level for c in self.concepts]

    def iter_terms(self) -> Iterator[tuple[str, int]]:
        """``(term, concept_index)`` for every name and synonym."""
        for i, c in enumerate(self.concepts):
            for t in c.terms:
                yield t, i

    def mesh_subtree(self, tree_number: str) -> set[int]:
        """Concepts at ``tree_number`` or below it (by tree position, not by descriptor)."""
        tree, out = self._sorted_tree, set()
        for k in range(bisect.bisect_left(tree, tree_number), len(tree)):
            tn = tree[k]
            if tn != tree_number and not tn.startswith(tree_number + "."):
                break
            out.add(self.mesh_tree[tn])
        return out

    def descendants(self, index: int) -> set[int]:
        """``index`` and everything below it: every tree position of a MeSH descriptor, or the
        ICD-10-CM code's subtree."""
        c = self.concepts[index]
        if c.id.startswith("MESH:"):
            return set().union(*(self.mesh_subtree(tn) for tn in c.codes)) | {index}
        out, stack = {index}, [index]
        while stack:
            for kid in self._children.get(stack.pop(), ()):
                if kid not in out and self.concepts[kid].id.startswith("ICD10CM:"):
                    out.add(kid)
                    stack.append(kid)
        return out

    def lookup(self, ref: str) -> list[int]:
        """Concepts a single reference names (see :data:`TARGET_SYNTAX`); [] if none."""
        ref = ref.strip()
        vocab, _, code = ref.partition(":")
        vocab = vocab.strip().lower()
        if not code or vocab not in ("mesh", "icd10cm", "icd"):
            vocab, code = "", ref
        code = code.strip()
        if vocab in ("", "mesh"):
            if _MESH_TREE.match(code) and code in self.mesh_tree:
                return [self.mesh_tree[code]]
            if _MESH_UI.match(code) and f"MESH:{code}" in self.by_id:
                return [self.by_id[f"MESH:{code}"]]
        if vocab in ("", "icd10cm", "icd"):
            dotted = code.upper()
            if len(dotted) > 3 and "." not in dotted and "-" not in dotted:
                dotted = dotted[:3] + "." + dotted[3:]
            if _ICD.match(dotted) and dotted in self.icd_codes:
                return [self.icd_codes[dotted]]
        if vocab == "" and not (_MESH_TREE.match(ref) or _ICD.match(ref)):
            return list(dict.fromkeys(self._by_term.get(normalize_term(ref), [])))
        return []

    def resolve_targets(self, targets: Sequence[str], key: str = "targets") -> set[int]:
        """Concept indices under the given targets, with their descendants.

        Args:
            targets: references per :data:`TARGET_SYNTAX`. A MeSH tree number brings its subtree;
                a descriptor UI or name brings the subtrees of all its tree positions; an ICD-10-CM
                code brings its subcodes. ``-ref`` removes ``ref``'s subtree after all additions
                (e.g. ``-F03.080.600`` keeps OCD out of Anxiety Disorders).
            key: the workflow key path the list came from, named in errors.

        Raises:
            WorkflowError: a reference that names no concept.
        """
        keep: set[int] = set()
        drop: set[int] = set()
        for i, raw in enumerate(targets):
            ref = str(raw).strip()
            exclude = ref.startswith("-")
            ref = ref[1:].strip() if exclude else ref
            found = self.lookup(ref)
            if not found:
                raise WorkflowError(f"unknown concept {raw!r}", key=f"{key}[{i}]",
                                    expected=TARGET_SYNTAX)
            vocab, _, code = ref.rpartition(":")
            code = code.strip()
            tree_number = code if vocab.strip().lower() in ("", "mesh") and \
                _MESH_TREE.match(code) and code in self.mesh_tree else None
            sub: set[int] = self.mesh_subtree(tree_number) if tree_number else \
                set().union(*(self.descendants(j) for j in found))
            (drop if exclude else keep).update(sub)
        return keep - drop
