"""The cluster/ deployment files parse and have the keys their tools need, and the GPU workflow
passes every check that can run away from the cluster. Nothing here talks to AWS or Kubernetes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
GPU_WORKFLOW = REPO / "workflows" / "mhqa_gpu.yaml"
HDSU_RAY = Path(sys.executable).with_name("hdsu-ray")


def _files(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in CLUSTER.glob(pattern))


@pytest.mark.parametrize("path", _files("*.yaml", "*.yml", "*.json"), ids=lambda p: p.name)
def test_parses(path):
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(data, dict) and data


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((CLUSTER / "ray-cluster-gpu.yaml").read_text())


def test_launcher_config(launcher):
    assert launcher["cluster_name"]
    assert launcher["provider"]["type"] in ("aws", "gcp", "azure", "local")
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    for name, node in types.items():
        assert isinstance(node["resources"], dict) and "CPU" in node["resources"], name
        assert node["max_workers"] >= node.get("min_workers", 0), name
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 8]
    assert gpu_types and launcher["head_node_type"] not in gpu_types
    assert launcher["max_workers"] >= max(t.get("min_workers", 0) for t in types.values())
    setup = " ".join(launcher["setup_commands"])
    assert "pip install" in setup and "hdsu-ray" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(launcher[key])
        assert "ray start" in start and "RAY_AUTH_MODE=token" in start, key
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])
    assert any(remote.endswith("hdsu-ray") for remote in launcher["file_mounts"])


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((CLUSTER / "rayjob-mhqa.yaml").read_text())


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert "hdsu-ray run" in spec["entrypoint"]
    workflow = spec["entrypoint"].split("hdsu-ray run", 1)[1].split()[0]
    assert (REPO / workflow).is_file(), workflow
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "HDSU_DATA_ROOT" in runtime_env["env_vars"]
    cluster = spec["rayClusterSpec"]
    assert _containers(cluster["headGroupSpec"])
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in cluster["workerGroupSpecs"]
            for c in _containers(g)]
    assert gpus and all(g is not None and int(g) >= 1 for g in gpus)
    for c in _containers(cluster["headGroupSpec"]):
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_runtime_env_example():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert "/.venv" in env["excludes"]
    assert {"HDSU_DATA_ROOT", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"} <= set(env["env_vars"])
    # DeepSpeed must find CUDA on GPU nodes; hdsu-ray's ray.init sets TOKENIZERS_PARALLELISM itself
    # and Ray refuses to merge two runtime_envs that set the same variable.
    assert not {"DS_ACCELERATOR", "TOKENIZERS_PARALLELISM"} & set(env["env_vars"])


ZERO_FILES = _files("zero*.json")


@pytest.mark.skipif(not ZERO_FILES, reason="no cluster/zero*.json yet")
@pytest.mark.parametrize("path", ZERO_FILES, ids=lambda p: p.name)
def test_zero_stage_matches_name(path):
    stage = int(re.match(r"zero(\d)", path.name).group(1))
    assert json.loads(path.read_text())["zero_optimization"]["stage"] == stage


@pytest.mark.skipif(not ZERO_FILES, reason="no cluster/zero*.json yet")
@pytest.mark.parametrize("path", ZERO_FILES, ids=lambda p: p.name)
def test_ds_config_completes_each_shipped_file(path):
    """One micro-batch per worker and step (the loop batches), the file's stage kept, its comment
    dropped, and the file's dict itself left as it was."""
    from hdsu_ray.train.zero_parts import ds_config

    data = json.loads(path.read_text())
    stage = data["zero_optimization"]["stage"]
    cfg = ds_config({"stage": stage, "config": data, "bf16": False}, world=4)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (1, 1, 4)
    assert cfg["zero_optimization"]["stage"] == stage and "_comment" not in cfg
    assert data == json.loads(path.read_text())  # a deep copy: the caller's dict is unchanged
    if (data["zero_optimization"].get("offload_optimizer") or {}).get("device", "none") != "none":
        assert cfg["zero_force_ds_cpu_optimizer"] is False  # the loop's torch AdamW steps the CPU slices


