"""``audit.json``: what a deletion request's auditor needs to recompute and trust a run.

It names the data by SHA-256 of the selected rows' ids and answers, never by their text, and
records every metric next to the workflow's threshold for it.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from hdsu_ray import __version__
from hdsu_ray.config.fields import to_dict
from hdsu_ray.store import digest, write_json_atomic


def config_hash(workflow) -> str:
    return digest(to_dict(workflow))


def git_commit() -> str | None:
    """The commit of the installed source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_audit(workflow, data, results: dict[str, Any], output_dir: Path) -> Path:
    u = workflow.unlearn
    record = {
        "request_id": workflow.request_id or str(uuid.uuid4()),
        "workflow": workflow.name,
        "splits": data.splits(),
        "data": {"source": workflow.data.source, "file": workflow.data.path,
                 "forget_sha256": data.digest("forget"), "retain_sha256": data.digest("retain"),
                 "holdout_sha256": data.digest("holdout") if data.holdout else None,
                 "forget_rows": len(data.forget), "retain_rows": len(data.retain)},
        "config_sha256": config_hash(workflow),
        "package": {"name": "hdsu-ray", "version": __version__, "git_commit": git_commit()},
        "seeds": results.get("seeds"),
        "world_size": workflow.cluster.num_workers,
        "engine": u.engine, "zero_stage": u.zero_stage if u.engine == "deepspeed" else None,
        "parameter_budget": {"mode": u.budget, "fraction": u.param_budget},
        "methods": {},
    }
    for label, run in results["methods"].items():
        record["methods"][label] = {
            "settings": {k: v for k, v in run["settings"].items() if k != "label"},
            "param_fraction_changed": run["param_fraction"],
            "metrics": run.get("metrics", {}), "thresholds": run.get("thresholds", {}),
            "passed": (all(t["pass"] for t in run.get("thresholds", {}).values())
                       if run.get("thresholds") else None),
            # attacks the unlearned model must survive: a flagged method's forgetting did not
            "robustness": run.get("robustness_flags"),
            "over_forgetting": (run.get("metrics") or {}).get("over_forgetting"),
            "protocol": run.get("protocol"),
        }
    path = output_dir / "audit.json"
    write_json_atomic(path, record)
    return path
