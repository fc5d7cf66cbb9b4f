"""The memory benchmark measures runs that take their steps: a rerun into a finished run's
directory resumes from its checkpoints and takes none, so the bench starts from empty directories
and reads the steps each run took from its newest checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _checkpoint(run: Path, stamp: str, steps: int) -> None:
    d = run / f"checkpoint_{stamp}"
    d.mkdir(parents=True)
    (d / "history.json").write_text(json.dumps({"curve": [{"step": i} for i in range(steps)]}))


def test_steps_taken_reads_each_runs_newest_checkpoint(tmp_path):
    from bench.bench_memory import steps_taken

    _checkpoint(tmp_path / "ray_train" / "unlearn-hdsu-1", "2026-12-08_04-45-10.1", 2)
    _checkpoint(tmp_path / "ray_train" / "unlearn-hdsu-1", "2026-12-08_04-45-21.2", 4)
    _checkpoint(tmp_path / "ray_train" / "learned-abc", "2026-12-08_04-40-00.0", 9)  # not an unlearn run
    assert steps_taken(tmp_path) == {"unlearn-hdsu-1": 4}


def test_fresh_removes_the_output_and_its_staging_directory(tmp_path):
    from bench.bench_memory import fresh

    out = tmp_path / "memory-torch"
    for d in (out / "ray_train", tmp_path / "memory-torch.partial" / "ray_train", tmp_path / "memory-zero2"):
        d.mkdir(parents=True)
    fresh(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory-zero2"]
