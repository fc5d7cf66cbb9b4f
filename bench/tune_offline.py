"""Offline tuning harness: the unlearn loop's own step (hdsu_ray.train.unlearn_run.UnlearnRun) in
one process without Ray, on the cached learned model of a workflow, with evaluation at chosen steps.

    python bench/tune_offline.py workflows/mhqa.yaml '[{"name": "hdsu", "forget_loss": "ga", "lr": 0.03,
        "_metric": "adam", "_eval": [10, 20, 30]}, {"name": "graddiff", "lr": 0.03}]' unlearn.steps=30

Each spec is a method mapping plus optional `_eval` (steps to evaluate), `_metric` ("adam" for the
Adam-metric projection), `_rank` and `_diag` (print how the budget covers the forget answers). The
learned model must exist (run the workflow once). It evaluates on the sets the workflow selects:
a study of settings, not a source of reported numbers (those come from bench/experiments.py,
whose selection never reads reported rows).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hdsu_ray.checks import load_workflow  # noqa: E402
from hdsu_ray.data.select import select_data  # noqa: E402
from hdsu_ray.eval.mcq import mcq_correct  # noqa: E402
from hdsu_ray.models.build import load_model_dir  # noqa: E402
from hdsu_ray.stages.artefacts import SharedArtefacts  # noqa: E402
from hdsu_ray.stages.learn import learned_key  # noqa: E402
from hdsu_ray.stages.tensors import unlearn_arrays  # noqa: E402
from hdsu_ray.stages.unlearn import unlearn_job  # noqa: E402
from hdsu_ray.train.unlearn_run import UnlearnRun  # noqa: E402


class LocalBundles:
    """The bundle as a plain dict (no object store): what UnlearnRun reads from ``ray.get``."""

    def __init__(self, shared: SharedArtefacts):
        self.shared, self.learned_dir = shared, shared.learned_dir

    def bundle(self, params, settings):
        import ray

        return ray.get(self.shared.bundle(params, settings))


def _coverage(run: UnlearnRun, right: np.ndarray) -> str:
    """Selected embedding entries on each forget answer's tokens, for the questions still right."""
    per_row = run.adapter.mask_t["model.embed_tokens.weight"].sum(1).numpy()
    fa = run.forget
    cov = np.array([per_row[fa["input_ids"][i][np.asarray(fa["labels"][i]) != -100]].sum() for i in range(len(right))])
    return (f"  embedding rows with entries {int((per_row > 0).sum())}, most in one row {int(per_row.max())}; "
            f"still right: {int(right.sum())}, of them with no entry on their answer tokens {int((cov[right] == 0).sum())}")


def main() -> int:
    import ray

    torch.set_num_threads(2)
    wf = load_workflow(sys.argv[1], sys.argv[3:])
    data = select_data(wf)
    learned = Path(wf.cache_dir) / "learned" / learned_key(wf, data)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    shared = SharedArtefacts(wf, learned, unlearn_arrays(wf, data, learned, REPO / "bench" / "out" / "tune_run"))
    _, tok = load_model_dir(learned)

    def acc(model, recs) -> np.ndarray:
        return mcq_correct(model, tok, recs, max_len=wf.model.tiny.max_len, batch_size=128).astype(bool)

    base_retain = float(acc(load_model_dir(learned)[0], data.retain).mean())
    for spec in json.loads(sys.argv[2]):
        t0 = time.time()
        method = {k: v for k, v in spec.items() if not k.startswith("_")}
        run_wf = replace(wf, unlearn=replace(wf.unlearn, projection=replace(
            wf.unlearn.projection, metric=spec.get("_metric", wf.unlearn.projection.metric))))
        job = unlearn_job(run_wf, method, LocalBundles(shared), rank=spec.get("_rank"))
        bundle = job.bundle
        run = UnlearnRun(replace(job, bundle=None, threads=2), bundle, 0, 1, "cpu")
        evals = spec.get("_eval", [run.steps])
        for step in range(run.steps):
            run.step(step)
            if step + 1 in evals:
                right = acc(run.adapter.model, data.forget)
                if spec.get("_diag") and bundle["masks"] is not None:
                    print(_coverage(run, right), flush=True)
                kp = float(acc(run.adapter.model, data.retain).mean()) / base_retain
                print(f"{json.dumps(spec)} step {step + 1}: FR {1 - right.mean():.3f} KP {kp:.3f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
