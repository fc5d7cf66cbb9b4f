"""What a per-worker loop reads: one typed, picklable job per Ray Train run.

The driver (:func:`hdsu_ray.train.driver.fit_loop`) hands the job to every worker as
``train_loop_config={"job": job}``; a worker reads nothing else (no module globals, no defaults
hidden in ``dict.get``), so the same loop runs under the CLI, inside Tune trials and on any node.
Torch-free: the stages build jobs in the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RefreshSettings:
    """``projection.refresh_every``: recompute the retain basis in the worker every ``every`` steps."""

    every: int = 0
    samples: int = 32
    batch: int = 4
    method: str = "svd"
    energy: float | None = None


@dataclass(frozen=True)
class InLoopSettings:
    """In-loop evaluation on the bundle's ``eval`` arrays and the checkpoint selection rule."""

    every: int = 0
    candidates: int = 0  # > 0: evaluate at this many evenly spaced steps instead of every N
    select: str = "last"
    stop_at_forget_accuracy: float | None = None
    normalise: str = "mean"


@dataclass(frozen=True)
class UnlearnJob:
    """One unlearning run of one method and seed.

    Attributes:
        model_dir: the learned model every run starts from.
        method: the method's YAML mapping (parsed again in the worker by the registry).
        settings: resolved lr, steps, retain_weight, budget and label (``methods.resolved``).
        bundle: object ref of ``{"forget", "retain": arrays, "masks", "basis" U [n, R], "lora",
            "eval"}`` (:meth:`hdsu_ray.stages.artefacts.SharedArtefacts.bundle`).
        rank: columns of the basis to use (a sweep's shared basis is built at the largest rank).
        workflow: the study's name, for the run's Ray metrics (:mod:`hdsu_ray.telemetry`).
    """

    model_dir: str
    method: dict
    settings: dict
    bundle: Any
    seed: int
    batch_size: int
    checkpoint_every: int
    rank: int
    projection_metric: str = "euclidean"
    zero: dict | None = None
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    in_loop: InLoopSettings = field(default_factory=InLoopSettings)
    threads: int = 1
    workflow: str = ""


@dataclass(frozen=True)
class LearnJob:
    """Fine-tuning the base model on encoded QA arrays (the learn and retrain stages)."""

    base_dir: str
    data: Any  # object ref of {input_ids, attention_mask, labels} [N, L]
    seed: int
    epochs: int
    lr: float
    batch_size: int
    warmup_ratio: float
    weight_decay: float
    checkpoint_every: int
    threads: int = 1
