"""The driver layer: build a TorchTrainer for a per-worker loop and run it.

Both the CLI pipeline and Tune trials call :func:`fit_loop`, so a trial is exactly a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from hdsu_ray.config.schema import ClusterConfig


def fit_loop(loop: Callable[[dict], None], loop_config: dict[str, Any], cluster: ClusterConfig, *,
             name: str, storage: Path, callbacks: list | None = None):
    """Run ``loop`` on ``cluster.num_workers`` Ray Train workers; returns the Ray ``Result``.

    A run directory ``storage/name`` that already holds checkpoints is resumed from the latest one
    (Train V2 restores a run with the same name and storage path), so rerunning a killed stage
    continues where it stopped.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    threads = max(1, round(cluster.cpus_per_worker))
    # A caller that is itself a small Ray task (a Tune trial, a concurrent method run) holds a
    # sliver of CPU while it waits; its workers borrow that sliver, or two 1-CPU runs holding
    # 0.01 each would not fit side by side on 2 CPUs and would silently run one after the other.
    per_worker = cluster.cpus_per_worker - held_cpus() / cluster.num_workers
    scaling = ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                            resources_per_worker={"CPU": per_worker})
    run = RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                    failure_config=FailureConfig(max_failures=cluster.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks or None,
                    worker_runtime_env={"env_vars": _worker_env()})
    trainer = TorchTrainer(loop, train_loop_config={**loop_config, "threads": threads},
                           scaling_config=scaling, run_config=run,
                           torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def held_cpus() -> float:
    """CPUs the calling process holds when it is a small Ray task or Tune trial (0 for a driver).

    Only slivers count (under half a CPU): a caller that holds real CPUs is computing with them.
    """
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 0.0
    held = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    return held if held < 0.5 else 0.0


def _worker_env() -> dict[str, str]:
    """Settings every worker needs: DeepSpeed on CPU without JIT-compiled ops, quiet tokenizers."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    for key in ("DS_ACCELERATOR", "HDSU_DATA_ROOT", "TORCH_EXTENSIONS_DIR", "HDSU_FAULT_AT_STEP"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env
