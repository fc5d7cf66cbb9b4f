"""Ray start-up and resources: the one place that decides which cluster a run uses, which CPUs a
task asks for, and what environment every worker gets.

Rules that keep a run on its own cluster and within a node's means:
- an embedded Ray gets a known GCS port, and ``RAY_ADDRESS`` naming it is put into the raylet's
  environment (so workers, and Ray Train's PlacementGroupCleaner, find this cluster and not a
  stale ``/tmp/ray/ray_current_cluster`` or another Ray on the machine);
- a small Ray task that waits on others (a Tune trial, a concurrent method run) holds a sliver of
  CPU; the work it starts borrows that sliver (:func:`held_cpus`), or two 1-CPU runs would not fit
  side by side on 2 CPUs.
"""

from __future__ import annotations

import logging
import os
import socket

from hdsu_ray.errors import WorkflowError

log = logging.getLogger(__name__)

# Environment variables every Ray worker of a run inherits when they are set in the driver.
FORWARDED_ENV = ("DS_ACCELERATOR", "HDSU_DATA_ROOT", "TORCH_EXTENSIONS_DIR", "HDSU_FAULT_AT_STEP")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """Settings every worker needs: DeepSpeed on CPU without JIT-compiled ops, quiet tokenizers."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    env.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    return env


def local_runtime_env() -> dict:
    """The embedded Ray's job-wide runtime environment."""
    return {"env_vars": {
        "TOKENIZERS_PARALLELISM": "false",
        # Ray's 2 s health-check poll is kept for real work: 0.5 s cost the 1-worker loop 10-25 %
        # of its throughput on 2 cores (docs/PERFORMANCE.md). Tests set 0.5 s for short runs.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2"),
        # A worker group may wait for CPUs held by another trial or an evaluation; on a small local
        # Ray, Ray Train's 60 s default is too short to wait.
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900"),
        # The preemption watcher is one more actor process per Ray Train run (~1.6 CPU-seconds of
        # start-up on these cores) that watches for cloud nodes being reclaimed; an embedded Ray is
        # this one machine, with nothing to reclaim. A cluster's runs keep Ray's default.
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    }}


def start_local_ray(num_cpus: int | None = None, **init_kwargs) -> str | None:
    """Start an embedded Ray with its dashboard on a GCS port its own workers can find.

    The driver's own ``RAY_ADDRESS`` is restored afterwards, so a later local run in this process
    does not connect to this one. Returns the dashboard URL (None when it could not start).
    """
    import ray
    from ray._private.services import get_node_ip_address

    port = free_port()
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    try:
        ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                       dashboard_port=free_port(), **init_kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log.info("[ray] dashboard: http://%s", url)
    return url or None


def _check_reachable(address: str) -> None:
    if address.startswith(("ray://", "auto", "local")) or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:  # Ray retries an unreachable GCS for minutes; answer at once instead
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError):
        raise WorkflowError(f"no Ray cluster reachable at {address!r}", key="cluster.address",
                            expected="a running cluster's address, or none for a local Ray") from None


def init_ray(cluster) -> None:
    """Connect to ``cluster.address`` or ``RAY_ADDRESS`` (set inside ``ray job submit``), else
    start an embedded local Ray of ``cluster.num_cpus`` CPUs on this machine."""
    import ray

    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
    if ray.is_initialized():  # e.g. inside a test session or a notebook that started Ray
        return
    try:
        if address:
            log.info("[ray] connecting to %s", address)
            # No runtime_env here: inside `ray job submit` the job's own env would have to merge.
            ray.init(address=address, log_to_driver=True)
        else:
            log.info("[ray] starting a local Ray")
            start_local_ray(cluster.num_cpus, runtime_env=local_runtime_env(), log_to_driver=True)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise WorkflowError(f"no Ray cluster reachable at {address!r}: {exc}", key="cluster.address",
                            expected="a running cluster's address, or none for a local Ray") from None


def held_cpus() -> float:
    """CPUs the calling process holds when it is a small Ray task or Tune trial (0 for a driver).

    Only slivers count (under half a CPU): a caller that holds real CPUs is computing with them.
    """
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 0.0
    held = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    return held if held < 0.5 else 0.0


def node_resources() -> list[dict[str, float]]:
    """The ``Resources`` of every live node of the connected cluster."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def check_fits(cluster) -> None:
    """Fail at once, naming the setting, when no node can hold one worker (a request no node can
    satisfy waits forever: Ray's autoscaler only prints that nothing fulfils it)."""
    nodes = node_resources()
    largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if cluster.cpus_per_worker > largest:
        raise WorkflowError(f"{cluster.cpus_per_worker:g} CPUs per worker, but the largest node has {largest:g}",
                            key="cluster.cpus_per_worker", expected=f"at most {largest:g} (one worker runs on one node)")
    total = sum(n.get("CPU", 0.0) for n in nodes)
    if cluster.num_workers * cluster.cpus_per_worker > total:
        raise WorkflowError(f"{cluster.num_workers} workers x {cluster.cpus_per_worker:g} CPUs, but the cluster has "
                            f"{total:g} CPUs", key="cluster.num_workers", expected=f"at most {int(total // cluster.cpus_per_worker)}")
    if cluster.use_gpu and not any(n.get("GPU", 0.0) >= 1 for n in nodes):
        raise WorkflowError("no node has a GPU", key="cluster.use_gpu", expected="false, or a cluster with GPU nodes")


def task_cpus(cluster) -> float:
    """CPUs of one evaluation or preparation task: the workers' share, but never more than one
    node holds (the task runs on a single node)."""
    want = max(1.0, cluster.cpus_per_worker * cluster.num_workers)
    largest = max((n.get("CPU", 0.0) for n in node_resources()), default=want)
    return max(1.0, min(want, largest))
