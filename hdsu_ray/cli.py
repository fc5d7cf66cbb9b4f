"""``hdsu-ray``: run, validate and plan workflows.

Heavy libraries (ray, torch) are imported only by the commands that need them, so ``validate``
answers in about a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hdsu_ray.errors import EXIT_BAD_INPUT, WorkflowError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hdsu-ray", description="Hierarchical dual-strategy unlearning on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow (local Ray, or the cluster in RAY_ADDRESS)")
    run.add_argument("workflow")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override any key, e.g. unlearn.lr=1e-5")
    run.add_argument("--output-dir", help="results directory (default: the workflow's output_dir)")
    val = sub.add_parser("validate", help="check workflow files without running them")
    val.add_argument("workflows", nargs="+")
    plan = sub.add_parser("plan", help="print the stages a workflow would run")
    plan.add_argument("workflow")
    plan.add_argument("overrides", nargs="*", metavar="key=value")
    plan.add_argument("--keys", action="store_true", help="also list every key with its help")
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
    for i, spec in enumerate(workflow.unlearn.methods):
        s = resolved(parse_method(spec, f"unlearn.methods[{i}]", None), workflow.unlearn)
        lines.append(f"{n}. unlearn  {s['label']}: {s['steps']} steps, lr {s['lr']}, budget {s['budget']} "
                     f"{s['param_budget']}; then evaluate")
        n += 1
    lines.append(f"{n}. write    {workflow.output_dir}/results.json")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hdsu_ray.config.loader import load_workflow

    try:
        if args.command == "validate":
            for path in args.workflows:
                load_workflow(path)
                print(f"{path}: ok")
            return 0
        workflow = load_workflow(args.workflow, args.overrides)
        if args.command == "plan":
            print("\n".join(plan_lines(workflow)))
            if args.keys:
                from hdsu_ray.config.fields import field_help
                from hdsu_ray.config.schema import Workflow
                for key, tp, help_ in field_help(Workflow):
                    print(f"  {key:<36} {tp:<28} {help_}")
            return 0
        from hdsu_ray.pipeline import run_workflow
        output = Path(args.output_dir or workflow.output_dir)
        run_workflow(workflow, output)
        return 0
    except WorkflowError as exc:
        print(f"hdsu-ray: error: {exc.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
