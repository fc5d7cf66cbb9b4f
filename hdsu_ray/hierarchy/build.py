"""The four-level medical concept hierarchy, built offline from MeSH 2017 and ICD-10-CM.

Concepts are MeSH descriptors (``MESH:D001008``) and ICD-10-CM codes (``ICD10CM:F41.1``). Each has
a name, synonyms (MeSH: the un-inverted name, "Phobia, Social" -> "Social Phobia"; ICD-10-CM:
inclusion terms and the description without brackets or ", unspecified"; both: the curated
``synonyms.yaml``), its tree numbers or code, parent links, and a level 1-4 from ``levels.yaml``
(0 = not mapped: resolvable as a target, not matched unless targeted).

Forget targets are concept references, resolved with their whole subtree by
:meth:`ConceptHierarchy.resolve_targets` (the data model: hdsu_ray/hierarchy/model.py). This
module builds the hierarchy from its inputs and caches it, keyed by the inputs' hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from hdsu_ray.config.paths import DATA_ROOT_ENV, resolve_data_root
from hdsu_ray.config.reader import read_yaml_file
from hdsu_ray.core import concepts as _concepts
from hdsu_ray.errors import WorkflowError
# re-exported: pickled hierarchies from before the split name these classes in this module
from hdsu_ray.hierarchy.model import _MESH_TREE, TARGET_SYNTAX, Concept, ConceptHierarchy  # noqa: F401

_BUILD_VERSION = 1  # bump when the build logic changes, to invalidate caches


def data_root() -> Path:
    """The data root when no workflow names one: ``$HDSU_DATA_ROOT``, else the default (config's)."""
    return resolve_data_root()


def default_mesh_path() -> Path:
    return data_root() / "mesh" / "2017MeshTree.txt"


def default_levels_path() -> Path:
    return Path(str(resources.files("hdsu_ray.hierarchy") / "levels.yaml"))


def default_synonyms_path() -> Path:
    return Path(str(resources.files("hdsu_ray.hierarchy") / "synonyms.yaml"))


# ----------------------------------------------------------------------------- building

def _uninvert(name: str) -> str | None:
    """MeSH "Stress Disorders, Post-Traumatic" -> "Post-Traumatic Stress Disorders"."""
    parts = [p.strip() for p in name.split(",")]
    if len(parts) < 2 or any(not p for p in parts):
        return None
    return " ".join(reversed(parts))


def _icd_variants(description: str) -> list[str]:
    out = []
    bare = re.sub(r"\s*[\[(][^\])]*[\])]", "", description).strip()
    if bare and bare != description:
        out.append(bare)
    for text in (description, bare):
        short = re.sub(r"(,\s*unspecified|\s+NOS)$", "", text, flags=re.I).strip()
        if short and short != text:
            out.append(short)
    return out


def _level_of(code: str, rules: dict, depth: int) -> int | None:
    """Longest-prefix rule for a MeSH tree number at ``depth`` (``C14`` is 1)."""
    for n in range(len(code), 0, -1):
        prefix = code[:n]
        if prefix in rules and (n == len(code) or code[n] == "." or n == 1):
            rule = rules[prefix]
            if isinstance(rule, list):
                rel = depth - (prefix.count(".") + 1 if n > 1 else 0)
                return rule[min(rel, len(rule) - 1)]
            return rule
    return None


def _icd_kind(icd, code: str) -> str | None:
    if icd.is_chapter(code):
        return "chapter"
    if icd.is_block(code):
        return "block"
    if icd.is_category(code):
        return "category"
    if icd.is_extended_subcategory(code):
        return None
    return "subcategory"


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise WorkflowError(f"{what} not found", file=str(path), expected="an existing YAML file")
    data = read_yaml_file(path, what) or {}
    if not isinstance(data, dict):
        raise WorkflowError(f"{what} must be a mapping", file=str(path))
    return data


_LEVEL_VALUES = (0, 1, 2, 3, 4, None)
_ICD_KINDS = ("chapter", "block", "category", "subcategory")


def _check_levels(cfg: dict, path: Path) -> None:
    """The levels file's shape (see levels.yaml), so a typo is one error, not a traceback mid-build."""
    def bad(where: str, got, expected: str) -> WorkflowError:
        return WorkflowError(f"got {got!r}", file=str(path), key=where, expected=expected)

    mesh, icd = cfg.get("mesh") or {}, cfg.get("icd10cm") or {}
    if not isinstance(mesh, dict) or not isinstance(icd, dict):
        raise bad("mesh / icd10cm", type(mesh if not isinstance(mesh, dict) else icd).__name__, "two mappings")
    for prefix, rule in mesh.items():
        rules = rule if isinstance(rule, list) else [rule]
        if not rules or not all(type(r) in (int, type(None)) and r in _LEVEL_VALUES for r in rules):
            raise bad(f"mesh.{prefix}", rule, "a level 0-4, null, or a non-empty list of them by depth")
    for prefix, kinds in icd.items():
        if not isinstance(kinds, dict) or not set(map(str, kinds)) <= set(_ICD_KINDS) or \
                not all(type(v) in (int, type(None)) and v in _LEVEL_VALUES for v in kinds.values()):
            raise bad(f"icd10cm.{prefix}", kinds, f"a mapping of {', '.join(_ICD_KINDS)} to a level 0-4")


def build_hierarchy(mesh_path: Path | str | None = None, levels_path: Path | str | None = None,
                    synonyms_path: Path | str | None = None) -> ConceptHierarchy:
    """Build the hierarchy from the MeSH tree file, ICD-10-CM and the two YAML data files."""
    import simple_icd_10_cm as icd

    mesh_path = Path(mesh_path or default_mesh_path())
    levels_cfg = _read_yaml(Path(levels_path or default_levels_path()), "levels file")
    _check_levels(levels_cfg, Path(levels_path or default_levels_path()))
    mesh_rules = {str(k): v for k, v in (levels_cfg.get("mesh") or {}).items()}
    icd_rules = {str(k): v for k, v in (levels_cfg.get("icd10cm") or {}).items()}
    if not mesh_path.is_file():
        raise WorkflowError("MeSH tree file not found", file=str(mesh_path),
                            expected=f"2017MeshTree.txt (set {DATA_ROOT_ENV})")

    # MeSH: one concept per descriptor UI, all its tree positions.
    names: dict[str, str] = {}
    trees: dict[str, list[str]] = {}
    with mesh_path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.rstrip("\n\r").split("\t")
            if line_no == 1 and parts[0] == "Tree Number":
                continue
            if len(parts) != 3 or not _MESH_TREE.match(parts[0]):
                raise WorkflowError(f"line {line_no}: expected 'tree number<TAB>UI<TAB>term'",
                                    file=str(mesh_path))
            tn, ui, term = parts
            names.setdefault(ui, term)
            trees.setdefault(ui, []).append(tn)
    concepts: list[Concept] = []
    mesh_tree: dict[str, int] = {}
    for ui, tns in trees.items():
        for tn in tns:
            mesh_tree[tn] = len(concepts)
        levels = [_level_of(tn, mesh_rules, tn.count(".") + 1) for tn in tns]
        level = max((lv for lv in levels if lv), default=0)
        variant = _uninvert(names[ui])
        concepts.append(Concept(f"MESH:{ui}", names[ui], int(level),
                                (variant,) if variant else (), tuple(sorted(tns)), ()))
    for i, c in enumerate(concepts):
        parents = {mesh_tree[tn.rsplit(".", 1)[0]] for tn in c.codes if "." in tn}
        concepts[i] = Concept(c.id, c.name, c.level, c.synonyms, c.codes, tuple(sorted(parents)))

    # ICD-10-CM: every code except 7th-character extensions.
    icd_codes: dict[str, int] = {}
    default_kinds = icd_rules.get("default") or {}
    prefixes = sorted((k for k in icd_rules if k != "default"), key=len, reverse=True)
    for code in icd.get_all_codes(with_dots=True):
        kind = _icd_kind(icd, code)
        if kind is None:
            continue
        rule = next((icd_rules[p] for p in prefixes if code.startswith(p)), default_kinds)
        level = rule.get(kind, default_kinds.get(kind)) or 0
        desc = icd.get_description(code)
        syn = tuple(dict.fromkeys([*icd.get_inclusion_term(code), *_icd_variants(desc)]))
        icd_codes[code] = len(concepts)
        concepts.append(Concept(f"ICD10CM:{code}", desc, int(level), syn, (code,), ()))
    for code, i in icd_codes.items():
        parent = icd.get_parent(code)
        if parent in icd_codes:
            c = concepts[i]
            concepts[i] = Concept(c.id, c.name, c.level, c.synonyms, c.codes, (icd_codes[parent],))

    hierarchy = ConceptHierarchy(concepts, mesh_tree, icd_codes)
    _add_synonyms(hierarchy, Path(synonyms_path or default_synonyms_path()))
    return hierarchy


def _add_synonyms(h: ConceptHierarchy, path: Path) -> None:
    data = _read_yaml(path, "synonyms file")
    for ref, entry in data.items():
        found = list(dict.fromkeys(h.lookup(str(ref))))
        terms = entry.get("terms") if isinstance(entry, dict) else entry
        if len(found) != 1 or not isinstance(terms, list):
            raise WorkflowError(f"entry {ref!r} must name one concept and list its terms",
                                file=str(path), expected="CONCEPT: {name: NAME, terms: [...]}")
        c = h.concepts[found[0]]
        name = entry.get("name") if isinstance(entry, dict) else None
        if name is not None and str(name).lower() != c.name.lower():
            raise WorkflowError(f"entry {ref!r} is {c.name!r}, not {name!r}", file=str(path),
                                expected="the concept's preferred name")
        extra = tuple(t for t in dict.fromkeys(str(t) for t in terms) if t not in c.terms)
        h.concepts[found[0]] = Concept(c.id, c.name, c.level, c.synonyms + extra, c.codes,
                                       c.parents)
    h.__dict__.pop("_by_term", None)


# ----------------------------------------------------------------------------- cache

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("HDSU_CACHE_DIR", Path.home() / ".cache" / "hdsu_ray"))


