"""How degenerate is the Fisher ratio F_forget / (F_retain + eps)? Per-tensor statistics of the
diagonal empirical Fisher on the learned model of a workflow (run the workflow once first).

    python bench/fisher_stats.py workflows/mhqa.yaml [--samples 32]

Prints, per parameter tensor, the mean forget and retain Fisher and the share of entries whose
retain Fisher is below 1e-8 (the absolute eps the budget once used; docs/method.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hdsu_ray.checks import load_workflow  # noqa: E402
from hdsu_ray.data.encode import encode_texts  # noqa: E402
from hdsu_ray.data.select import select_data  # noqa: E402
from hdsu_ray.data.text import qa_text  # noqa: E402
from hdsu_ray.models.build import load_model_dir  # noqa: E402
from hdsu_ray.stages.learn import learned_key  # noqa: E402
from hdsu_ray.train.prepare import _nll_grads  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workflow")
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    wf = load_workflow(args.workflow)
    data = select_data(wf)
    model, tok = load_model_dir(Path(wf.cache_dir) / "learned" / learned_key(wf, data))
    rng = np.random.default_rng(0)
    fishers = []
    for records in (data.forget, data.retain):
        prompts, answers = zip(*map(qa_text, records))
        arrays = encode_texts(tok, list(prompts), list(answers), wf.model.tiny.max_len)
        acc: dict[str, torch.Tensor] = {}
        rows = rng.permutation(len(records))[: args.samples]
        for r in rows:
            for n, g in _nll_grads(model, arrays, np.array([r])).items():
                acc[n] = acc.get(n, 0) + g.double() ** 2
        fishers.append({n: v / len(rows) for n, v in acc.items()})
    print(f"{'tensor':48s} {'F_forget mean':>14s} {'F_retain mean':>14s} {'share F_retain<1e-8':>20s}")
    for n in fishers[0]:
        f, r = fishers[0][n], fishers[1][n]
        print(f"{n:48s} {f.mean():14.2e} {r.mean():14.2e} {(r < 1e-8).double().mean():20.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
