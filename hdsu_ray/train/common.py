"""Pieces shared by the per-worker loops: threads and seeds, sharded batches, model checkpoints.

Workers read everything from their job (:mod:`hdsu_ray.train.jobs`), never from module globals, so
the same loop runs under the CLI, under Tune trials and on any node of a cluster.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def setup_worker(seed: int, threads: int) -> tuple[int, int]:
    """Seed everything and size torch's thread pool to the worker's CPUs; returns (rank, world)."""
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(threads)))
    seed = int(seed) + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return rank, world


def shard_batches(n_rows: int, batch_size: int, rank: int, world: int, seed: int,
                  epoch: int) -> Iterator[np.ndarray]:
    """Row indices of this worker's part of each global batch, one epoch, seeded permutation.

    The permutation depends on (seed, epoch) only, so every worker agrees on it and a resumed
    run replays the same batches. The global batch is split evenly over workers; a short last
    batch is dropped when it cannot give every worker a row.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    per_worker = max(1, batch_size // world)
    global_batch = per_worker * world
    for start in range(0, n_rows - world + 1, global_batch):
        chunk = order[start:start + global_batch]
        mine = chunk[rank::world]
        if len(mine):
            yield mine


def batch_tensors(arrays: dict[str, np.ndarray], rows: np.ndarray, device) -> dict[str, Any]:
    """Slice rows out of the shared arrays, trimmed to the longest sequence in the batch."""
    import torch

    width = int(arrays["attention_mask"][rows].sum(axis=1).max())
    out = {}
    for key, value in arrays.items():
        if value.ndim < 2 or key.startswith("option_"):  # options: see option_tensors
            continue
        part = value[rows]
        # [N, L] text-position arrays keep L; [N, L-1] shifted arrays keep L-1.
        cut = width if part.shape[1] == arrays["input_ids"].shape[1] else width - 1
        out[key] = torch.as_tensor(np.ascontiguousarray(part[:, :cut])).to(device)
    return out


def option_tensors(arrays: dict[str, np.ndarray], rows: np.ndarray, device) -> dict[str, Any]:
    """The answer options of ``rows`` (from ``add_option_arrays``) as model inputs: ``input_ids``,
    ``attention_mask``, ``labels`` ``[B * K, Lo']`` trimmed to the longest, ``valid [B, K]`` and
    ``answer [B]``."""
    import torch

    att = arrays["option_attention_mask"][rows]  # [B, K, Lo]
    width = int(att.sum(axis=-1).max())
    out = {}
    for key in ("input_ids", "attention_mask", "labels"):
        part = arrays[f"option_{key}"][rows][:, :, :width]
        out[key] = torch.as_tensor(np.ascontiguousarray(part.reshape(-1, width))).to(device)
    out["valid"] = torch.as_tensor(np.ascontiguousarray(arrays["option_valid"][rows])).to(device)
    out["answer"] = torch.as_tensor(np.ascontiguousarray(arrays["option_answer"][rows])).to(device)
    return out


def cosine_schedule(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def unwrap(model):
    return getattr(model, "module", model)


def save_model_dir(model, tokenizer, path: Path) -> None:
    unwrap(model).save_pretrained(path)
    tokenizer.save_pretrained(path)
