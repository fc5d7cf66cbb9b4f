"""The package's layers, read from every module's imports with ``ast`` (module- and function-level
imports both count): no import cycles, no import upwards, and the seams that keep heavy libraries
where they belong. docs/extending.md shows the same table.

This replaces a narrower check that only imported ``hdsu_ray.core`` in a subprocess; the
``validate`` path's own import check lives in test_validate_imports.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "hdsu_ray"

# Lowest first. A module may import modules of its own rank or lower, never higher.
RANKS = [
    {"hdsu_ray", "hdsu_ray.errors", "hdsu_ray.store", "hdsu_ray.logs", "hdsu_ray.runtime",
     "hdsu_ray.telemetry"},
    {"hdsu_ray.config"},
    {"hdsu_ray.core", "hdsu_ray.hierarchy"},
    {"hdsu_ray.data", "hdsu_ray.models", "hdsu_ray.methods"},
    {"hdsu_ray.eval"},
    {"hdsu_ray.train"},
    {"hdsu_ray.stages"},
    {"hdsu_ray.checks", "hdsu_ray.sweep", "hdsu_ray.report", "hdsu_ray.audit"},
    {"hdsu_ray.pipeline"},
    {"hdsu_ray.cli"},
]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str | None = None) -> tuple[set[str], set[str]]:
    """``(package modules, top-level external packages)`` imported anywhere in the file."""
    name = name or module_name(path)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") + ([""] if is_pkg else [])
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: -node.level] + ([node.module] if node.module else [])) if node.level \
                else node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in names:
            if target.split(".")[0] != "hdsu_ray":
                outer.add(target.split(".")[0])
                continue
            while target and target not in MODULES:  # `from pkg import function` -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                inner.add(target)
    return inner, outer


def rank(module: str) -> int:
    for i, group in enumerate(RANKS):
        if module in group or any(module.startswith(g + ".") for g in group if g != "hdsu_ray"):
            return i
    raise AssertionError(f"{module} has no layer: add it to RANKS here and to docs/extending.md")


GRAPH = {m: imports(p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for m in MODULES:
        rank(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_upwards(module):
    up = sorted(d for d in GRAPH[module][0] if d != "hdsu_ray" and rank(d) > rank(module))
    assert not up, f"{module} (layer {rank(module)}) imports higher layers: {up}"


def test_no_import_cycles():
    edges = {m: {d for d in deps if d != "hdsu_ray"} for m, (deps, _) in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_config_imports_only_config_and_errors():
    for m, (deps, _) in GRAPH.items():
        if m.startswith("hdsu_ray.config"):
            bad = {d for d in deps if not d.startswith("hdsu_ray.config") and d != "hdsu_ray.errors"}
            assert not bad, f"{m} imports {sorted(bad)}"


def test_core_is_pure_torch():
    for m, (_, outer) in GRAPH.items():
        if m.startswith("hdsu_ray.core"):
            assert not outer & {"ray", "deepspeed", "transformers", "peft"}, (m, sorted(outer))


def test_only_the_cli_imports_the_runner():
    users = {m for m, (deps, _) in GRAPH.items() if "hdsu_ray.pipeline" in deps}
    assert users <= {"hdsu_ray.cli"}, users


def test_deepspeed_only_behind_its_adapter():
    users = {m for m, (_, outer) in GRAPH.items() if "deepspeed" in outer}
    assert users == {"hdsu_ray.train.zero"}, users


def test_worker_loops_do_not_import_stages():
    for m, (deps, _) in GRAPH.items():
        if m.startswith("hdsu_ray.train"):
            assert not {d for d in deps if d.startswith(("hdsu_ray.stages", "hdsu_ray.sweep"))}, m


def test_the_checker_would_catch_a_cycle_and_an_upward_import(tmp_path):
    """The graph reader itself: a function-level import counts, relative imports resolve."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from hdsu_ray.pipeline import run_workflow\n    from . import artefacts\n")
    deps, _ = imports(probe, "hdsu_ray.stages.probe")
    assert {"hdsu_ray.pipeline", "hdsu_ray.stages.artefacts"} <= deps
    assert rank("hdsu_ray.pipeline") > rank("hdsu_ray.stages.probe")
