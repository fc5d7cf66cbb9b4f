"""Read a workflow file: YAML, command-line overrides, ``${...}`` references, data root, types.

:func:`parse_workflow` checks what one section can check about itself (keys, types, bounds, the
data files). The checks that need the method registry, a model's shape or the concept hierarchy
are in :func:`hdsu_ray.checks.load_workflow`, which the CLI calls; both run before Ray starts, so a
mistyped key costs a second, not a cluster job.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from hdsu_ray.config.fields import build, to_dict
# data_path and deepspeed_config_path are imported from here by callers written before config.paths.
from hdsu_ray.config.paths import DATA_ROOT_ENV, data_path, deepspeed_config_path, resolve_data_root  # noqa: F401
from hdsu_ray.config.reader import NotYAML, load_yaml_text, read_yaml_file
from hdsu_ray.config.schema import Workflow
from hdsu_ray.errors import WorkflowError

_REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
# What ${...} references may expand to in one pass: values visited and characters substituted.
# Each string reference copies its target, so nested ones grow like aliases of aliases do.
MAX_REF_VALUES, MAX_REF_CHARS = 200_000, 1_000_000


def parse_override(text: str, file: str | None = None) -> tuple[list[str], Any]:
    """``"unlearn.lr=1e-5"`` -> (["unlearn", "lr"], 1e-5); the value is read as YAML."""
    if "=" not in text:
        raise WorkflowError(f"override {text!r} has no '='", file=file, expected="dotted.key=value")
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
        raise WorkflowError(f"override key {key!r} is not a dotted key", file=file, expected="dotted.key=value")
    try:  # a duplicate key or an oversized value is an error; text that is not YAML a string
        value = load_yaml_text(raw, file=file, key=key) if raw != "" else None
    except NotYAML:
        value = raw
    # YAML reads "1e-5" as a string (no dot); numbers are what users mean.
    if isinstance(value, str):
        try:
            value = float(value) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value) else value
        except ValueError:
            pass
    return key.split("."), value


def _set_path(data: dict, path: list[str], value: Any, file: str | None) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, path[: i + 1], file)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):  # e.g. data.forget.values.0.x: the item is a string
            where = ".".join(path[: i + 1])
            raise WorkflowError(f"is {node!r}, which has no key {path[i + 1]!r}", file=file, key=where,
                                expected=f"a key path that stops at {where} (not a section or list)")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path, file)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: list[str], file: str | None) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise WorkflowError("no such list item", file=file, key=".".join(path),
                            expected=f"an index 0..{len(node) - 1}" if node else "an item the list has")
    return int(part)


def _lookup(data: dict, dotted: str, file: str | None, where: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise WorkflowError(f"reference ${{{dotted}}} names no key", file=file, key=where,
                                expected="the dotted path of a key this workflow sets, e.g. ${name}")
    return node


class _Budget:
    """What one pass of :func:`resolve_refs` may still produce (see :data:`MAX_REF_VALUES`)."""

    def __init__(self, file: str | None):
        self.values, self.chars, self.file = MAX_REF_VALUES, MAX_REF_CHARS, file

    def spend(self, where: str, values: int = 1, chars: int = 0) -> None:
        self.values -= values
        self.chars -= chars
        if self.values < 0 or self.chars < 0:
            raise WorkflowError("${...} references expand too far (references of references?)", file=self.file,
                                key=where or "(top level)", expected=f"at most {MAX_REF_VALUES} values and "
                                f"{MAX_REF_CHARS} characters once every reference is replaced")


def resolve_refs(data: Any, root: dict, file: str | None, where: str = "", depth: int = 0,
                 budget: _Budget | None = None) -> Any:
    """Replace ``${a.b}`` in strings by the value at key path ``a.b`` (recursively, no cycles, and
    within a budget: a few nested references must not take minutes or all memory)."""
    budget = budget or _Budget(file)
    budget.spend(where)
    if depth > 20:
        raise WorkflowError("references nest too deep (a cycle?)", file=file, key=where,
                            expected="references that end at a value, not back at themselves")
    if isinstance(data, dict):
        return {k: resolve_refs(v, root, file, f"{where}.{k}" if where else str(k), depth, budget)
                for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_refs(v, root, file, f"{where}[{i}]", depth, budget) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        def value(m: re.Match) -> Any:
            return resolve_refs(_lookup(root, m.group(1), file, where), root, file, where, depth + 1, budget)

        whole = _REF.fullmatch(data)
        if whole:  # a lone reference keeps the referenced value's type
            return value(whole)

        def text(m: re.Match) -> str:
            piece = str(value(m))
            budget.spend(where, chars=len(piece))  # before re.sub joins it into a larger string
            return piece

        return _REF.sub(text, data)
    return data


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise WorkflowError("workflow file not found", file=str(path), expected="an existing YAML file")
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise WorkflowError("top level is not a mapping", file=str(path), expected="YAML keys such as name, data")
    return data


def parse_workflow(path: str | Path, overrides: Sequence[str] = (), check_files: bool = True) -> Workflow:
    """Parse, override, resolve and type-check a workflow; with ``check_files`` its data files and
    model path must exist. Raises :class:`WorkflowError` on bad input.

    The cross-section checks (methods, LoRA fit, concepts, sweep space) are not made here: call
    :func:`hdsu_ray.checks.load_workflow` for a workflow that is ready to run.
    """
    path = Path(path)
    file = str(path)
    data = read_yaml(path)
    cli_root = None
    for text in overrides:
        keys, value = parse_override(text, file)
        if keys == ["data_root"]:
            if value is not None and not isinstance(value, str):
                raise WorkflowError(f"got {value!r}", file=file, key="data_root", expected="a directory path")
            cli_root = value
        _set_path(data, keys, value, file)
    data = resolve_refs(data, data, file)
    root = resolve_data_root(cli_root, data.get("data_root") if isinstance(data.get("data_root"), str) else None)
    workflow = build(Workflow, data, file=file)
    # Defaults may hold references too (output_dir: runs/${name}): resolve over the full config.
    full = to_dict(workflow)
    resolved = resolve_refs(full, full, file)
    if resolved != full:
        workflow = build(Workflow, resolved, file=file)
    workflow = replace(workflow, data_root=str(root))
    if check_files:
        check_data_files(workflow, file)
    return workflow


def check_data_files(workflow: Workflow, file: str | None) -> None:
    for key, rel in (("data.path", workflow.data.path), ("data.fluency_path", workflow.data.fluency_path)):
        if rel is None:
            continue
        full = data_path(workflow, rel)
        if not full.is_file():
            raise WorkflowError(f"data file {str(full)!r} not found", file=file, key=key,
                                expected=f"a file under the data root {workflow.data_root} "
                                         f"(set {DATA_ROOT_ENV} or data_root=...)")
    ev = workflow.evaluate
    for key, rel, want in (("evaluate.mmlu_path", ev.mmlu_path, "dir"), ("evaluate.pubmedqa_path", ev.pubmedqa_path, "file")):
        full = data_path(workflow, rel) if rel else None
        if full is not None and not (full.is_dir() and any(full.glob("*_test.csv")) if want == "dir" else full.is_file()):
            raise WorkflowError(f"{str(full)!r} not found", file=file, key=key,
                                expected="a folder of MMLU *_test.csv files" if want == "dir" else "a PubMedQA JSON file")
    u = workflow.unlearn
    if u.engine == "deepspeed":
        ds = deepspeed_config_path(u)
        if not ds.is_file():
            raise WorkflowError(f"DeepSpeed config {str(ds)!r} not found", file=file,
                                key="unlearn.deepspeed_config" if u.deepspeed_config else "unlearn.zero_stage",
                                expected="a JSON file (run from the repository root, or name it)")
    model = workflow.model
    if model.kind in ("hf", "gguf") and model.path != "smollm2" and model.check_path:
        mpath = Path(model.path).expanduser()
        ok = mpath.is_dir() if model.kind == "hf" else mpath.is_file()
        if not ok or not os.access(mpath, os.R_OK):
            what = "directory" if model.kind == "hf" else "file"
            wanted = "a Hugging Face model directory" if model.kind == "hf" else "a .gguf file"
            raise WorkflowError(f"model path {str(mpath)!r} is not a readable {what}", file=file, key="model.path",
                                expected=f"{wanted}, or model.check_path: false for a path only the cluster has")


def load_workflow(path: str | Path, overrides: Sequence[str] = (), check_files: bool = True) -> Workflow:
    """Deprecated: :func:`parse_workflow` (the former name). For a fully checked workflow call
    :func:`hdsu_ray.checks.load_workflow`; this alias goes once every caller has moved."""
    warnings.warn("hdsu_ray.config.loader.load_workflow is deprecated: call hdsu_ray.checks.load_workflow "
                  "(fully checked) or hdsu_ray.config.loader.parse_workflow", DeprecationWarning, stacklevel=2)
    return parse_workflow(path, overrides, check_files)