@pytest.mark.parametrize("zero, needs", [
    ({"stage": 2, "config": {"zero_optimization": {"stage": 3}}}, "zero_stage=3"),
    ({"stage": 1, "config": {"optimizer": {"type": "Adam"}}}, "must not name an optimizer"),
    ({"stage": 0, "config": {}, "bf16": True}, "needs ZeRO stage 1, 2 or 3"),
])
def test_ds_config_refuses_what_the_adapter_cannot_honour(zero, needs):
    from hdsu_ray.train.zero_parts import ds_config

    with pytest.raises(ValueError, match=re.escape(needs)):
        ds_config(zero, world=2)


def test_ds_config_turns_bf16_on_from_the_workflow():
    from hdsu_ray.train.zero_parts import ds_config

    cfg = ds_config({"stage": 2, "config": {}, "bf16": True}, world=1)
    assert cfg["bf16"] == {"enabled": True} and cfg["zero_optimization"] == {"stage": 2}
    assert cfg["gradient_clipping"] == 0.0  # the loop clips; DeepSpeed must not clip again


def test_gpu_workflow_sizes():
    data = yaml.safe_load(GPU_WORKFLOW.read_text())
    first = GPU_WORKFLOW.read_text().splitlines()[0]
    assert first == "# Launch: ray job submit --working-dir . -- hdsu-ray run workflows/mhqa_gpu.yaml"
    assert data["model"]["kind"] == "hf" and data["model"]["dtype"] == "bfloat16"
    assert data["cluster"]["num_workers"] == 8 and data["cluster"]["use_gpu"] is True
    assert data["unlearn"]["engine"] == "deepspeed" and data["unlearn"]["zero_stage"] == 3
    assert "limit" not in data["data"]["forget"] and "limit" not in data["data"]["retain"]
    mhqa = yaml.safe_load((REPO / "workflows" / "mhqa.yaml").read_text())
    assert data["data"]["path"] == mhqa["data"]["path"]
    assert data["data"]["forget"]["values"] == mhqa["data"]["forget"]["values"]
    assert data["data"]["retain"]["values"] == mhqa["data"]["retain"]["values"]
    assert [m["name"] for m in data["unlearn"]["methods"]] == [m["name"] for m in mhqa["unlearn"]["methods"]]
    assert data["unlearn"]["steps"] > mhqa["unlearn"]["steps"]


def test_gpu_workflow_validates():
    """`hdsu-ray validate` passes here: model.check_path is false, the model exists on the cluster."""
    proc = subprocess.run([str(HDSU_RAY), "validate", "workflows/mhqa_gpu.yaml"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(GPU_WORKFLOW.read_text())["model"]["check_path"] is False


def test_gpu_workflow_only_skips_the_model_path(tmp_path, data_root):
    """With the model check on, the only failing check is model.path; with it pointing at a
    directory that exists (on the cluster: the checkpoint), every check passes, files included."""
    from hdsu_ray.checks import load_workflow
    from hdsu_ray.errors import WorkflowError

    with pytest.raises(WorkflowError) as err:
        load_workflow(GPU_WORKFLOW, ["model.check_path=true"])
    assert err.value.key == "model.path"
    model = tmp_path / "Meta-Llama-3.1-8B-Instruct"
    model.mkdir()
    wf = load_workflow(GPU_WORKFLOW, ["model.check_path=true", f"model.path={model}"])
    assert wf.cluster.num_workers == 8 and wf.cluster.use_gpu and wf.unlearn.zero_stage == 3


def test_embedded_ray_environment(monkeypatch):
    """The embedded Ray's job environment: Ray's 2 s health-check poll and no preemption watcher
    unless the caller's environment says otherwise (the tests set a 0.5 s poll)."""
    from hdsu_ray.runtime import local_runtime_env

    for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"):
        monkeypatch.delenv(key, raising=False)
    env = local_runtime_env()["env_vars"]
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "2"
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    env = local_runtime_env()["env_vars"]
    assert (env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"], env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) == ("1", "0.5")
