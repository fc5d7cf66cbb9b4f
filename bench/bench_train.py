"""Training throughput: the learn loop in plain torch vs under Ray Train with 1 and 2 workers.

    python bench/bench_train.py [--steps 60] [--cpus 2]

The loop is the learn stage's step (forward, answer-token cross-entropy, backward, clipping,
AdamW) on the MHQA study's tiny Llama (hidden 256, 4 layers, vocab 4096; random init) and its
encoded forget+retain rows, global batch 16. Throughput is answer+prompt tokens per second over
the timed steps (two warm-up steps excluded), measured inside the loop, so Ray Train's start-up is
reported separately as end-to-end wall time. The plain loop runs before and after the Ray runs and
the faster of the two is the reference. With 2 workers each holds half the CPUs and half the
global batch (DDP over gloo). Writes bench/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LOCAL_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}  # as hdsu_ray.runtime.init_ray


def make_inputs() -> dict:
    """Encoded rows and a model config, built once in the driver (workers rebuild the model)."""
    from hdsu_ray.checks import load_workflow
    from hdsu_ray.data.encode import encode_texts
    from hdsu_ray.data.select import select_data
    from hdsu_ray.data.text import qa_text
    from hdsu_ray.models.build import train_tokenizer
    from hdsu_ray.stages.learn import corpus_texts

    wf = load_workflow(REPO / "workflows" / "mhqa.yaml")
    data = select_data(wf)
    tok = train_tokenizer(corpus_texts(data), wf.model.tiny.vocab_size)
    prompts, answers = zip(*map(qa_text, data.forget + data.retain))
    enc = encode_texts(tok, list(prompts), list(answers), wf.model.tiny.max_len)
    t = wf.model.tiny
    cfg = dict(vocab_size=len(tok), hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
               num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
               intermediate_size=t.intermediate_size, max_position_embeddings=t.max_len,
               pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    return {"arrays": {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}, "model": cfg}


def train_loop(config: dict) -> dict:
    """The learn step ``config["steps"]`` times; returns throughput of this worker's share."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    in_ray = config.get("ray", False)
    rank, world = 0, 1
    if in_ray:
        import ray.train
        import ray.train.torch
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config["model"]))
    if in_ray:
        model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    arrays = config["arrays"]
    n, per = len(arrays["input_ids"]), config["batch_size"] // world
    tokens, elapsed = 0, 0.0
    for step in range(config["steps"] + 2):
        lo = (step * config["batch_size"] + rank * per) % (n - per)
        b = {k: torch.as_tensor(v[lo:lo + per]) for k, v in arrays.items()}
        start = time.perf_counter()
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= 2:
            elapsed += time.perf_counter() - start
            tokens += int(b["attention_mask"].sum())
    out = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}
    if in_ray and rank == 0:  # Train V2 keeps metrics only with checkpoints: hand them over as a file
        Path(config["out_file"]).write_text(json.dumps(out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train world sizes")
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra environment for the Ray workers (profiling experiments)")
    args = ap.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    inputs = make_inputs()
    base = {**inputs, "steps": args.steps, "batch_size": 16}
    rows = {}
    start = time.perf_counter()
    plain = train_loop({**base, "threads": args.cpus})
    rows["plain"] = {**plain, "wall_s": time.perf_counter() - start, "workers": 0}

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # The same embedded Ray as `hdsu-ray run` without a cluster (pipeline.init_ray's settings).
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
             runtime_env={"env_vars": {**{k: os.environ.get(k, v) for k, v in LOCAL_RAY_ENV.items()},
                                          **extra_env}})
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            cpus = args.cpus / workers
            start = time.perf_counter()
            out_file = Path(tmp) / f"w{workers}.json"
            TorchTrainer(train_loop, train_loop_config={**base, "threads": max(1, int(cpus)), "ray": True,
                                                        "out_file": str(out_file)},
                         scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
                         run_config=RunConfig(name=f"w{workers}", storage_path=tmp),
                         torch_config=TorchConfig(backend="gloo")).fit()
            m = json.loads(out_file.read_text())  # rank 0's share; every rank processes as many tokens
            rows[f"ray_{workers}"] = {"tokens": m["tokens"] * workers, "seconds": m["seconds"],
                                      "tokens_per_s": m["tokens_per_s"] * workers,
                                      "wall_s": time.perf_counter() - start, "workers": workers}
    ray.shutdown()
    # The plain loop again after Ray is gone: the faster of its two runs is the floor (a first run in
    # a fresh process pays allocator and cache warm-up that two steps do not absorb).
    start = time.perf_counter()
    again = train_loop({**base, "threads": args.cpus})
    if again["tokens_per_s"] > rows["plain"]["tokens_per_s"]:
        rows["plain"] = {**again, "wall_s": time.perf_counter() - start, "workers": 0}
    ratios = {k: rows[k]["tokens_per_s"] / rows["plain"]["tokens_per_s"] for k in rows if k != "plain"}
    result = {"steps": args.steps, "global_batch": 16, "cpus": args.cpus, "rows": rows, "env": extra_env,
              "ray_over_plain": ratios, "target_1_worker": 0.9}
    out = REPO / "bench" / "out" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for k, r in rows.items():
        print(f"{k:7s} {r['tokens_per_s']:9.0f} tokens/s  (wall {r['wall_s']:.1f} s)")
    print("Ray / plain: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + " (target >= 0.9 for ray_1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
