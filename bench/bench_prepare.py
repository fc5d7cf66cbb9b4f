"""The prepare stage, one backward pass per sample vs batched (``unlearn.per_sample_chunk``),
against one learning epoch over the same rows (issue target: prepare <= 1.5x an epoch).

    python bench/bench_prepare.py [workflow] [--chunk 16] [--threads 2] [key=value ...]

Uses the workflow's cached learned model (run the workflow once first) and its unlearn arrays
(forget rows and retain_train rows). Times, in one process without Ray, what the stage computes
for the workflow's ``hdsu`` run: the Fisher-ratio mask at its budget from every forget and
retain_train row (``fisher_samples`` 1024 takes them all), the retain basis over that mask
(``basis_samples`` micro-batches) and the reference tensors of the learned model (top-K anchor,
no RMU activations; batched, as in the stage, they come from the forget Fisher's forward passes);
then two AdamW epochs of the learn stage's loss over the same rows in batches of
``learn.batch_size``, each from the learned weights, the faster being the yardstick. Writes
bench/out/prepare.json (tiny model) or bench/out/prepare_real.json (a pretrained model, e.g.
workflows/mhqa_smollm2.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def learn_epoch(model, arrays: list[dict], batch: int) -> float:
    from hdsu_ray.core.losses import token_logprobs, weighted_nll

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for a in arrays:
        for i in range(0, len(a["input_ids"]), batch):
            rows = np.arange(i, min(i + batch, len(a["input_ids"])))
            width = int(a["attention_mask"][rows].sum(axis=1).max())
            b = {k: torch.as_tensor(a[k][rows][:, :width]) for k in ("input_ids", "attention_mask", "labels")}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            logp, mask = token_logprobs(logits, b["labels"][:, 1:])
            opt.zero_grad(set_to_none=True)
            weighted_nll(logp, mask.float()).backward()
            opt.step()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflow", nargs="?", default="workflows/mhqa.yaml", help="the workflow whose learned model is timed")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. cache_dir=... of the run that learned")
    args = ap.parse_intermixed_args()  # overrides may follow --chunk
    import ray

    from hdsu_ray.checks import load_workflow
    from hdsu_ray.data.select import select_data
    from hdsu_ray.models.build import load_model_dir
    from hdsu_ray.stages.learn import learned_key
    from hdsu_ray.stages.tensors import unlearn_arrays
    from hdsu_ray.train.prepare import (ForgetReference, basis_from_gradients, fisher_masks, reference_tensors,
                                       retain_gradient_matrix)

    torch.set_num_threads(args.threads)
    wf = load_workflow(args.workflow, args.overrides)
    data = select_data(wf)
    learned = Path(wf.cache_dir) / "learned" / learned_key(wf, data)
    if not learned.is_dir():
        print(f"{args.workflow}: no learned model in {wf.cache_dir}; run `hdsu-ray run {args.workflow}` first",
              file=sys.stderr)
        return 2
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the annotation's Ray Data job
    arrays = unlearn_arrays(wf, data, learned, REPO / "bench" / "out" / "prepare_run")
    f, r = arrays["forget"], arrays["retain"]
    model, _ = load_model_dir(learned)
    n = len(f["input_ids"]) + len(r["input_ids"])
    u, pr = wf.unlearn, wf.unlearn.projection
    out = {"workflow": args.workflow, "model": wf.model.kind, "params": sum(p.numel() for p in model.parameters()),
           "rows": n, "threads": args.threads, "chunk": args.chunk, "budget": u.param_budget}
    for name, chunk in (("loop", 0), ("batched", args.chunk)):
        fill = ForgetReference(f, u.anchor_topk)  # filled by the batched Fisher's passes, as in the stage
        start = time.perf_counter()
        masks = fisher_masks(model, f, r, fraction=u.param_budget, samples=1024, eps=u.fisher_eps, seed=0,
                             exclude=tuple(u.budget_exclude), row_cap=u.row_cap, chunk=chunk, on_forget_logits=fill)
        fisher = time.perf_counter() - start
        start = time.perf_counter()
        G = retain_gradient_matrix(model, r, masks, samples=pr.basis_samples, batch=pr.basis_batch, seed=0, chunk=chunk)
        basis_from_gradients(G, rank=min(pr.rank, len(G)), method=pr.method, energy=pr.energy, seed=0)
        basis = time.perf_counter() - start
        start = time.perf_counter()
        if fill.result() is None:  # the one-row-at-a-time Fisher does not fill it
            reference_tensors(model, f, r, topk=u.anchor_topk, hidden_layer=None)
        out[name] = {"fisher_s": round(fisher, 2), "basis_s": round(basis, 2),
                     "reference_s": round(time.perf_counter() - start, 2)}
    # the faster of two epochs, each from the learned weights: one epoch's time varies between runs here,
    # and the faster one is the stricter yardstick for the prepare stage
    epochs = [learn_epoch(load_model_dir(learned)[0], [f, r], wf.learn.batch_size) for _ in range(2)]
    out["learn_epoch_s"] = round(min(epochs), 2)
    out["learn_epochs_s"] = [round(e, 2) for e in epochs]
    for name in ("loop", "batched"):
        out[name]["total_s"] = round(sum(out[name].values()), 2)
        out[name]["vs_epoch"] = round(out[name]["total_s"] / out["learn_epoch_s"], 2)
    print(json.dumps(out, indent=2))
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    name = "prepare.json" if wf.model.kind == "tiny" else "prepare_real.json"
    (REPO / "bench" / "out" / name).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
