"""Per-worker loop of the unlearn stage under Ray Train: fetch the bundle, resume, step, report.

The maths of a step lives in :class:`hdsu_ray.train.unlearn_run.UnlearnRun`; this module adds what
only a Ray Train worker has: the checkpoint to resume from, reports to the controller, and the
fault-injection hook the fault-tolerance test uses.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Not print(): in a Ray Train worker print goes to Train's logger as well as to stdout, and each
# line reached the driver twice.
log = logging.getLogger(__name__)


def unlearn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config["job"]`` is an :class:`~hdsu_ray.train.jobs.UnlearnJob`."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from hdsu_ray import telemetry
    from hdsu_ray.logs import configure
    from hdsu_ray.train.common import setup_worker
    from hdsu_ray.train.unlearn_run import UnlearnRun

    configure()
    job = config["job"]
    rank, world = setup_worker(job.seed, job.threads)
    # Which node each worker runs on (the multi-node test reads it; a user sees the spread).
    log.info("[unlearn:%s] worker %d/%d on node %s", job.settings["label"], rank, world,
             ray.get_runtime_context().get_node_id()[:12])
    run = UnlearnRun(job, ray.get(job.bundle), rank, world, ray.train.torch.get_device())
    ckpt = ray.train.get_checkpoint()
    start = 0
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = run.resume(torch.load(Path(d) / "state.pt", weights_only=False))
    for step in range(start, run.steps):
        _maybe_fail(step, rank, world, resumed=ckpt is not None)
        record = run.step(step)
        stop = run.monitor.after_step(step, run.steps, record, run.adapter)  # same answer on every rank
        last = step == run.steps - 1 or stop
        if rank == 0:  # one series per run, not per worker
            telemetry.unlearn_step(job.workflow, job.settings["label"], job.seed, record)
        if rank == 0 and (step % 10 == 0 or last):
            log.info("[unlearn:%s] step %d/%d %s", job.settings["label"], step + 1, run.steps,
                     " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "step"))
        if last or (step + 1) % job.checkpoint_every == 0:
            _report(run, step, record, last, stop)
        if last:
            break


def _report(run, step: int, record: dict, last: bool, stopped: bool) -> None:
    """Checkpoint (rank 0 writes the resume state; on the last step every rank saves the model)."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        if run.rank == 0:
            torch.save(run.checkpoint_state(step), Path(tmp) / "state.pt")
        if last:
            run.finish(Path(tmp), stopped)
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if run.rank == 0 else None
        # "selection": the best in-loop selection objective so far, so a Tune searcher that reads
        # intermediate results (single-objective Optuna) finds its metric in every report.
        ray.train.report({**record, "selection": run.monitor.best_obj or 0.0}, checkpoint=checkpoint)


def _maybe_fail(step: int, rank: int, world: int, resumed: bool) -> None:
    """Test hook (``HDSU_FAULT_AT_STEP``): the last worker dies once mid-run; Ray Train restarts
    the group from the checkpoint. It waits for the controller to collect the last report first
    (the controller polls the workers every health-check interval)."""
    if step == int(os.environ.get("HDSU_FAULT_AT_STEP", "-1")) and rank == world - 1 and not resumed:
        time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")))
        os._exit(1)
