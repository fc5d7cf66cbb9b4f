"""Evaluation throughput: the evaluate stage's option scoring against a plain batched forward of the
same (question, option) pairs (issue target: >= 0.8x the plain forward's options per second).

    python bench/bench_eval.py [--workflow workflows/mhqa_smollm2.yaml] [--records 64] [--repeats 3]

The model is the workflow's pretrained base (weights do not change the cost), the records its forget
and retain_test rows. "Ours" is ``hdsu_ray.eval.mcq.option_scores`` as the evaluate stage calls it
(``evaluate.batch_size`` sequences per pass, prompts shared between a question's options). "Plain"
encodes every pair on its own (``encode_options``) and runs ``model(...).logits`` over them in the
same batch size, then the same mean answer log-likelihood; both score every option identically (the
script checks it) and the best of ``--repeats`` timings of each is kept. "Packed forward" times only
the model calls of ours (``packed_option_sums`` over the same batches, prompts already split), so
``packed_forward_s / ours_s`` is the share of our time spent in the model: the rest is tokenizing
and bookkeeping. Writes bench/out/eval.json (tiny) or bench/out/eval_real.json (pretrained).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_scores(model, enc: dict[str, np.ndarray], n_opt: int, batch: int) -> np.ndarray:
    """Mean answer-token log-likelihood of every pair, one full forward per pair (full logits)."""
    from hdsu_ray.core.losses import token_logprobs

    out = []
    with torch.no_grad():
        for i in range(0, len(enc["input_ids"]), batch):
            sl = slice(i, i + batch)
            width = int(enc["attention_mask"][sl].sum(axis=1).max())
            ids, att = (torch.as_tensor(enc[k][sl][:, :width]) for k in ("input_ids", "attention_mask"))
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
            logp, mask = token_logprobs(logits, torch.as_tensor(enc["labels"][sl][:, 1:width]))
            out.append(((logp * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
    return np.concatenate(out).reshape(-1, n_opt)


def packed_forward(model, tok, records, max_len: int, batch: int) -> tuple[float, int]:
    """Only the packed model calls of ``option_scores`` (same split and batches, no tokenizing)."""
    from hdsu_ray.eval.mcq import packed_batches, packed_option_sums, shared_prompt_split

    splits = [shared_prompt_split(tok, r, max_len) for r in records]
    batches = packed_batches(splits, max(len(r.options) for r in records), batch)
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in batches:
            packed_option_sums(model, [splits[i] for i in chunk], tok.pad_token_id)
    return time.perf_counter() - start, sum(map(len, batches))


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default="workflows/mhqa_smollm2.yaml")
    ap.add_argument("--records", type=int, default=64, help="questions scored (forget rows first)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import tempfile

    from hdsu_ray.checks import load_workflow
    from hdsu_ray.data.select import select_data
    from hdsu_ray.eval.mcq import encode_options, option_scores
    from hdsu_ray.models.build import build_base_model, load_model_dir
    from hdsu_ray.stages.learn import corpus_texts

    torch.set_num_threads(args.threads)
    wf = load_workflow(REPO / args.workflow)
    data = select_data(wf)
    with tempfile.TemporaryDirectory() as tmp:  # the saved copy is only a way to load it
        model, tok = load_model_dir(build_base_model(wf.model, corpus_texts(data), wf.seed, Path(tmp)))
    model.eval()
    records = (list(data.forget) + list(data.retain_test))[:args.records]
    n_opt = max(len(r.options) for r in records)
    options = sum(len(r.options) for r in records)
    max_len, batch = wf.model.tiny.max_len, wf.evaluate.batch_size
    ours_s, ours = best_of(lambda: option_scores(model, tok, records, max_len=max_len, batch_size=batch),
                           args.repeats)
    enc = encode_options(tok, records, max_len)
    plain_s, plain = best_of(lambda: plain_scores(model, enc, n_opt, batch), args.repeats)
    forward = [packed_forward(model, tok, records, max_len, batch) for _ in range(args.repeats)]
    packed_s, packed_records = min(t for t, _ in forward), forward[0][1]
    valid = np.isfinite(ours)
    worst = float(np.abs(ours[valid] - plain[valid]).max())
    if worst > 1e-3:
        print(f"option scores differ from the plain forward's by {worst:.2e}", file=sys.stderr)
        return 1
    tokens = int(enc["attention_mask"].sum())
    out = {"workflow": args.workflow, "model": wf.model.kind, "params": sum(p.numel() for p in model.parameters()),
           "records": len(records), "options": options, "pair_tokens": tokens, "batch_size": batch,
           "threads": args.threads, "repeats": args.repeats, "max_abs_score_difference": worst,
           "ours_s": round(ours_s, 3), "plain_s": round(plain_s, 3),
           "ours_options_per_s": round(options / ours_s, 2), "plain_options_per_s": round(options / plain_s, 2),
           "ratio": round(plain_s / ours_s, 3), "target": 0.8, "packed_records": packed_records,
           "packed_forward_s": round(packed_s, 3), "share_in_forward": round(packed_s / ours_s, 3),
           "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}
    print(json.dumps(out, indent=2))
    name = "eval.json" if wf.model.kind == "tiny" else "eval_real.json"
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "out" / name).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
