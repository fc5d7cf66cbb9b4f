"""Integration fixtures: one small local Ray cluster per test process (two under pytest-xdist), and
the smoke model learned once per session.

Learning the smoke model takes about 40 s of every run that does it. The session learns it once,
in ``smoke_cold_run`` (the smoke workflow through the CLI from an empty cache, which
test_cli_smoke checks really learns); modules that do not test learning start from a copy of that
run's learned model (``copy_learned``) in a cache_dir of their own.
"""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "workflows" / "smoke.yaml"


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray cluster with a small object store, shared by the whole session."""
    import ray

    from hdsu_ray.runtime import local_runtime_env, start_local_ray

    if not ray.is_initialized():  # as `hdsu-ray run` starts it (a dashboard, a findable GCS, its env)
        start_local_ray(2, object_store_memory=512 * 2**20, log_to_driver=False, runtime_env=local_runtime_env())
    yield ray
    ray.shutdown()


def _cold_smoke(tmp: Path) -> subprocess.CompletedProcess:
    out, cache = tmp / "out", tmp / "cache"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)  # always an embedded local Ray here
    env.pop("HDSU_FAULT_AT_STEP", None)
    return subprocess.run([str(Path(sys.executable).with_name("hdsu-ray")), "run", str(SMOKE),
                           f"cache_dir={cache}", "--output-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def smoke_cold_run(tmp_path_factory):
    """``hdsu-ray run workflows/smoke.yaml`` with an empty cache_dir: the session's only run that
    learns the smoke model. Returns ``tmp, out, proc, results, cache``. Never write into ``cache``:
    ``copy_learned`` hands out copies of its ``learned/`` directory.

    Under pytest-xdist every worker process asks for this fixture; a file lock in the directory the
    workers share makes the first one run it and the others read its record, so the suite still
    learns the smoke model exactly once.
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's base directory, above each worker's own
    tmp = shared / "smoke-cold"
    record = tmp / "proc.json"
    with FileLock(str(shared / "smoke-cold.lock")):
        if not record.is_file():
            tmp.mkdir(exist_ok=True)
            proc = _cold_smoke(tmp)
            record.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout,
                                          "stderr": proc.stderr}))
    proc = subprocess.CompletedProcess(args=["hdsu-ray", "run", str(SMOKE)], **json.loads(record.read_text()))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = tmp / "out"
    return SimpleNamespace(tmp=tmp, out=out, proc=proc, results=json.loads((out / "results.json").read_text()),
                           cache=tmp / "cache")


@pytest.fixture(scope="session")
def copy_learned(smoke_cold_run):
    """``copy_learned(cache_dir, workflow=SMOKE, overrides=()) -> Path``: put a copy of the session's
    learned smoke model into ``cache_dir`` where a run of ``workflow`` with ``overrides`` looks for
    it, so that run prints "cached learned model" instead of learning.

    Fails if that run's learned key (hdsu_ray.stages.learn.learned_key: model, learn, the selected
    rows' content, seed, num_workers) differs from the smoke model's, rather than let it learn again.
    A copy, not a link: a test cannot change what other tests start from.
    """
    from hdsu_ray.checks import load_workflow
    from hdsu_ray.data.select import select_data
    from hdsu_ray.stages.learn import learned_key

    def copy(cache_dir, workflow=SMOKE, overrides=()) -> Path:
        wf = load_workflow(Path(workflow), list(overrides))
        key = learned_key(wf, select_data(wf))
        src = smoke_cold_run.cache / "learned" / key
        if not (src / "config.json").is_file():
            pytest.fail(f"{workflow} with {list(overrides)} needs learned model {key}, not the session's smoke "
                        f"model ({sorted(p.name for p in (smoke_cold_run.cache / 'learned').iterdir())})")
        dst = Path(cache_dir) / "learned" / key
        shutil.copytree(src, dst)
        return dst

    return copy
