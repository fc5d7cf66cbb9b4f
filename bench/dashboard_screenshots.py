"""Screenshots of the Ray dashboard while the smoke workflow runs as a Ray job, and after it.

    cd /work/main && .venv/bin/python bench/dashboard_screenshots.py

What a user does, by script: start a Ray head of its own (``ray start --head --block`` in a new
session, own ports and --temp-dir, ``RAY_AUTH_MODE=disabled``, dashboard on 127.0.0.1), submit
``hdsu-ray run workflows/smoke.yaml`` with ``ray job submit --no-wait`` and open the dashboard in
headless Chromium (Debian's ``chromium``; playwright-core from npm, bench/dashboard_screenshots.mjs):
during the method runs Jobs, the job's page, Cluster, Actors and Metrics; after the job its log,
filtered. Meanwhile it reads the head's metrics export endpoint (``/metrics``) every 2 s.

Writes docs/img/dashboard-*.png (1280x800), docs/img/README.md, bench/out/dashboard_metrics.txt.
Stops exactly its own head (SIGTERM to its ``ray start --block``, then SIGKILL to what still runs
from its temp dir), never ``ray stop``. Not a test: 4-5 min on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
IMG, OUT = REPO / "docs" / "img", REPO / "bench" / "out"
SHOTS_JS = REPO / "bench" / "dashboard_screenshots.mjs"
NODE_DIR = Path.home() / ".cache" / "hdsu-ray" / "playwright"  # playwright-core, outside the repo
DATA_ROOT = Path(os.environ.get("HDSU_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
STUDY = "smoke"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env() -> dict[str, str]:
    """Auth off as on the head; no RAY_ADDRESS, since every CLI call below names its head."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}


def tools() -> tuple[str, Path]:
    """Chromium (apt-get install when missing) and playwright-core (npm, into NODE_DIR)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True)
    core = NODE_DIR / "node_modules" / "playwright-core"
    if not core.is_dir():  # npm creates the --prefix folder
        subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                        "playwright-core@1"], check=True)
    return chromium, core


class Head:
    """One Ray head of our own: its own ports and temp dir, so nothing else on the machine is touched."""

    def __init__(self, temp: Path):
        self.temp = temp
        self.gcs, self.dash, self.metrics = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.dash}"

    def start(self) -> None:
        from ray._private.services import get_node_ip_address  # the address the head will advertise

        env = {**client_env(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # hdsu-ray for the job
               # Ray Train's PlacementGroupCleaner in our workers must find this head, not another Ray here
               "RAY_ADDRESS": f"{get_node_ip_address()}:{self.gcs}", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.log = open(self.temp / "ray_start.log", "w")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={self.gcs}", "--num-cpus=2",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
             f"--metrics-export-port={self.metrics}", f"--dashboard-agent-listen-port={free_port()}",
             f"--ray-client-server-port={free_port()}",
             "--disable-usage-stats", f"--temp-dir={self.temp / 'ray'}"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/api/version", 180)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the daemons it started
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        time.sleep(2)
        for pid in own_processes(str(self.temp)):  # e.g. a gcs_server that outlived SIGTERM
            os.kill(pid, signal.SIGKILL)
        self.log.close()


def own_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (our temp dir): ours and nobody else's."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=3).close()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(1)


def submit(head: Head, tmp: Path, submission_id: str) -> None:
    runtime_env = {
        "excludes": ["/.venv", "/.cache", "/runs", "/outputs", "/bench/out", ".git", "__pycache__"],
        "env_vars": {"HDSU_DATA_ROOT": str(DATA_ROOT), "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu",
                     # The smoke runs are 4 steps: with Ray's 10 s default a Train worker can exit
                     # before it ever pushes its step metrics (docs/cluster.md).
                     "RAY_metrics_report_interval_ms": "2000"}}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", head.url, "--no-wait",
           "--submission-id", submission_id, "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
           "--", "hdsu-ray", "run", f"workflows/{STUDY}.yaml", "--output-dir", str(tmp / "out"),
           f"cache_dir={tmp / 'cache'}"]
    for _ in range(60):  # a fresh head answers 'No available agent' for a while
        proc = subprocess.run(cmd, cwd=REPO, env=client_env(), capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return
        if "No available agent" not in proc.stdout + proc.stderr:
            raise SystemExit(f"ray job submit failed:\n{proc.stdout}\n{proc.stderr}")
        time.sleep(3)
    raise SystemExit("the head never accepted the job")


class MetricsWatch(threading.Thread):
    """Reads ``/metrics`` every 2 s; per hdsu series: first and last time seen, in how many of the
    scrapes between them (a gap means the series dropped out), and its last value."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen, self.raw, self.halt, self.scrapes = url, {}, "", threading.Event(), 0

    def run(self) -> None:
        while not self.halt.wait(2):
            try:
                text = urllib.request.urlopen(self.url, timeout=5).read().decode()
            except OSError:
                continue
            now, self.scrapes = time.strftime("%H:%M:%S"), self.scrapes + 1
            lines = [line for line in text.splitlines() if "ray_hdsu_" in line]  # with # HELP / # TYPE
            if len(lines) >= len(self.raw.splitlines()):
                self.raw = "\n".join(lines)  # the scrape with the most series, verbatim
            for line in lines:
                if line.startswith("ray_hdsu_"):
                    series, _, value = line.rpartition(" ")
                    first, _, values, n0, _, hits = self.seen.get(series, (now, now, [], self.scrapes, 0, 0))
                    if not values or values[-1][0] != value:
                        values.append((value, now))  # each change of value, with when it was first seen
                    self.seen[series] = (first, now, values, n0, self.scrapes, hits + 1)

    def write(self, path: Path) -> str:
        rows = []
        for series, (first, last, values, n0, n1, hits) in sorted(self.seen.items()):
            changes = " ".join(f"{v}@{t}" for v, t in values[-4:])
            rows.append(f"{first}-{last} {hits}/{n1 - n0 + 1}  {short(series)} {changes}")
        table = "\n".join(rows)
        path.write_text("# first-last seen, scrapes with the series/scrapes in that span, series (Ray's own\n"
                        f"# labels left out), its last values@first seen\n{table}\n\n"
                        f"# the scrape with the most hdsu lines, verbatim\n{self.raw}\n")
        return f"/metrics: {len(self.seen)} hdsu series\n{table}"


