"""Files appear whole or not at all, and a failed run never touches the previous run's files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hdsu_ray.cli import main
from hdsu_ray.store import (load_npz, promote, safe_name, save_npz_atomic, staging_dir, swap_dir, write_json_atomic,
                            write_text_atomic)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(1.5), "z": [np.int64(2)]})
    assert (tmp_path / "a.json").read_text() == '{\n  "x": null,\n  "y": 1.5,\n  "z": [\n    2\n  ]\n}\n'
    save_npz_atomic(tmp_path / "b.npz", {"v": np.arange(3)})
    assert load_npz(tmp_path / "b.npz")["v"].tolist() == [0, 1, 2]
    with pytest.raises(TypeError):  # a failed write keeps the old file and no temporary one
        write_json_atomic(tmp_path / "a.json", {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]


def test_safe_name_never_leaves_its_directory():
    assert safe_name("../../x") == "_.._x"
    assert safe_name("a:b/c d") == "a_b_c_d"
    assert safe_name("..") == "_" and "/" not in safe_name("/etc/passwd")


def test_staging_keeps_the_finished_run_until_the_new_one_is_promoted(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    write_text_atomic(final / "results.json", "old")
    work = staging_dir(final)
    assert work.name == "run.partial" and (work / "results.json").read_text() == "old"  # resumable state
    write_text_atomic(work / "results.json", "new")  # a new file: the old run's copy is not changed
    assert (final / "results.json").read_text() == "old"
    assert os.stat(work / "results.json").st_ino != os.stat(final / "results.json").st_ino
    promote(work, final)
    assert (final / "results.json").read_text() == "new" and not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_swap_replaces_a_directory_in_one_step(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("2")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "f").write_text("1")
    swap_dir(tmp_path / "new", tmp_path / "dst")
    assert (tmp_path / "dst" / "f").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_unreachable_cluster_keeps_the_previous_results(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_text_atomic(out / "results.json", "previous run")
    code = main(["run", "workflows/smoke.yaml", "cluster.address=127.0.0.1:1", "--output-dir", str(out)])
    assert code == 2 and "cluster.address" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
