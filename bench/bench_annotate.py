"""Annotate-stage throughput: single process vs the Ray Data job with 1 and 2 actors.

    cd /work/main && PYTHONPATH=. .venv/bin/python bench/bench_annotate.py [--scales 1 10]

Rows are MHQA-gold (forget = Anxiety, preset mhqa-anxiety) repeated 1x and 10x (uids made
unique). The tokenizer is a byte-level BPE (vocab 2000) trained on the rows. Every timing is end
to end: the single-process figure includes loading the tokenizer, hierarchy and matcher from the
warm cache; the Ray figures include starting the actor pool, writing Parquet and the coverage
read-back. Writes bench/out/annotate.json and prints a table. Not a test.
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

from hdsu_ray.data.loaders import load_records  # noqa: E402
from hdsu_ray.hierarchy.build import data_root  # noqa: E402
from hdsu_ray.stages.annotate import ConceptSpec, annotate_rows, qa_rows, run_annotate  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def train_tokenizer(texts, out_dir: Path, vocab_size: int = 2000) -> Path:
    """The project's own BPE (as the learn stage trains it), saved to ``out_dir``."""
    from hdsu_ray.models.build import train_tokenizer as project_tokenizer

    project_tokenizer(list(texts), vocab_size).save_pretrained(str(out_dir))
    return out_dir


def mhqa_rows(forget_topic: str = "Anxiety") -> list[dict]:
    records = load_records("mhqa", data_root() / "mhqa" / "mhqa_gold.csv")
    return qa_rows(records, lambda r: "forget" if r.fields["topic"] == forget_topic else "retain")


def repeat(rows: list[dict], k: int) -> list[dict]:
    return [{**r, "uid": f"{r['uid']}#{i}"} for i in range(k) for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = ap.parse_args(argv)

    import ray

    base = mhqa_rows()
    spec = ConceptSpec(targets=["preset:mhqa-anxiety"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = train_tokenizer([r["prompt"] + r["answer"] for r in base], Path(tmp) / "tok")
        annotate_rows(base[:2], tok_dir, spec)  # warm the hierarchy and matcher caches
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
                 object_store_memory=512 * 2**20, log_to_driver=False)
        for scale in args.scales:
            rows = repeat(base, scale)
            t0 = time.perf_counter()
            single = annotate_rows(rows, tok_dir, spec)
            wall = time.perf_counter() - t0
            n_tokens = sum(len(a["input_ids"]) for a in single)
            results.append({"mode": "single-process", "actors": 0, "scale": scale,
                            "rows": len(rows), "tokens": n_tokens, "wall_s": wall,
                            "tokens_per_s": n_tokens / wall})
            print(f"single  x{scale:<3} {wall:7.2f} s", file=sys.stderr)
            for actors in args.actors:
                t0 = time.perf_counter()
                res = run_annotate(rows, tok_dir, spec, Path(tmp) / f"out-{scale}-{actors}",
                                   parallelism=actors)
                wall = time.perf_counter() - t0
                got = res["coverage"]["tokens"]["total"]
                assert got == n_tokens, (got, n_tokens)
                results.append({"mode": "ray-data", "actors": actors, "scale": scale,
                                "rows": len(rows), "tokens": got, "wall_s": wall,
                                "tokens_per_s": got / wall})
                print(f"ray {actors}a  x{scale:<3} {wall:7.2f} s", file=sys.stderr)
        ray.shutdown()

    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"cpus_visible": os.cpu_count(), "ray_num_cpus": args.num_cpus,
            "load_avg_1m": os.getloadavg()[0], "spec_targets": spec.targets}
    (OUT / "annotate.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"{'mode':<15}{'actors':>7}{'scale':>7}{'rows':>8}{'tokens':>10}{'wall s':>9}{'tok/s':>10}")
    for r in results:
        print(f"{r['mode']:<15}{r['actors']:>7}{r['scale']:>7}{r['rows']:>8}{r['tokens']:>10}"
              f"{r['wall_s']:>9.2f}{r['tokens_per_s']:>10.0f}")
    print(f"(load average {meta['load_avg_1m']:.1f} on {meta['cpus_visible']} CPUs) -> {OUT / 'annotate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
