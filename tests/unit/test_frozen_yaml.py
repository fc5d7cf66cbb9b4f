"""frozen.yaml, the fair comparison's output workflow, stays portable across checkouts."""

from dataclasses import replace
from pathlib import Path

import yaml

from hdsu_ray.checks import load_workflow
from hdsu_ray.sweep.compare import frozen_yaml

REPO = Path(__file__).resolve().parents[2]


def _frozen_cache(cache_dir: str, cwd: Path, monkeypatch) -> str:
    # loaded before the chdir: the default data root is relative to the working directory
    wf = replace(load_workflow(REPO / "workflows" / "mhqa_compare.yaml"), cache_dir=cache_dir)
    monkeypatch.chdir(cwd)
    text = frozen_yaml(replace(wf, compare=None), wf)
    assert text.startswith("# Frozen by the fair comparison of mhqa-anxiety-compare")
    return yaml.safe_load(text)["cache_dir"]


def test_a_cache_inside_the_working_directory_is_written_relative(tmp_path, monkeypatch):
    # what the pipeline hands over: cache_dir resolved against the working directory
    assert _frozen_cache(str(tmp_path / ".cache" / "hdsu"), tmp_path, monkeypatch) == ".cache/hdsu"


def test_a_cache_elsewhere_keeps_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    elsewhere = str(tmp_path / "shared-cache")
    assert _frozen_cache(elsewhere, tmp_path / "work", monkeypatch) == elsewhere
