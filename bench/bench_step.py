"""Step time of one unlearning update: dual strategy vs GradDiff vs plain NLL, same model and batch.

    python bench/bench_step.py [--steps 20] [--threads 2]
    python bench/bench_step.py --workflow workflows/mhqa_smollm2.yaml --rows 8 --steps 3   # SmolLM2-135M

MFU is the step's FLOPs (torch.utils.flop_counter) per second over a float32 matmul peak measured
here with the same thread count. Each step is what the Ray Train worker does per step (forward passes, the method's loss terms,
flat budgeted gradients through the adapter, projection, optimizer step), without Ray around it.
The model is the workflow's: for the tiny Llama (hidden 256, 4 layers, vocab 4096) random weights
and a tokenizer trained on the rows; for a pretrained model (SmolLM2-135M) its own weights and
tokenizer. The batch is ``--rows`` forget and as many retain MHQA rows. Writes bench/out/step.json
(tiny) or bench/out/step_real.json (pretrained) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hdsu_ray.checks import load_workflow  # noqa: E402
from hdsu_ray.core.budget import top_fraction_masks  # noqa: E402
from hdsu_ray.core.losses import topk_reference, weighted_nll  # noqa: E402
from hdsu_ray.core.projection import retain_basis  # noqa: E402
from hdsu_ray.data.encode import encode_texts  # noqa: E402
from hdsu_ray.data.select import select_data  # noqa: E402
from hdsu_ray.data.text import qa_text  # noqa: E402
from hdsu_ray.methods import METHODS, parse_method  # noqa: E402
from hdsu_ray.methods.view import StepView  # noqa: E402
from hdsu_ray.models.build import train_tokenizer  # noqa: E402
from hdsu_ray.stages.learn import corpus_texts  # noqa: E402
from hdsu_ray.train.adapter import TorchAdapter, step_gradient  # noqa: E402


def build(threads: int, workflow: str, rows: int):
    torch.set_num_threads(threads)
    wf = load_workflow(REPO / workflow)
    data = select_data(wf)
    t = wf.model.tiny
    if wf.model.kind == "tiny":
        tok = train_tokenizer(corpus_texts(data), 4096)
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads, intermediate_size=t.intermediate_size,
            max_position_embeddings=t.max_len, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=True))
    else:  # the pretrained model as the learn stage starts from it
        import tempfile

        from hdsu_ray.models.build import build_base_model, load_model_dir
        with tempfile.TemporaryDirectory() as tmp:  # the saved copy is only a way to load it; not kept
            model, tok = load_model_dir(build_base_model(wf.model, [], wf.seed, Path(tmp)))

    def enc(records):
        p, a = zip(*map(qa_text, records[:rows]))
        e = encode_texts(tok, list(p), list(a), t.max_len)
        return {k: torch.as_tensor(v) for k, v in e.items() if v.ndim == 2}
    forget, retain = enc(data.forget), enc(data.retain)
    with torch.no_grad():
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits[:, :-1]
        from hdsu_ray.core.losses import token_logprobs
        forget["ref_logp"], _ = token_logprobs(logits.float(), forget["labels"][:, 1:])
        forget["ref_topk_idx"], forget["ref_topk_logp"] = topk_reference(logits.float(), 32)
    n = forget["input_ids"].shape[1] - 1
    k = forget["input_ids"].shape[0]
    forget["token_weight"] = torch.ones(k, n)
    forget["preserve_weight"] = (torch.arange(n) % 3 == 0).float().expand(k, n).contiguous()
    return model, forget, retain, wf


def one_step(model, adapter, batches, kind: str, params, U) -> None:
    """One update exactly as the unlearn loop makes it (``step_gradient``: projection in Adam's
    metric for the dual strategy, plain sum for GradDiff), or a plain NLL step."""
    view = StepView(model, batches)
    if kind == "nll":
        logp, mask = view.logp("retain")
        g = adapter.flat_grad(weighted_nll(logp, mask.float()))
        g = g * min(1.0, 1.0 / (g.norm().item() + 1e-12))
    else:
        terms = METHODS[params.name].losses(params, view, 1.0)
        g = step_gradient(adapter, terms, U if kind.startswith("dual") else None, "adam")
    adapter.apply(g)


def time_steps(model, batches, kind: str, steps: int, masks, U) -> tuple[list[float], float]:
    """Seconds per step (two warm-up steps excluded) and the step's FLOPs (torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    adapter = TorchAdapter(model, masks, lr=1e-3, world=1)
    # dual_no_anchor: the same step without the KL anchor, whose unprojected gradient needs a
    # second backward pass through the forget rows (the reason dual costs more than GradDiff).
    spec = {"dual": {"name": "hdsu"}, "dual_no_anchor": {"name": "hdsu", "anchor_weight": 0.0}}
    params = parse_method(spec.get(kind, {"name": "graddiff"}), "m", None)
    out = []
    for i in range(steps + 2):
        start = time.perf_counter()
        one_step(model, adapter, batches, kind, params, U)
        if i >= 2:
            out.append(time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        one_step(model, adapter, batches, kind, params, U)
    return out, float(counter.get_total_flops())


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matmul FLOP/s on this machine with ``threads`` threads (best of repeats)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workflow", default="workflows/mhqa.yaml", help="whose model and rows")
    ap.add_argument("--rows", type=int, default=16, help="forget rows and retain rows per step")
    args = ap.parse_args()
    model, forget, retain, wf = build(args.threads, args.workflow, args.rows)
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0))
              for n, p in model.named_parameters() if "embed" not in n}
    masks = {n: m.numpy() for n, m in top_fraction_masks(scores, 0.001).items()}
    masks.update({n: np.zeros(tuple(p.shape), bool) for n, p in model.named_parameters() if n not in masks})
    n_sel = int(sum(m.sum() for m in masks.values()))
    U = retain_basis(torch.randn(32, n_sel), rank=16, method="svd")
    rows = {}
    peak = matmul_peak(args.threads)
    for kind in ("nll", "graddiff", "dual", "dual_no_anchor"):
        t, flops = time_steps(model, {"forget": forget, "retain": retain}, kind, args.steps, masks, U)
        med = statistics.median(t)
        rows[kind] = {"median_s": med, "mean_s": statistics.fmean(t), "steps": len(t), "flops": flops,
                      "flops_per_s": flops / med, "mfu": flops / med / peak}
    ratio = rows["dual"]["median_s"] / rows["graddiff"]["median_s"]
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__}, "workflow": args.workflow, "model": wf.model.kind,
              "params": sum(p.numel() for p in model.parameters()), "rows": args.rows,
              "tokens_per_step": int(forget["attention_mask"].sum() + retain["attention_mask"].sum()),
              "param_budget": 0.001, "selected": n_sel,
              "matmul_peak_flops_per_s": peak, "steps": rows, "dual_over_graddiff": ratio,
              "dual_no_anchor_over_graddiff": rows["dual_no_anchor"]["median_s"] / rows["graddiff"]["median_s"],
              "target": 1.3}
    out = REPO / "bench" / "out" / ("step.json" if wf.model.kind == "tiny" else "step_real.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for kind, r in rows.items():
        print(f"{kind:9s} median {r['median_s'] * 1000:7.1f} ms/step  {r['flops_per_s'] / 1e9:6.1f} GFLOP/s  "
              f"MFU {r['mfu']:.3f}")
    print(f"dual / graddiff = {ratio:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
