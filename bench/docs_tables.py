"""Regenerate the tables docs embed from code (run after changing the metric table):

    python bench/docs_tables.py

docs/metrics.md: the direction table, from hdsu_ray.eval.directions.directions_markdown().
docs/usage.md: the key reference (every key, its type, default and help), from the schema.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def replace_table(path: Path, header: str, table: str) -> None:
    """Replace the markdown table that starts with ``header`` by ``table``."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    path.write_text("".join(lines[:start]) + table + "".join(lines[end:]), encoding="utf-8")


def key_reference() -> str:
    from hdsu_ray.config.fields import field_help
    from hdsu_ray.config.schema import Workflow

    cell = lambda text: str(text).replace("|", "\\|")
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {cell(t)} | `{cell(d)}` | {cell(h)} |" for k, t, d, h in field_help(Workflow)]
    return "\n".join(lines) + "\n"


def main() -> int:
    from hdsu_ray.eval.directions import directions_markdown

    replace_table(REPO / "docs" / "metrics.md", "| metric | better | threshold passes when |", directions_markdown())
    replace_table(REPO / "docs" / "usage.md", "| key | type | default |", key_reference())
    print("docs/metrics.md: direction table regenerated; docs/usage.md: key reference regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
