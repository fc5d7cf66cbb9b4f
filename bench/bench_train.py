"""Training throughput: the learn loop in plain torch vs under Ray Train with 1 and 2 workers.

    python bench/bench_train.py [--steps 60] [--cpus 2]
    python bench/bench_train.py --workflow workflows/mhqa_smollm2.yaml --steps 6 --workers 1   # SmolLM2-135M

The loop is the learn stage's step (forward, answer-token cross-entropy, backward, clipping,
AdamW) on the workflow's model and its encoded forget+retain rows, global batch 16: for the MHQA
study's tiny Llama (hidden 256, 4 layers, vocab 4096) a random init; for a pretrained model
(SmolLM2-135M) its own weights, saved once and loaded by every loop. Throughput is answer+prompt
tokens per second over the timed steps (two warm-up steps excluded), measured inside the loop, so
Ray Train's start-up is reported separately as end-to-end wall time. The plain loop runs before
and after the Ray runs and the faster of the two is the reference; each world size is also fitted
twice and its faster fit counts. With 2 workers each holds half
the CPUs and half the global batch (DDP over gloo). Writes bench/out/train.json (tiny) or
bench/out/train_real.json (pretrained).
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


def make_inputs(workflow: str, model_dir: Path) -> dict:
    """Encoded rows and how to build the model, made once in the driver (workers rebuild the model):
    a config for the tiny model, else the pretrained model saved under ``model_dir``."""
    from hdsu_ray.checks import load_workflow
    from hdsu_ray.data.encode import encode_texts
    from hdsu_ray.data.select import select_data
    from hdsu_ray.data.text import qa_text
    from hdsu_ray.models.build import build_base_model, load_model_dir, train_tokenizer
    from hdsu_ray.stages.learn import corpus_texts

    wf = load_workflow(REPO / workflow)
    data = select_data(wf)
    t = wf.model.tiny
    if wf.model.kind == "tiny":
        tok = train_tokenizer(corpus_texts(data), t.vocab_size)
        model = {"config": dict(vocab_size=len(tok), hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                                num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
                                intermediate_size=t.intermediate_size, max_position_embeddings=t.max_len,
                                pad_token_id=tok.pad_token_id, tie_word_embeddings=True)}
    else:
        saved = build_base_model(wf.model, corpus_texts(data), wf.seed, model_dir)
        tok = load_model_dir(saved)[1]
        model = {"dir": str(saved)}
    prompts, answers = zip(*map(qa_text, data.forget + data.retain))
    enc = encode_texts(tok, list(prompts), list(answers), t.max_len)
    return {"arrays": {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}, "model": model,
            "kind": wf.model.kind}


def _build(model: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if "dir" in model:
        from hdsu_ray.models.build import load_model_dir
        return load_model_dir(model["dir"])[0]
    return LlamaForCausalLM(LlamaConfig(**model["config"]))


def train_loop(config: dict) -> dict:
    """The learn step ``config["steps"]`` times; returns throughput of this worker's share."""
    import torch
    import torch.nn.functional as F

    in_ray = config.get("ray", False)
    rank, world = 0, 1
    if in_ray:
        import ray.train
        import ray.train.torch
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    model = _build(config["model"])
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


def ray_fit(base: dict, workers: int, cpus: float, tmp: Path) -> dict:
    """One Ray Train fit of the loop on ``workers`` workers sharing ``cpus``; throughput of all ranks."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    per = cpus / workers
    start = time.perf_counter()
    out_file = tmp / "rank0.json"
    tmp.mkdir(parents=True, exist_ok=True)
    TorchTrainer(train_loop, train_loop_config={**base, "threads": max(1, int(per)), "ray": True,
                                                "out_file": str(out_file)},
                 scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": per}),
                 run_config=RunConfig(name=f"w{workers}", storage_path=str(tmp)),
                 torch_config=TorchConfig(backend="gloo")).fit()
    m = json.loads(out_file.read_text())  # rank 0's share; every rank processes as many tokens
    return {"tokens": m["tokens"] * workers, "seconds": m["seconds"], "tokens_per_s": m["tokens_per_s"] * workers,
            "wall_s": time.perf_counter() - start, "workers": workers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workflow", default="workflows/mhqa.yaml", help="whose model and rows")
    ap.add_argument("--dashboard", action="store_true", help="start Ray as `hdsu-ray run` does, with its "
                    "dashboard (on 2 cores its processes take a share of the CPU)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train world sizes")
    ap.add_argument("--ray-repeats", type=int, default=2, help="fits per world size; the faster counts")
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra environment for the Ray workers (profiling experiments)")
    args = ap.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    keep = tempfile.TemporaryDirectory()  # a pretrained model's saved copy, for every loop
    inputs = make_inputs(args.workflow, Path(keep.name))
    base = {"arrays": inputs["arrays"], "model": inputs["model"], "steps": args.steps, "batch_size": 16}
    rows = {}
    start = time.perf_counter()
    plain = train_loop({**base, "threads": args.cpus})
    rows["plain"] = {**plain, "wall_s": time.perf_counter() - start, "workers": 0}

    import ray

    from hdsu_ray.runtime import local_runtime_env

    env = {"env_vars": {**local_runtime_env()["env_vars"], **extra_env}}  # as `hdsu-ray run`'s embedded Ray
    if args.dashboard:  # exactly `hdsu-ray run`'s embedded Ray, dashboard and all
        from hdsu_ray.runtime import start_local_ray

        start_local_ray(args.cpus, runtime_env=env)
    else:  # Ray Train's own cost: no dashboard process sharing the cores
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, runtime_env=env)
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            # Twice, the faster counts, as for the plain loop: the first fit after Ray starts can share the
            # 2 cores with Ray's own start-up (e.g. idle workers prestarting), which is not the step's cost.
            fits = [ray_fit(base, workers, args.cpus, Path(tmp) / f"w{workers}-{i}") for i in range(args.ray_repeats)]
            rows[f"ray_{workers}"] = {**max(fits, key=lambda f: f["tokens_per_s"]),
                                      "all_tokens_per_s": [f["tokens_per_s"] for f in fits]}
    ray.shutdown()
    # The plain loop again after Ray is gone: the faster of its two runs is the floor (a first run in
    # a fresh process pays allocator and cache warm-up that two steps do not absorb).
    start = time.perf_counter()
    again = train_loop({**base, "threads": args.cpus})
    if again["tokens_per_s"] > rows["plain"]["tokens_per_s"]:
        rows["plain"] = {**again, "wall_s": time.perf_counter() - start, "workers": 0}
    ratios = {k: rows[k]["tokens_per_s"] / rows["plain"]["tokens_per_s"] for k in rows if k != "plain"}
    keep.cleanup()
    result = {"workflow": args.workflow, "model": inputs["kind"], "steps": args.steps, "global_batch": 16,
              "cpus": args.cpus, "dashboard": args.dashboard, "rows": rows, "env": extra_env, "ray_over_plain": ratios,
              "target_1_worker": 0.9}
    out = REPO / "bench" / "out" / ("train.json" if inputs["kind"] == "tiny" else "train_real.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for k, r in rows.items():
        print(f"{k:7s} {r['tokens_per_s']:9.0f} tokens/s  (wall {r['wall_s']:.1f} s)")
    print("Ray / plain: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + " (target >= 0.9 for ray_1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
