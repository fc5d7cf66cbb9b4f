"""``hdsu-ray validate`` stays fast because it imports no heavy library; config stays a bottom layer.

Wall-clock bounds are flaky on a shared machine, so these tests check the cause instead: after
validating every shipped workflow in a fresh interpreter, torch, ray, pyarrow and transformers
must not be in ``sys.modules``. ``bench/bench_validate.py`` measures the time itself.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "pyarrow", "transformers", "deepspeed", "peft")


def run_fresh(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter (nothing imported by pytest can hide a leak); it prints JSON."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_validate_imports_no_heavy_library():
    workflows = sorted(str(p.relative_to(REPO)) for p in (REPO / "workflows").glob("*.yaml"))
    got = run_fresh(
        "import contextlib, io, json, sys\n"
        "from hdsu_ray.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main(['validate', *{workflows!r}])\n"
        f"print(json.dumps({{'code': code, 'out': out.getvalue(), "
        f"'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n")
    assert got["code"] == 0
    assert got["out"].splitlines() == [f"{w}: ok" for w in workflows]
    assert got["heavy"] == [], f"validate imported {got['heavy']}"


def test_validate_resolves_known_targets_without_the_hierarchy(tmp_path):
    """The concept targets are resolved in the hierarchy once (a cold build takes seconds); after
    that validate only hashes the inputs: no hierarchy is loaded, no ICD-10-CM module imported."""
    validate = ("import contextlib, io, json, sys\n"
                "import hdsu_ray.hierarchy.build as build\n"
                "loads = []\n"
                "real = build.load_hierarchy\n"
                "build.load_hierarchy = lambda *a, **k: loads.append(1) or real(*a, **k)\n"
                "from hdsu_ray.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                "    code = main(['validate', 'workflows/mhqa.yaml'])\n"
                "print(json.dumps({'code': code, 'loads': len(loads), 'icd': 'simple_icd_10_cm' in sys.modules}))\n")
    from hdsu_ray.hierarchy.build import default_cache_dir

    for pickled in default_cache_dir().glob("hierarchy-*.pkl"):  # spare this test a cold build
        shutil.copy(pickled, tmp_path / pickled.name)
    first = run_fresh(validate, HDSU_CACHE_DIR=str(tmp_path))
    again = run_fresh(validate, HDSU_CACHE_DIR=str(tmp_path))
    assert first["code"] == 0 and first["loads"] == 1  # no targets file yet: resolved in the hierarchy
    assert again == {"code": 0, "loads": 0, "icd": False}


def test_method_specs_parse_without_torch_and_losses_load_on_demand():
    got = run_fresh(
        "import json, sys\n"
        "from hdsu_ray.methods import METHODS, parse_method, wants_options\n"
        "params = [parse_method({'name': n}, 'm', None) for n in METHODS]\n"
        "flags = [wants_options(p) for p in params]\n"
        "before = 'torch' in sys.modules\n"
        "fn = METHODS['hdsu'].losses\n"
        "print(json.dumps({'before': before, 'after': 'torch' in sys.modules, 'fn': fn.__name__, "
        "'names': sorted(METHODS)}))\n")
    assert got["before"] is False, "parsing method specs imported torch"
    assert got["after"] is True and got["fn"] == "hdsu"  # the control: the check does see torch
    assert {"ga", "graddiff", "npo", "simnpo", "wga", "rmu", "hdsu"} <= set(got["names"])


def test_every_method_resolves_its_loss_function():
    from hdsu_ray.methods import METHODS

    for name, method in METHODS.items():
        assert callable(method.losses), name
        assert method.help, f"method {name} has no help"
