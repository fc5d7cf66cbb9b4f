"""``hdsu-ray``: run, validate and plan workflows.

Heavy libraries (ray, torch, pyarrow) are imported only by the commands that need them: ``validate``
and ``plan`` load a workflow through :func:`hdsu_ray.checks.load_workflow`, which imports none of
them, and answer in well under two seconds (``bench/bench_validate.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hdsu_ray.errors import EXIT_BAD_INPUT, WorkflowError


def _parser() -> argparse.ArgumentParser:
    from hdsu_ray import __version__

    p = argparse.ArgumentParser(prog="hdsu-ray", description="Hierarchical dual-strategy unlearning on Ray.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    overrides = dict(nargs="*", metavar="key=value", help="override any key, e.g. unlearn.lr=1e-5")
    run = sub.add_parser("run", help="run a workflow (local Ray, or the cluster in RAY_ADDRESS)")
    run.add_argument("workflow", help="workflow YAML file, e.g. workflows/mhqa.yaml")
    run.add_argument("overrides", **overrides)
    run.add_argument("--output-dir", help="results directory (default: the workflow's output_dir)")
    val = sub.add_parser("validate", help="check workflow files without running them (each file: "
                                          "'ok' or its error; exit 2 if any is bad)")
    val.add_argument("workflows", nargs="+", metavar="workflow", help="workflow YAML files to check")
    plan = sub.add_parser("plan", help="print the stages a workflow would run")
    plan.add_argument("workflow", help="workflow YAML file")
    plan.add_argument("overrides", **overrides)
    plan.add_argument("--keys", action="store_true", help="also list every key with its help")
    rep = sub.add_parser("report", help="rebuild the report of a finished sweep or comparison run")
    rep.add_argument("run_dir", help="output directory of a finished run (holds sweep.json or results.json)")
    return p


def plan_lines(workflow) -> list[str]:
    from hdsu_ray.methods import parse_method, resolved

    lines = [f"workflow {workflow.name}: data {workflow.data.source} ({workflow.data.path}), "
             f"model {workflow.model.kind}, {workflow.cluster.num_workers} worker(s)",
             "1. select   forget/retain/holdout rows",
             f"2. learn    {workflow.learn.epochs} epochs (cached: {workflow.learn.cache})"]
    n = 3
    if getattr(workflow, "concepts", None) is not None and workflow.concepts.enabled:
        lines.append(f"{n}. annotate concept labels with Ray Data (targets {workflow.concepts.targets})")
        n += 1
    lines.append(f"{n}. evaluate before unlearning")
    n += 1
    if workflow.sweep is not None:
        sw = workflow.sweep
        lines.append(f"{n}. sweep    {sw.num_samples} trials of {sw.method.get('name')} ({sw.searcher}, "
                     f"{sw.max_concurrent} at once) over {', '.join(sw.space)}; cache: {sw.cache}")
        lines.append(f"{n + 1}. write    {workflow.output_dir}/sweep.json and report.html")
        return lines
    if workflow.compare is not None:
        cmp = workflow.compare
        labels = [parse_method(tm.method, "compare", None).display for tm in cmp.methods]
        lines.append(f"{n}. tune     {len(labels)} methods alike, {cmp.trials} trials each ({cmp.searcher}): "
                     f"{', '.join(labels)}; steps up to {workflow.unlearn.steps}, {workflow.evaluate.candidates} "
                     f"candidate checkpoints, {workflow.evaluate.select} on forget + retain_val")
        lines.append(f"{n + 1}. freeze   the best settings into {workflow.output_dir}/frozen.yaml; ablations: "
                     f"{', '.join(a.label for a in cmp.ablations) or 'none'}")
        lines.append(f"{n + 2}. unlearn  every frozen method with seeds {list(cmp.seeds)}, reported on retain_test")
        lines.append(f"{n + 3}. write    {workflow.output_dir}/results.json")
        return lines
    for i, spec in enumerate(workflow.unlearn.methods):
        s = resolved(parse_method(spec, f"unlearn.methods[{i}]", None), workflow.unlearn)
        lines.append(f"{n}. unlearn  {s['label']}: {s['steps']} steps, lr {s['lr']}, budget {s['budget']} "
                     f"{s['param_budget']}; then evaluate")
        n += 1
    lines.append(f"{n}. write    {workflow.output_dir}/results.json")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after options (run W --output-dir D k=v): collect leftovers.
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad or (extra and args.command not in ("run", "plan")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.command == "validate":
        return _validate(args.workflows)
    try:
        if args.command == "report":
            return _report(Path(args.run_dir))
        from hdsu_ray.checks import load_workflow

        workflow = load_workflow(args.workflow, args.overrides)
        if args.command == "plan":
            print("\n".join(plan_lines(workflow)))
            if args.keys:
                from hdsu_ray.config.fields import field_help
                from hdsu_ray.config.schema import Workflow
                for key, tp, default, help_ in field_help(Workflow):
                    print(f"  {key:<36} {tp:<28} default {default}: {help_}")
            return 0
        from hdsu_ray.pipeline import run_workflow
        output = Path(args.output_dir or workflow.output_dir)
        run_workflow(workflow, output, file=args.workflow)
        return 0
    except WorkflowError as exc:
        # A key path is a key of this workflow, wherever the error was raised (e.g. a LoRA budget
        # found too small once the model is loaded): name the file too.
        if exc.key and not exc.file and getattr(args, "workflow", None):
            exc.file = str(args.workflow)
        _print_error(exc)
        return EXIT_BAD_INPUT


def _print_error(exc: WorkflowError) -> None:
    print(f"hdsu-ray: error: {exc.render()}", file=sys.stderr)


def _validate(paths: list[str]) -> int:
    """Check every file, not only up to the first bad one: ``<file>: ok`` or its one-line error."""
    from hdsu_ray.checks import load_workflow

    bad = 0
    for path in paths:
        try:
            load_workflow(path)
        except WorkflowError as exc:
            exc.file = exc.file or str(path)  # a key error raised below the loader still names its file
            _print_error(exc)
            bad += 1
        else:
            print(f"{path}: ok", flush=True)
    return EXIT_BAD_INPUT if bad else 0


def _report(run_dir: Path) -> int:
    if (run_dir / "sweep.json").is_file():
        from hdsu_ray.report import write_sweep_report
        for name, path in write_sweep_report(run_dir).items():
            print(f"{name}: {path}")
        return 0
    if (run_dir / "results.json").is_file():
        import json

        from hdsu_ray.report import write_comparison
        results = json.loads((run_dir / "results.json").read_text())
        thresholds = results.get("config", {}).get("evaluate", {}).get("thresholds")
        for name, path in write_comparison(results, run_dir, thresholds).items():
            print(f"{name}: {path}")
        return 0
    raise WorkflowError("no sweep.json or results.json here", file=str(run_dir),
                        expected="the output directory of a finished run")


if __name__ == "__main__":
    sys.exit(main())