def _inputs(mesh_path, levels_path, synonyms_path) -> tuple[dict[str, Path], dict[str, str], str]:
    """``(paths, sources, key)``: the input files, their hashes, and the cache key over them."""
    from importlib.metadata import version

    paths = {"mesh": Path(mesh_path or default_mesh_path()),
             "levels": Path(levels_path or default_levels_path()),
             "synonyms": Path(synonyms_path or default_synonyms_path())}
    if not paths["mesh"].is_file():
        raise WorkflowError("MeSH tree file not found", file=str(paths["mesh"]),
                            expected=f"2017MeshTree.txt (set {DATA_ROOT_ENV})")
    sources = {k: _sha256(p) for k, p in paths.items() if p.is_file()}
    sources["simple-icd-10-cm"] = version("simple-icd-10-cm")
    sources["build"] = str(_BUILD_VERSION)
    return paths, sources, hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:24]


def _cache_path(cache_dir: Path | str | None, name: str) -> Path | None:
    if cache_dir == "":
        return None
    return Path(default_cache_dir() if cache_dir is None else cache_dir) / name


def _write_cache(target: Path, data: bytes) -> None:
    """Best effort: a read-only cache directory costs time on the next call, never the call."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError:
        pass


def load_hierarchy(mesh_path: Path | str | None = None, levels_path: Path | str | None = None,
                   synonyms_path: Path | str | None = None,
                   cache_dir: Path | str | None = None) -> ConceptHierarchy:
    """:func:`build_hierarchy`, cached as a pickle keyed by the hashes of every input.

    Building takes a few seconds (98k ICD-10-CM codes); the cache file name is the sha256 of the
    MeSH file, both YAML files, the simple-icd-10-cm version and the build version. Pass
    ``cache_dir=""`` to disable the cache.
    """
    paths, sources, key = _inputs(mesh_path, levels_path, synonyms_path)
    target = _cache_path(cache_dir, f"hierarchy-{key}.pkl")
    if target and target.is_file():
        try:
            with target.open("rb") as fh:
                return pickle.load(fh)
        except Exception:  # a corrupt or foreign cache entry: rebuild
            pass
    h = build_hierarchy(paths["mesh"], paths["levels"], paths["synonyms"])
    h.sources = sources
    h.__dict__.pop("_by_term", None)  # derived from the matcher's normalisation: rebuild on use
    if target:
        _write_cache(target, pickle.dumps(h, protocol=pickle.HIGHEST_PROTOCOL))
    return h


def check_targets(targets: Sequence[str], key: str, mesh_path: Path | str | None = None,
                  levels_path: Path | str | None = None, synonyms_path: Path | str | None = None,
                  cache_dir: Path | str | None = None) -> int:
    """How many concepts ``targets`` select, resolved as the annotate stage resolves them; raises
    :class:`WorkflowError` for a reference that names no concept or a list that selects none.

    ``hdsu-ray validate`` calls this. Loading the hierarchy takes about half a second and resolving
    a name another second (every term is normalised), so a success is remembered in a small file
    keyed by the inputs, the targets and the resolving code: the next validate only hashes files.
    """
    _, sources, hkey = _inputs(mesh_path, levels_path, synonyms_path)
    code = b"".join(Path(m.__file__).read_bytes() for m in (_concepts, sys.modules[__name__]))
    digest = hashlib.sha256(repr((hkey, list(targets))).encode() + code).hexdigest()[:24]
    memo = _cache_path(cache_dir, f"targets-{digest}.json")
    if memo and memo.is_file():
        try:
            return int(json.loads(memo.read_text())["concepts"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    found = load_hierarchy(mesh_path, levels_path, synonyms_path, cache_dir).resolve_targets(targets, key=key)
    if not found:
        raise WorkflowError("the targets select no concept (each one is excluded again)", key=key,
                            expected="at least one target that a '-' exclusion does not remove")
    if memo:
        _write_cache(memo, json.dumps({"concepts": len(found), "targets": list(targets)}).encode())
    return len(found)
