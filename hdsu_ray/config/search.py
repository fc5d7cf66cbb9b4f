"""The search sections of a workflow: ``sweep`` (one method's Ray Tune + Optuna search) and
``compare`` (the fair comparison: every method searched alike, frozen, then run with several seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hdsu_ray.config.fields import opt
from hdsu_ray.config.paths import check_name
from hdsu_ray.errors import WorkflowError


@dataclass(frozen=True)
class SearchDim:
    """One dimension of a sweep's search space."""

    type: Literal["int", "float", "choice"] = opt(help="int or float range, or a choice of values")
    low: float | None = opt(None, help="lower bound (int, float)")
    high: float | None = opt(None, help="upper bound (int, float)")
    log: bool = opt(False, help="sample on a log scale")
    values: list[Any] | None = opt(None, help="the values of a choice")

    def validate(self, key: str, file: str | None) -> None:
        if self.type == "choice":
            if not self.values:
                raise WorkflowError("a choice needs values", file=file, key=f"{key}.values",
                                    expected="a non-empty list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise WorkflowError(f"bad range [{self.low}, {self.high}]", file=file, key=key,
                                expected="low <= high, both given")
        elif self.log and self.low <= 0:
            raise WorkflowError("log scale needs low > 0", file=file, key=f"{key}.low", expected="> 0")


@dataclass(frozen=True)
class SweepConfig:
    """A Ray Tune + Optuna search over the dual strategy's own knobs."""

    method: dict[str, Any] = opt(factory=lambda: {"name": "hdsu"}, help="the method spec every trial starts from")
    space: dict[str, SearchDim] = opt(factory=dict, help="key -> dimension; a key is a parameter of the swept "
                                      "method (lr, steps, beta, ...), projection.rank, or (methods with "
                                      "weights) weights.<label> or weights.<label>.<level>")
    searcher: Literal["tpe", "nsga2", "random", "qmc"] = opt("nsga2", help="Optuna sampler; nsga2 and tpe "
                                                             "search both objectives (multi-objective). Both "
                                                             "start at random: tpe for its first 10 trials, "
                                                             "nsga2 for its first generation of 50. qmc: a "
                                                             "seeded scrambled Sobol sequence, which spreads "
                                                             "a few trials over every range")
    objectives: list[str] = opt(factory=lambda: ["forget_rate", "knowledge_preservation"],
                                help="metrics to maximise")
    scheduler: Literal["none", "asha"] = opt("none", help="asha stops weak trials early on the in-loop "
                                             "objective (needs evaluate.every > 0)")
    grace_evals: int = opt(2, ge=1, help="in-loop evaluations before ASHA may stop a trial")
    num_samples: int = opt(8, ge=1, help="trials")
    max_concurrent: int = opt(2, ge=1, help="trials running at once")
    seed: int = opt(0, help="searcher seed")
    cache: Literal["shared", "per_trial", "none"] = opt(
        "shared", help="shared: one learned model, annotation and retain basis (largest rank, sliced) "
        "serve every trial; per_trial: each trial computes its own mask, reference and basis; none: each "
        "trial is an independent run that also learns and annotates (the last two are for the benchmark)")

    def validate(self, key: str, file: str | None) -> None:
        # The space's keys depend on the swept method's parameters: hdsu_ray.checks checks them.
        if not self.space:  # Tune would run num_samples copies of one trial
            raise WorkflowError("empty search space", file=file, key=f"{key}.space",
                                expected="at least one dimension, e.g. lr: {type: float, low: 1.0e-5, high: "
                                         "1.0e-3, log: true}")
        for name in self.objectives:
            if name not in ("forget_rate", "knowledge_preservation", "selection"):
                raise WorkflowError(f"unknown objective {name!r}", file=file, key=f"{key}.objectives",
                                    expected="forget_rate, knowledge_preservation, or selection (the "
                                             "evaluate.select rule on forget + retain_val)")


@dataclass(frozen=True)
class TunedMethod:
    """One method of a fair comparison and the space its settings are searched in."""

    method: dict[str, Any] = opt(help="the method spec every trial starts from ({name: ..., label: ...})")
    space: dict[str, SearchDim] = opt(help="its own search space: at least lr and steps, plus its main knob")


@dataclass(frozen=True)
class Ablation:
    """A tuned method's frozen settings with one component changed (not tuned again)."""

    label: str = opt(help="name in reports, e.g. hdsu-no-projection")
    of: str = opt(help="label of the tuned method it starts from")
    set: dict[str, Any] = opt(help="the method keys it changes, e.g. {projection: false}")

    def validate(self, key: str, file: str | None) -> None:
        check_name(self.label, f"{key}.label", file)  # it names the run's model directory


@dataclass(frozen=True)
class CompareConfig:
    """A fair comparison: every method gets the same tuning budget, step cap, candidate
    checkpoints and selection rule on forget + retain_val; the best settings are frozen and run
    with several seeds, reported on retain_test."""

    methods: list[TunedMethod] = opt(help="the methods and their search spaces")
    trials: int = opt(8, ge=1, help="Ray Tune + Optuna trials per method (the same for every method)")
    searcher: Literal["tpe", "random", "qmc"] = opt("tpe", help="Optuna sampler of every method's search; "
                                                    "tpe draws its first 10 trials at random, so up to 10 "
                                                    "trials are a seeded random search; qmc (a seeded "
                                                    "scrambled Sobol sequence) spreads a small budget over "
                                                    "every range")
    max_concurrent: int = opt(2, ge=1, help="trials running at once")
    seed: int = opt(0, help="searcher seed (the same for every method)")
    seeds: list[int] = opt(factory=lambda: [0, 1, 2], help="unlearning seeds of the final, reported runs")
    ablations: list[Ablation] = opt(factory=list, help="frozen settings of a tuned method with one "
                                                       "component switched off, run like the others")

    def check_protocol(self, evaluate: Any, step_cap: int, file: str | None) -> None:
        """What the fair protocol needs of the rest of the workflow (method keys: checks.py).

        Args:
            evaluate: the workflow's ``evaluate`` section (its candidates and selection rule).
            step_cap: ``unlearn.steps``, which every method's steps must reach.
        """
        if not evaluate.candidates or evaluate.select == "last":
            raise WorkflowError("a comparison selects every method's checkpoint by one rule among equally many "
                                "candidates", file=file, key="evaluate.candidates",
                                expected="evaluate.candidates > 0 and evaluate.select: hmean or sum")
        for i, tm in enumerate(self.methods):
            for knob in ("lr", "steps"):
                if knob not in tm.space:
                    raise WorkflowError(f"no {knob} dimension", file=file, key=f"compare.methods[{i}].space",
                                        expected="lr and steps searched for every method")
            steps = tm.space["steps"]
            top = max(steps.values) if steps.type == "choice" else steps.high
            if top != step_cap:
                raise WorkflowError(f"steps reach {top:g}, not the step cap unlearn.steps = {step_cap}",
                                    file=file, key=f"compare.methods[{i}].space.steps",
                                    expected="every method's steps searched up to the same cap, unlearn.steps")
