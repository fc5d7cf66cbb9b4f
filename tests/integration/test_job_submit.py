"""The smoke workflow as a Ray *job* on a running Ray head, as on a cluster: ``ray job submit
--working-dir . -- hdsu-ray run workflows/smoke.yaml``. The job's driver sees RAY_ADDRESS and
connects to the head instead of starting a local Ray.

The job is also the suite's second run of the smoke workflow, which the determinism checks compare
with the session's cold run (an embedded Ray, its runs side by side): ga alone, its runs one after
the other, with seeds 0 and 1. Same seed, same numbers, whichever Ray runs it and however many runs
share it; seeds aggregate. (These checks were in test_unlearn_stage.py, on a CLI run of their own.)

The head: CI starts one (.ci/run) and names it in HDSU_TEST_RAY_HEAD / HDSU_TEST_DASHBOARD.
Without those, this module starts its own head on free ports (``ray start --head --block`` in a
new session, with its own --temp-dir) and stops exactly that head at the end by SIGTERM to the
``ray start --block`` process, which kills the daemons it started (never ``ray stop``: that stops
every Ray on the machine, other people's too).

One job (about 1-2.5 min on 2 busy cores, plus about 20 s for a head of our own). Its cache_dir
holds a copy of the session's learned smoke model (conftest.py), so the job does not learn again;
the head runs on this machine, so the job reads that path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # ray and hdsu-ray of this environment
RAY = VENV_BIN / "ray"
JOB_TIMEOUT = 900
# ga (the method that forgets, so its seeds differ) with seeds 0 and 1, one run at a time, without
# the attacks, which test_cli_smoke checks on the cold run.
SECOND = ("unlearn.concurrency=1", "evaluate.seeds=[0, 1]", "unlearn.methods=[{name: ga, budget: full}]",
          "robustness=null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    return env


def _wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            host, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(host)
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.fixture(scope="module")
def ray_head():
    """``(dashboard_url, gcs_address)`` of a running head: CI's, else one started here."""
    ci_head = os.environ.get("HDSU_TEST_RAY_HEAD")
    if ci_head:
        dash = os.environ.get("HDSU_TEST_DASHBOARD", "http://127.0.0.1:8265")
        _wait_http(f"{dash}/api/version", 60)
        yield dash, ci_head
        return
    port, dash_port, agent_port, client_port = _free_port(), _free_port(), _free_port(), _free_port()
    # A short temp dir of our own: unix socket paths stay under 107 bytes, and neither
    # /tmp/ray/session_latest nor /tmp/ray/ray_current_cluster of other users is touched.
    temp_dir = tempfile.mkdtemp(prefix="hdsu-rj-", dir="/tmp")
    env = {**_client_env(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           # On SIGTERM the head first drains itself (for Serve) and, with the finished job's
           # leftovers, waits out the 30 s default; nothing of ours needs that.
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash_port}", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # Not the fixed defaults (52365, 10001): any other Ray here (this session's ray_local,
         # someone else's) holds them, the agent cannot bind, and every submit answers
         # 'No available agent' until it gives up.
         f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dash = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_http(f"{dash}/api/version", 120)
        yield dash, f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # ray start --block kills its daemons on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], cwd=REPO, env=_client_env(), capture_output=True, text=True,
                          timeout=timeout)


