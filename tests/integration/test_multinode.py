"""Multi-node for real: the smoke workflow with 2 Ray Train workers on a 2-node cluster of 1 CPU per
node (``ray.cluster_utils.Cluster``), connected through ``RAY_ADDRESS`` to that cluster only.

While it unlearns, the worker node is removed and a new one added (a node lost and replaced, as an
autoscaler does): the run resumes from its last checkpoint and writes results.json. A request no
node can hold fails at once with the setting to change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HDSU_RAY = Path(sys.executable).with_name("hdsu-ray")
OVERRIDES = ["cluster.num_workers=2", "cluster.cpus_per_worker=1", "learn.epochs=1", "unlearn.concurrency=1",
             "unlearn.steps=40",
             "unlearn.checkpoint_every=5", "unlearn.methods=[{name: graddiff, param_budget: 0.01}]",
             "robustness=null"]


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def _env(cluster) -> dict:
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HDSU_FAULT_AT_STEP", None)
    return env


def test_two_workers_on_two_nodes_survive_a_lost_node(two_nodes, tmp_path):
    cluster, worker = two_nodes
    cmd = [str(HDSU_RAY), "run", "workflows/smoke.yaml", f"cache_dir={tmp_path / 'cache'}", "--output-dir",
           str(tmp_path / "out"), *OVERRIDES]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 900
    # wait until unlearning has checkpointed once (on disk, in the run's staging directory), then
    # lose the worker node and add a new one
    checkpoints = tmp_path / "out.partial" / "ray_train"
    while not list(checkpoints.glob("unlearn-*/checkpoint_*")):
        assert proc.poll() is None, "".join(lines)[-4000:]
        assert time.time() < deadline, "".join(lines)[-4000:]
        time.sleep(0.2)
    cluster.remove_node(worker)
    time.sleep(2)
    cluster.add_node(num_cpus=1)
    assert proc.wait(timeout=900) == 0, "".join(lines)[-6000:]
    reader.join(timeout=10)
    log = re.sub(r"\x1b\[[0-9;]*m", "", "".join(lines))
    # one worker per node (2 workers of 1 CPU on nodes of 1 CPU): they report two node ids
    nodes = re.findall(r"\[unlearn:graddiff\] worker \d/2 on node (\w+)", log)
    assert len(set(nodes)) >= 2, nodes
    assert "[FailurePolicy] RETRY" in log  # the lost node failed the group; it restarted from a checkpoint
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    curve = res["methods"]["graddiff"]["curve"]
    assert [c["step"] for c in curve] == list(range(40))
    assert res["config"]["cluster"]["num_workers"] == 2


def test_a_worker_no_node_can_hold_fails_at_once(two_nodes, tmp_path):
    cluster, _ = two_nodes
    start = time.perf_counter()
    proc = subprocess.run([str(HDSU_RAY), "run", "workflows/smoke.yaml", "cluster.cpus_per_worker=2", "--output-dir",
                           str(tmp_path / "out")], cwd=REPO, env=_env(cluster), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "cluster.cpus_per_worker" in proc.stderr and "largest node has 1" in proc.stderr
    assert time.perf_counter() - start < 60