def short(series: str) -> str:
    """A series without Ray's own labels (Component, NodeAddress, SessionName, WorkerId, otel_*)."""
    ours = re.findall(r'\b(?:workflow|stage|method|seed|term|split)="[^"]*"', series)
    return series.partition("{")[0] + "{" + ",".join(ours) + "}"


ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def job_api(head: Head, submission_id: str):
    """``(status(), logs())`` of the submitted job, through the head's job API."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.url)
    return lambda: str(client.get_job_status(submission_id)), lambda: client.get_job_logs(submission_id)


def shoot(chromium: str, core: Path, shots: list[dict], tmp: Path) -> int:
    """Take ``shots`` in one browser (bench/dashboard_screenshots.mjs); returns how many failed."""
    plan = tmp / f"plan-{len(list(tmp.glob('plan-*')))}.json"
    plan.write_text(json.dumps({"playwright": str(core), "chromium": chromium, "shots": shots}))
    proc = subprocess.run(["node", str(SHOTS_JS), str(plan)], capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for r in results:
        print(f"  {Path(r['out']).name}: {'ok' if r['ok'] else r['error']}", flush=True)
    return len(shots) - sum(r["ok"] for r in results)


def shot(name: str, url: str, kind: str = "page", **extra) -> dict:
    return {"url": url, "out": str(IMG / f"dashboard-{name}.png"), "kind": kind, **extra}


def main() -> None:
    chromium, core = tools()
    for folder in (IMG, OUT):
        folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hdsu-dash-", dir="/tmp"))  # short: unix socket paths < 108 bytes
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head, start = Head(tmp), time.monotonic()
    head.start()
    print(f"head up in {time.monotonic() - start:.0f} s: {head.url}", flush=True)
    sid, url = f"hdsu-{STUDY}-{datetime.now().strftime('%H%M%S')}", head.url
    watch = MetricsWatch(f"http://127.0.0.1:{head.metrics}/metrics")
    watch.start()
    try:
        submit(head, tmp, sid)
        (status, logs), job_url, submitted = job_api(head, sid), f"{url}/#/jobs/{sid}", time.monotonic()
        while "== stage unlearn:" not in logs():  # the method runs have started
            if status() in ENDED:
                raise SystemExit(f"the job {status()} before its method runs started:\n{logs()[-3000:]}")
            time.sleep(3)
        time.sleep(20)  # until the Train worker groups are up and stepping
        print("while the job runs:", flush=True)
        failed = shoot(chromium, core, [
            shot("jobs", f"{url}/#/jobs"), shot("job-tasks", job_url, "tasks"),
            # the worker processes, titled by the task they run
            shot("cluster", f"{url}/#/cluster", scrollTo=f"ray::run {STUDY}"),
            shot("actors", f"{url}/#/actors"), shot("metrics", f"{url}/#/metrics")], tmp)
        while (state := status()) not in ENDED:
            time.sleep(3)
        job_s = time.monotonic() - submitted
        print(f"job {state} after {job_s:.0f} s; after the job:", flush=True)
        time.sleep(6)  # the last metrics push
        failed += shoot(chromium, core, [
            # Not "== stage": the log view drops the words after a highlight that starts a line.
            shot("job-logs-stages", job_url, "logs", keyword="stage"),
            shot("job-logs-unlearn", job_url, "logs", keyword="unlearn:"),
            shot("job-tasks-done", job_url, "tasks", expand=[f"run {STUDY} ga seed0"])], tmp)
        (OUT / "dashboard_job.log").write_text(logs())
    finally:
        watch.halt.set()
        head.stop()
    total = time.monotonic() - start
    print(watch.write(OUT / "dashboard_metrics.txt"))
    write_readme(when, state, job_s, total, chromium, core, len(watch.seen))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"done in {total:.0f} s; screenshots in {IMG}")
    if failed or state != "SUCCEEDED":
        raise SystemExit(f"{failed} screenshot(s) failed; the job {state}")


SHOWS = {  # file -> what it shows; docs/cluster.md embeds each one
    "dashboard-jobs.png": "Jobs page while the job runs: status, duration, task bar",
    "dashboard-job-tasks.png": "the job's page, Ray Core Overview opened: tasks grouped by name, during the runs",
    "dashboard-cluster.png": "Cluster page during the runs: worker processes `ray::run smoke <method> seed0`",
    "dashboard-actors.png": "Actors page during the runs: Ray Train's actors (unnamed)",
    "dashboard-metrics.png": "Metrics page without Prometheus/Grafana: only the set-up notice",
    "dashboard-job-logs-stages.png": "the job's driver log after the job, keyword `stage`: every stage line",
    "dashboard-job-logs-unlearn.png": "the same log, keyword `unlearn:`: the unlearn stages and their step lines",
    "dashboard-job-tasks-done.png": "the job's page after the job: task groups, `run smoke ga seed0` opened",
}


def write_readme(when: str, status: str, job_s: float, total_s: float, chromium: str, core: Path,
                 series: int) -> None:
    import ray

    browser = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    pw = json.loads((core / "package.json").read_text())["version"]
    rows = "\n".join(f"| {name} | {what} |" for name, what in SHOWS.items())
    (IMG / "README.md").write_text(f"""# Dashboard screenshots

Made by `.venv/bin/python bench/dashboard_screenshots.py` (repository root), started {when}.
Ray {ray.__version__}, a `ray start --head` of the script's own with the open-source dashboard and no
Prometheus or Grafana; {browser}, headless, driven by playwright-core {pw}; 1280x800.
The job `hdsu-ray run workflows/{STUDY}.yaml` ended {status} after {job_s:.0f} s; the whole script took
{total_s:.0f} s on a 2-core machine shared with other work. The head's `/metrics` showed {series} `ray_hdsu_*`
series meanwhile (bench/out/dashboard_metrics.txt). docs/cluster.md shows and explains each picture.

| file | shows |
|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