def submit(dash: str, submission_id: str, runtime_env: dict, entrypoint: list[str]) -> subprocess.CompletedProcess:
    """``ray job submit`` (blocking: it tails the logs and exits 1 if the job FAILED). A head that
    has just started answers 'No available agent to submit job' until its dashboard agent has
    registered (seconds; minutes on a loaded 2-core machine): retry that."""
    cmd = ["job", "submit", "--address", dash, "--submission-id", submission_id, "--working-dir", ".",
           "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
    end = time.monotonic() + 300
    while True:
        try:
            proc = ray_cli(*cmd, timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            ray_cli("job", "stop", "--address", dash, submission_id)
            raise
        if "No available agent" not in proc.stderr + proc.stdout or time.monotonic() > end:
            return proc
        time.sleep(3)


@pytest.fixture(scope="module")
def smoke_job(ray_head, tmp_path_factory, data_root, copy_learned, smoke_cold_run):
    dash, _ = ray_head
    tmp = tmp_path_factory.mktemp("job")
    out, cache = tmp / "out", tmp / "cache"
    copy_learned(cache, overrides=SECOND)
    submission_id = f"hdsu-smoke-{uuid.uuid4().hex[:8]}"
    runtime_env = {
        # Keep the upload small (cap 100 MB): Ray honours .gitignore too, these are explicit.
        "excludes": ["/.venv", "/.cache", "/runs", "/outputs", "/bench/out", ".git", "__pycache__"],
        "env_vars": {"HDSU_DATA_ROOT": str(data_root), "RAY_AUTH_MODE": "disabled",
                     "DS_ACCELERATOR": "cpu", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                     # the head's environment is this venv (as if activated before `ray start`)
                     "PATH": f"{VENV_BIN}{os.pathsep}${{PATH}}"},
    }
    start = time.monotonic()
    proc = submit(dash, submission_id, runtime_env,
                  ["hdsu-ray", "run", "workflows/smoke.yaml", "--output-dir", str(out), f"cache_dir={cache}",
                   *SECOND])
    elapsed = time.monotonic() - start
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dash)
    return {"submit": proc, "status": str(client.get_job_status(submission_id)),
            "logs": client.get_job_logs(submission_id), "out": out, "elapsed": elapsed, "cold": smoke_cold_run}


def test_job_succeeds(smoke_job):
    proc = smoke_job["submit"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert smoke_job["status"] == "SUCCEEDED"
    print(f"job took {smoke_job['elapsed']:.0f} s")


def test_job_connected_to_the_head(smoke_job):
    logs = smoke_job["logs"]
    assert "[ray] connecting to" in logs  # RAY_ADDRESS inside the job: no embedded local Ray
    assert "[ray] starting a local Ray" not in logs


def test_job_logs_show_stages(smoke_job):
    logs = smoke_job["logs"]
    for line in ("== stage select", "== stage learn", "== stage evaluate:before", "== stage unlearn:ga",
                 "[results]"):
        assert line in logs, f"{line!r} missing from the job logs:\n{logs[-3000:]}"
    assert "cached learned model" in logs  # the job read the cache_dir prepared on this machine


def test_job_wrote_results(smoke_job):
    res = json.loads((smoke_job["out"] / "results.json").read_text())
    assert set(res["methods"]) == {"ga"}
    ga = res["methods"]["ga"]
    for r in ga["seeds"]["per_seed"]:
        assert 0.0 <= r["forget_rate"] <= 1.0
    # with two seeds both are seed means; the first seed's own evaluation is kept beside them
    assert ga["forget_rate"] == pytest.approx(1 - ga["after"]["forget_accuracy"])
    first = ga["first_seed"]
    assert first["seed"] == 0
    assert ga["seeds"]["per_seed"][0]["forget_rate"] == pytest.approx(1 - first["after"]["forget_accuracy"])


def test_same_seed_gives_same_metrics(smoke_job):
    first, out, logs = smoke_job["cold"], smoke_job["out"], smoke_job["logs"]
    a, b = first.results, json.loads((out / "results.json").read_text())
    ra, rb = a["methods"]["ga"], b["methods"]["ga"]
    assert ra["before"] == rb["before"]
    assert [c["loss_forget"] for c in ra["curve"]] == [c["loss_forget"] for c in rb["curve"]]
    seed0 = {r["seed"]: r for r in rb["seeds"]["per_seed"]}[0]
    assert seed0["forget_rate"] == ra["forget_rate"]
    assert seed0["knowledge_preservation"] == ra["knowledge_preservation"]
    with np.load(first.out / "items" / "ga-seed0.npz") as x, np.load(out / "items" / "ga-seed0.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:  # every per-item answer and MIA score
            assert np.array_equal(x[key], y[key]), key
    assert a["seeds"] == {"workflow": 0, "data": 0, "unlearn": [0]}
    assert "[runs] 2 runs, 2 at a time" in first.proc.stdout  # the cold run's two methods side by side
    assert "[runs]" not in logs  # the job's: one at a time
    assert "robustness" not in rb


def test_evaluate_seeds_aggregate_every_metric(smoke_job):
    """``evaluate.seeds: [0, 1]`` repeats each method per seed on one learned model; every metric is
    the mean over seeds with its spread and intervals, never seed 0's value."""
    out = smoke_job["out"]
    res = json.loads((out / "results.json").read_text())
    ga = res["methods"]["ga"]
    assert res["seeds"]["unlearn"] == [0, 1] and ga["seeds"]["values"] == [0, 1]
    per = {r["seed"]: r for r in ga["seeds"]["per_seed"]}
    spread = ga["seeds"]["spread"]
    assert spread["forget_rate"]["mean"] == pytest.approx((per[0]["forget_rate"] + per[1]["forget_rate"]) / 2)
    assert ga["forget_rate"] == pytest.approx(spread["forget_rate"]["mean"])
    auc = spread["mia_auc_min_k"]
    assert auc["n"] == 2 and ga["metrics"]["mia_auc_min_k"] == pytest.approx(auc["mean"])
    assert ga["ci"]["forget_rate"]["low"] <= ga["forget_rate"] <= ga["ci"]["forget_rate"]["high"]
    assert {"unlearn:ga:seed0", "unlearn:ga:seed1"} <= set(res["timings"])
    assert {p.name for p in (out / "items").iterdir()} == {f"ga-seed{s}.npz" for s in (0, 1)}


def test_dashboard_on_loopback_only(ray_head):
    port = urlparse(ray_head[0]).port
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on the dashboard port {port}"
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses
