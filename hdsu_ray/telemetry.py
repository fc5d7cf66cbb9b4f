"""Stage progress and unlearning steps as Ray metrics (``ray.util.metrics``).

Ray exports these through each node's metrics agent (Prometheus text on the node's metrics
export port, ``/metrics``) with Ray's ``ray_`` prefix: the dashboard's Metrics page shows them
once Prometheus and Grafana are set up as Ray documents. docs/cluster.md lists the names.

Every function here is a no-op outside Ray: without ``import ray`` having happened, or with Ray
not initialised, nothing is imported or created, so the CLI's ``validate`` path and unit tests
pay nothing. Inside Ray the metric objects are created once per process and a call is a dict
lookup, one ``set`` and one dict store. A failure never reaches the caller (a training loop must not die for a
metric): it is logged once and telemetry is switched off for the rest of the process.

Ray 2.60's metrics agent drops a gauge series that has not been set for two report intervals
(20 s by default), even while its process lives: a stage's "running" gauge, set once, vanished
mid-stage. So a daemon thread sets every gauge series of the process again each half interval;
series then last as long as the process that set them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

RUN_TAGS = ("workflow", "method", "seed")

# name -> (kind, description, tag keys). Names carry no ':' (Ray discards such metrics) and
# Ray prefixes them with "ray_" on export; a Counter is exported with a "_total" suffix.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "hdsu_stage_running": ("gauge", "1 while a workflow stage runs, 0 once it has finished",
                           ("workflow", "stage")),
    "hdsu_stage_seconds": ("gauge", "wall seconds of a finished workflow stage", ("workflow", "stage")),
    "hdsu_unlearn_step": ("gauge", "last finished unlearning step of a run (1-based)", RUN_TAGS),
    "hdsu_unlearn_steps": ("counter", "unlearning steps done (a resumed run counts replays again)",
                           RUN_TAGS),
    "hdsu_unlearn_loss": ("gauge", "per-step loss term of an unlearning run (term: forget, retain, ...)",
                          RUN_TAGS + ("term",)),
    "hdsu_unlearn_accuracy": ("gauge", "in-loop accuracy of an unlearning run (split: forget, retain)",
                              RUN_TAGS + ("split",)),
}

_metrics: dict[str, Any] = {}
_disabled = False
_live: dict[tuple, tuple[str, float, dict]] = {}  # gauge series -> (metric, last value, tags)
_lock = threading.Lock()
_keeper: threading.Thread | None = None


def _ray_ready() -> bool:
    """True when this process is connected to Ray; never imports Ray itself (it costs seconds)."""
    ray = sys.modules.get("ray")
    if ray is None or _disabled:
        return False
    try:
        return bool(ray.is_initialized())
    except Exception:  # a partly imported or shut-down Ray
        return False


def _metric(name: str):
    """The process's one metric object of ``name`` (created on first use)."""
    found = _metrics.get(name)
    if found is None:
        from ray.util import metrics  # lazy: only ever reached inside a Ray process

        kind, description, tags = METRICS[name]
        cls = metrics.Counter if kind == "counter" else metrics.Gauge
        found = _metrics[name] = cls(name, description=description, tag_keys=tags)
    return found


def _gauge(name: str, value: float, tags: dict[str, str]) -> None:
    """Set a gauge series and keep it for :func:`_refresh`."""
    global _keeper
    _metric(name).set(value, tags=tags)
    with _lock:
        _live[(name, *tags.values())] = (name, value, tags)  # our callers build tags in one order
        if _keeper is None:
            _keeper = threading.Thread(target=_refresh_forever, name="hdsu-telemetry", daemon=True)
            _keeper.start()


def _refresh() -> None:
    """Set every gauge series of this process again (see the module docstring)."""
    with _lock:
        series = list(_live.values())
    for name, value, tags in series:
        _metrics[name].set(value, tags=tags)


def _refresh_forever() -> None:
    try:
        import ray._raylet  # the interval this process's core worker reports at

        period = max(1.0, ray._raylet.Config.metrics_report_interval_ms() / 2000)
    except Exception:
        period = 5.0  # half of Ray's default interval
    while not _disabled:
        time.sleep(period)
        if _ray_ready():
            try:
                _refresh()
            except Exception as exc:
                _off(exc)


def _off(exc: BaseException) -> None:
    """Stop trying after the first failure: one warning, no cost per step afterwards."""
    global _disabled
    _disabled = True
    log.warning("[telemetry] Ray metrics switched off in this process: %s: %s", type(exc).__name__, exc)


def stage_started(workflow: str, stage: str) -> None:
    """Mark ``stage`` of ``workflow`` as running."""
    if not workflow or not _ray_ready():
        return
    try:
        _gauge("hdsu_stage_running", 1, {"workflow": workflow, "stage": stage})
    except Exception as exc:
        _off(exc)


def stage_finished(workflow: str, stage: str, seconds: float | None = None) -> None:
    """Mark ``stage`` as finished, with its wall time when known."""
    if not workflow or not _ray_ready():
        return
    try:
        tags = {"workflow": workflow, "stage": stage}
        _gauge("hdsu_stage_running", 0, tags)
        if seconds is not None:
            _gauge("hdsu_stage_seconds", float(seconds), tags)
    except Exception as exc:
        _off(exc)


# Accuracy keys of a step's record (in_loop.after_step) -> the "split" tag.
_ACCURACIES = {"eval_forget_accuracy": "forget", "eval_retain_accuracy": "retain"}


def unlearn_step(workflow: str, method: str, seed: int | str, record: dict) -> None:
    """Export one unlearning step's record: ``step`` (0-based), ``loss_<term>`` values and the
    in-loop ``eval_*_accuracy`` values when that step evaluated."""
    if not _ray_ready():
        return
    try:
        run = {"workflow": workflow or "-", "method": method, "seed": str(seed)}
        if "step" in record:
            _gauge("hdsu_unlearn_step", int(record["step"]) + 1, run)
        _metric("hdsu_unlearn_steps").inc(1, tags=run)
        for key, value in record.items():
            if key.startswith("loss_"):
                _gauge("hdsu_unlearn_loss", float(value), {**run, "term": key[5:]})
            elif key in _ACCURACIES and value is not None:
                _gauge("hdsu_unlearn_accuracy", float(value), {**run, "split": _ACCURACIES[key]})
    except Exception as exc:
        _off(exc)
