"""Load a workflow ready to run: parse it, then every check that spans sections.

:func:`hdsu_ray.config.loader.parse_workflow` checks what each section can check about itself.
What needs more than config lives here, one layer up, and still runs before Ray starts:

* method specs (registry names, each method's own keys, distinct labels) and weight overrides;
* ``budget: lora``: the DeepSpeed stage and, for a tiny model, that one adapter fits the budget;
* ``concepts``: targets, presets, levels and weights, through the annotate stage's own
  :class:`~hdsu_ray.stages.concept_spec.ConceptSpec`, so validate rejects what the stage would;
* ``sweep.space``: each key names a parameter of the swept method (or ``projection.rank``, or
  ``weights.<label>[.<level>]``), and every value it can sample is valid for that parameter;
* with the files (:func:`check_contents`): the data rows and the selection, the fluency file, the
  smollm2 model package, and the concept targets resolved in the hierarchy.

Nothing here imports torch, ray or pyarrow: ``hdsu-ray validate`` stays well under two seconds
(the hierarchy is read only when a target list is new: see ``hierarchy.build.check_targets``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence, get_args, get_type_hints

from hdsu_ray.config.fields import build, to_dict
from hdsu_ray.config.loader import check_data_files, parse_workflow
from hdsu_ray.config.paths import check_name, data_path
from hdsu_ray.config.schema import DEFAULT_PRESERVE_LEVELS, ProjectionConfig, Workflow
from hdsu_ray.config.search import SearchDim, SweepConfig
from hdsu_ray.core.weighting import LABELS, check_level, check_weight, weight_table
from hdsu_ray.data.loaders import load_records
from hdsu_ray.data.select import select_data
from hdsu_ray.errors import WorkflowError
from hdsu_ray.eval import directions
from hdsu_ray.hierarchy.build import check_targets
from hdsu_ray.methods import METHODS, parse_method, resolved, validate_method_specs
from hdsu_ray.models.build import check_model_package, tiny_linear_shapes
from hdsu_ray.stages.concept_spec import ConceptSpec
from hdsu_ray.train.lora import check_one_fits, is_candidate

# Sweep keys that are not a parameter of the swept method (see sweep/tuner.py::trial_spec).
RANK_KEY, WEIGHTS_PREFIX = "projection.rank", "weights."


def load_workflow(path: str | Path, overrides: Sequence[str] = (), check_files: bool = True) -> Workflow:
    """Parse a workflow and make every check; raises :class:`WorkflowError` naming the file.

    Args:
        path: the workflow YAML.
        overrides: ``dotted.key=value`` strings from the command line.
        check_files: also require the data files, DeepSpeed JSON and model path to exist, and
            check what they hold (:func:`check_contents`).
    """
    file = str(path)
    workflow = parse_workflow(path, overrides, check_files=False)
    check_workflow(workflow, file)
    if check_files:  # after the key checks, so a bad key is reported before a missing file
        check_data_files(workflow, file)
        check_contents(workflow, file)
    return workflow


def check_contents(workflow: Workflow, file: str | None) -> None:
    """What only the files' contents tell, before Ray starts: every data row loads and the selection
    cuts forget, retain and holdout sets (as the run will); the fluency file loads; the smollm2
    package is there; the concept targets name concepts of the hierarchy. An error from a file
    names that file and the workflow key that points to it."""
    _keyed(lambda: select_data(workflow, file), "data.path", file)
    if workflow.data.fluency_path:
        _keyed(lambda: load_records("pubmedqa", data_path(workflow, workflow.data.fluency_path)),
               "data.fluency_path", file)
    if workflow.model.check_path:
        _keyed(lambda: check_model_package(workflow.model), "model.path", file)
    if workflow.concepts is not None and workflow.concepts.enabled:
        _check_targets(workflow, file)


def _keyed(check, key: str, file: str | None, by_file: dict | None = None) -> None:
    """Run ``check``; an error that names no key gets ``key`` (or the key that chose the file it
    names, from ``by_file``), and one that names no file gets the workflow file."""
    try:
        check()
    except WorkflowError as exc:
        key = exc.key or (by_file or {}).get(exc.file, key)
        raise WorkflowError(exc.message, file=exc.file or file, key=key, expected=exc.expected) from None


def _check_targets(workflow: Workflow, file: str | None) -> None:
    c = workflow.concepts
    by_file = {}  # a hierarchy input named in an error -> the workflow key that chose it
    for key, given in (("concepts.levels_file", c.levels_file), ("concepts.synonyms_file", c.synonyms_file)):
        if given and not Path(given).is_file():
            raise WorkflowError(f"{given!r} not found", file=file, key=key,
                                expected="a YAML file; a relative path is read from the working directory")
        by_file[str(Path(given)) if given else None] = key
    mesh = data_path(workflow, "mesh/2017MeshTree.txt")  # where the annotate stage reads it
    by_file[str(mesh)] = "data_root"
    targets = ConceptSpec.from_config(c).expanded_targets()
    _keyed(lambda: check_targets(targets, "concepts.targets", mesh, c.levels_file, c.synonyms_file),
           "concepts", file, by_file)


def check_workflow(workflow: Workflow, file: str | None) -> None:
    """The cross-section checks of a parsed workflow."""
    try:
        _check_methods(workflow, file)
        _check_concepts(workflow)
        _check_thresholds(workflow, file)
        if workflow.sweep is not None:
            _check_sweep_space(workflow, file)
            _check_shared_bundles(workflow, file)
        if workflow.compare is not None:
            _check_compare(workflow, file)
    except WorkflowError as exc:
        if exc.file is None and file is not None:  # stage-level code does not know the file
            raise WorkflowError(exc.message, file=file, key=exc.key, expected=exc.expected) from None
        raise


def _method_specs(workflow: Workflow) -> Iterator[tuple[dict, str]]:
    yield from ((spec, f"unlearn.methods[{i}]") for i, spec in enumerate(workflow.unlearn.methods))
    if workflow.sweep is not None:
        yield workflow.sweep.method, "sweep.method"
    if workflow.compare is not None:
        yield from ((tm.method, f"compare.methods[{i}].method") for i, tm in enumerate(workflow.compare.methods))


def _preserve_levels(workflow: Workflow) -> list[int]:
    return list(workflow.concepts.preserve_levels if workflow.concepts else DEFAULT_PRESERVE_LEVELS)


def _check_methods(workflow: Workflow, file: str | None) -> None:
    for spec, where in _method_specs(workflow):
        if not isinstance(spec.get("name"), str):  # the registry lookup needs a string ([] is unhashable)
            raise WorkflowError(f"got {spec.get('name')!r}", file=file, key=f"{where}.name",
                                expected=f"a method name: one of {', '.join(sorted(METHODS))}")
    validate_method_specs(workflow.unlearn, file)
    for spec, where in _method_specs(workflow):
        params = parse_method(spec, where, file)
        check_name(params.display, f"{where}.label", file)  # it names the run's model directory
        if getattr(params, "weights", None) is not None:  # a run's own concept weights
            weight_table(params.weights, _preserve_levels(workflow), key=f"{where}.weights")
        if resolved(params, workflow.unlearn)["budget"] == "lora":
            _check_lora(workflow, params, where, file)
        rank = getattr(params, "rank", None)
        if rank is not None and rank > workflow.unlearn.projection.rank:
            raise WorkflowError(f"rank {rank} is above unlearn.projection.rank = {workflow.unlearn.projection.rank}, "
                                "the rank the shared basis is built at", file=file, key=f"{where}.rank",
                                expected=f"at most {workflow.unlearn.projection.rank}, or a larger "
                                         "unlearn.projection.rank")


def _check_lora(workflow: Workflow, params, where: str, file: str | None) -> None:
    """``budget: lora`` needs DeepSpeed below ZeRO-3 and, for a tiny model (whose shape the config
    fixes), room in the budget for at least one adapter."""
    u = workflow.unlearn
    if u.engine == "deepspeed" and u.zero_stage == 3:
        raise WorkflowError("budget 'lora' does not run under DeepSpeed ZeRO-3 (the adapters would be "
                            f"partitioned; used by {where})", file=file, key="unlearn.zero_stage",
                            expected="0, 1 or 2, or unlearn.engine: torch")
    if workflow.model.kind != "tiny":
        return  # the shape is known once the model is loaded; the prepare stage checks it then
    if where == "sweep.method" and "param_budget" in workflow.sweep.space:
        return  # the sampled budgets are checked when the sweep prepares them
    settings = resolved(params, u)
    budget_key = f"{where}.param_budget" if params.param_budget is not None else "unlearn.param_budget"
    shapes, n_upper = tiny_linear_shapes(workflow.model.tiny)
    shapes = {n: s for n, s in shapes.items() if is_candidate(n, u.lora_targets, settings["budget_exclude"])}
    check_one_fits(shapes, u.lora_rank, settings["param_budget"], n_upper, key=budget_key, bound=True, file=file)


def _check_concepts(workflow: Workflow) -> None:
    if workflow.concepts is not None:
        ConceptSpec.from_config(workflow.concepts).expanded_targets()  # presets must exist


def _check_compare(workflow: Workflow, file: str | None) -> None:
    """Distinct labels; every method's space valid for that method (as a sweep's); every ablation
    starts from a tuned method and changes keys that method has."""
    labels = []
    for i, tm in enumerate(workflow.compare.methods):
        label = parse_method(tm.method, f"compare.methods[{i}].method", file).display
        if label in labels:
            raise WorkflowError(f"two methods are called {label!r}", file=file,
                                key=f"compare.methods[{i}].method.label", expected="a distinct label")
        labels.append(label)
        sweep = SweepConfig(method=tm.method, space=tm.space)
        _check_space(workflow, sweep, f"compare.methods[{i}].space", file)
        _check_shared_bundles(dataclasses.replace(workflow, sweep=sweep), file, f"compare.methods[{i}].space")
    for i, ab in enumerate(workflow.compare.ablations):
        where = f"compare.ablations[{i}]"
        if ab.of not in labels:
            raise WorkflowError(f"no tuned method {ab.of!r}", file=file, key=f"{where}.of",
                                expected=f"one of {', '.join(labels)}")
        if ab.label in labels:
            raise WorkflowError(f"{ab.label!r} is already a method's label", file=file, key=f"{where}.label",
                                expected="a distinct label")
        base = workflow.compare.methods[labels.index(ab.of)].method
        parse_method({**base, **ab.set, "label": ab.label}, f"{where}.set", file)
        labels.append(ab.label)


def _check_sweep_space(workflow: Workflow, file: str | None) -> None:
    _check_space(workflow, workflow.sweep, "sweep.space", file)


def _check_space(workflow: Workflow, sweep: SweepConfig, prefix: str, file: str | None) -> None:
    params_cls = METHODS[sweep.method["name"]].params  # the spec parsed in _check_methods
    for key, dim in sweep.space.items():
        where = f"{prefix}.{key}"
        if key == RANK_KEY:
            base = to_dict(workflow.unlearn.projection)
            _check_dim(dim, where, file, _field_type(ProjectionConfig, "rank"),
                       lambda v: build(ProjectionConfig, {**base, "rank": v}, key="unlearn.projection"))
        elif key.startswith(WEIGHTS_PREFIX):
            _check_weight_key(key, params_cls, sweep.method["name"], where, file)
            _check_dim(dim, where, file, float, lambda v: check_weight(v, where))
        elif key in _sweepable(params_cls):
            _check_dim(dim, where, file, _field_type(params_cls, key),
                       lambda v, k=key: build(params_cls, {**sweep.method, k: v}, key="sweep.method"))
        else:
            raise WorkflowError("unknown search key", file=file, key=where,
                                expected=f"a parameter of method {sweep.method['name']!r} "
                                         f"({', '.join(_sweepable(params_cls))}), {RANK_KEY}, or "
                                         "weights.<label>[.<level>] for a method with weights")


def _check_thresholds(workflow: Workflow, file: str | None) -> None:
    """Every threshold names a metric of the directions table, with a bound it can be read by
    (a distance to the target for target-valued metrics): no name is silently "not measured"."""
    for name, bound in workflow.evaluate.thresholds.items():
        key = f"evaluate.thresholds.{name}"
        if not directions.known(name):
            raise WorkflowError("unknown metric", file=file, key=key,
                                expected=f"one of {', '.join(sorted(directions.METRICS))}")
        metric = directions.direction(name)
        if metric.kind == "target" and bound < 0:  # (config has made every bound a finite number)
            raise WorkflowError(f"got {bound!r}", file=file, key=key, expected=f"a distance to {metric.target:g}, "
                                f"the best value of {name}: a number >= 0")


def _check_shared_bundles(workflow: Workflow, file: str | None, prefix: str = "sweep.space") -> None:
    """With the shared cache the driver builds one bundle per combination of the keys that change
    it, before any trial runs: those keys must be choices (a range has no finite combinations)."""
    from hdsu_ray.sweep.space import BUNDLE_KEYS

    if workflow.sweep.cache != "shared":
        return
    for key in BUNDLE_KEYS:
        dim = workflow.sweep.space.get(key)
        if dim is not None and dim.type != "choice":
            raise WorkflowError(f"a {dim.type} range over {key}, which changes the shared mask, basis or "
                                "reference tensors", file=file, key=f"{prefix}.{key}.type",
                                expected="type: choice (one shared bundle per value), or sweep.cache: per_trial")


def _sweepable(params_cls: type) -> list[str]:
    # name picks the method and label is set per trial; weights is searched by weights.* keys.
    return [f.name for f in dataclasses.fields(params_cls) if f.name not in ("name", "label", "weights")]


def _field_type(cls: type, name: str) -> Any:
    """The type of a dataclass field without its ``None`` (an optional override)."""
    tp = get_type_hints(cls)[name]
    inner = [a for a in get_args(tp) if a is not type(None)]
    return inner[0] if type(None) in get_args(tp) and len(inner) == 1 else tp


def _check_weight_key(key: str, params_cls: type, method: str, where: str, file: str | None) -> None:
    if "weights" not in {f.name for f in dataclasses.fields(params_cls)}:
        raise WorkflowError(f"method {method!r} has no concept weights", file=file, key=where,
                            expected="a method with weights (hdsu), or a key among its parameters")
    parts = key.split(".")[1:]
    if parts[0] not in LABELS or len(parts) > 2 or (len(parts) == 2 and parts[0] == "neutral"):
        raise WorkflowError("unknown weight key", file=file, key=where,
                            expected="weights.targeted, weights.preserve or weights.neutral, or "
                                     "weights.targeted.<level> / weights.preserve.<level>")
    if len(parts) == 2:
        check_level(parts[1], where)


def _check_dim(dim: SearchDim, where: str, file: str | None, field_type: Any, check) -> None:
    """Every value ``dim`` can sample must pass ``check`` (which builds the target with it)."""
    numeric = field_type in (int, float)
    if dim.type != "choice" and not numeric:
        raise WorkflowError(f"a {dim.type} range for a non-numeric parameter", file=file, key=f"{where}.type",
                            expected="type: choice")
    if dim.type == "float" and field_type is int:
        raise WorkflowError("a float range samples fractions for an integer parameter", file=file,
                            key=f"{where}.type", expected="type: int or choice")
    for point, value in _sample_points(dim, where, file):
        try:
            check(value)
        except WorkflowError as exc:
            raise WorkflowError(f"got {value!r}", file=file, key=point, expected=exc.expected) from None


def _sample_points(dim: SearchDim, where: str, file: str | None) -> list[tuple[str, Any]]:
    """``(key path, value)`` for each value to check: the choices, or a range's two ends."""
    if dim.type == "choice":
        return [(f"{where}.values[{i}]", v) for i, v in enumerate(dim.values)]
    ends = [(f"{where}.low", dim.low), (f"{where}.high", dim.high)]
    if dim.type == "int":  # Tune samples int(low) .. int(high): a fraction would be dropped silently
        for point, value in ends:
            if not float(value).is_integer():
                raise WorkflowError(f"got {value!r}", file=file, key=point, expected="a whole number (type int)")
        return [(point, int(value)) for point, value in ends]
    return ends
