"""The driver layer: build a TorchTrainer for a per-worker loop and run it.

Both the CLI's runs and Tune trials call :func:`fit_loop`, so a trial is exactly a run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from hdsu_ray.config.schema import ClusterConfig
from hdsu_ray.runtime import held_cpus, worker_env


def fit_loop(loop: Callable[[dict], None], job: Any, cluster: ClusterConfig, *, name: str, storage: Path,
             callbacks: list | None = None):
    """Run ``loop`` on ``cluster.num_workers`` Ray Train workers with ``job``; returns the ``Result``.

    A run directory ``storage/name`` that already holds checkpoints is resumed from the latest one
    (Train V2 restores a run with the same name and storage path), so rerunning a killed stage
    continues where it stopped.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    threads = max(1, round(cluster.cpus_per_worker))
    # A caller that is itself a small Ray task (a Tune trial, a concurrent method run) holds a
    # sliver of CPU while it waits; its workers borrow that sliver (runtime.held_cpus).
    per_worker = cluster.cpus_per_worker - held_cpus() / cluster.num_workers
    scaling = ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                            resources_per_worker={"CPU": per_worker})
    run = RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                    failure_config=FailureConfig(max_failures=cluster.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks or None,
                    worker_runtime_env={"env_vars": worker_env()})
    trainer = TorchTrainer(loop, train_loop_config={"job": replace(job, threads=threads)},
                           scaling_config=scaling, run_config=run,
                           torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result
