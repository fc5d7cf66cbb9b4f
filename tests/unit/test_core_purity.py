"""hdsu_ray.core stays pure torch: importing it must not pull in the distributed stack."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("ray", "deepspeed", "transformers", "peft")


def test_core_imports_no_distributed_stack():
    modules = ["hdsu_ray.core", "hdsu_ray.core.projection", "hdsu_ray.core.budget",
               "hdsu_ray.core.losses"]
    if (REPO / "hdsu_ray" / "core" / "concepts.py").exists():
        modules.append("hdsu_ray.core.concepts")
    # a fresh interpreter, so nothing imported by pytest or other tests can hide a leak
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"leaked = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        + "print(','.join(leaked))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"hdsu_ray.core imported {out.stdout.strip()}"
