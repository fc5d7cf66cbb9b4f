"""Tables in the docs that are generated from code stay equal to what the code generates now."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def test_key_reference_is_current():
    from bench.docs_tables import key_reference

    assert key_reference() in (REPO / "docs" / "usage.md").read_text(encoding="utf-8"), \
        "run python bench/docs_tables.py"


def test_every_key_has_help_and_a_default_shown():
    from hdsu_ray.config.fields import field_help
    from hdsu_ray.config.schema import Workflow

    rows = field_help(Workflow)
    assert len(rows) > 100 and all(h for _, _, _, h in rows)
    defaults = dict((k, d) for k, _, d, _ in rows)
    assert defaults["unlearn.steps"] == "40" and defaults["name"] == "required"
    assert defaults["data.splits.retain_test"] == "0.4"
