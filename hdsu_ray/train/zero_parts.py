"""The DeepSpeed knowledge :mod:`hdsu_ray.train.zero` needs that does not import deepspeed: the
config dict a run hands to ``deepspeed.initialize``, and how to find the slice of a parameter's
fp32 state that this rank owns under ZeRO 1-3 (DeepSpeed's own bookkeeping attributes).
"""

from __future__ import annotations

import copy

from torch import Tensor


def ds_config(zero: dict, world: int) -> dict:
    """The DeepSpeed config dict for one run: the file's dict plus batch sizes and precision.

    Args:
        zero: ``{"stage": int, "config": dict, "bf16": bool}`` from ``stages.unlearn.zero_config``.
        world: data-parallel world size.
    """
    cfg = copy.deepcopy(zero.get("config") or {})
    cfg.pop("_comment", None)
    stage = int(zero.get("stage", 0))
    zo = cfg.setdefault("zero_optimization", {})
    if int(zo.setdefault("stage", stage)) != stage:
        raise ValueError(f"unlearn.zero_stage is {stage} but the DeepSpeed config says stage "
                         f"{zo['stage']}; set unlearn.zero_stage={zo['stage']}")
    if "optimizer" in cfg or "scheduler" in cfg:
        raise ValueError("the DeepSpeed config must not name an optimizer or scheduler: the unlearn "
                         "loop brings its own torch AdamW (and clips gradients itself)")
    # One micro-batch per worker per step: the loop owns batching and accumulation.
    cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world)
    cfg.setdefault("gradient_clipping", 0.0)
    cfg.setdefault("steps_per_print", 2**31 - 1)
    cfg.setdefault("wall_clock_breakdown", False)
    if zero.get("bf16") or (cfg.get("bf16") or {}).get("enabled") is True:
        if stage == 0:
            # DeepSpeed wraps a bf16 model without ZeRO in FP16_UnfusedOptimizer: bf16 gradients, a
            # loss scaler between the gradients written here and the step, and an extra Adam step
            # at init. None of that matches the adapter contract.
            raise ValueError("DeepSpeed with bf16 needs ZeRO stage 1, 2 or 3 (stage 0 uses DeepSpeed's "
                             "fp16-style wrapper); use unlearn.zero_stage>=1 or unlearn.engine=torch")
        cfg["bf16"] = {**(cfg.get("bf16") or {}), "enabled": True}
    off = zo.get("offload_optimizer") or {}
    if off.get("device", "none") != "none":
        # a torch optimizer on offloaded partitions instead of DeepSpeedCPUAdam (a JIT-compiled op)
        cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    return cfg


def is_partitioned(p) -> bool:
    """Whether DeepSpeed keeps ``p``'s fp32 master (and its optimizer state) in per-rank slices:
    ZeRO 3 marks the parameter with ``ds_id``, ZeRO 1/2 and the bf16 optimizer with ``_hp_mapping``."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def local_slice(p, key: str | None) -> tuple[int, Tensor] | None:
    """``(first flat index, values)`` of the part of ``p``'s fp32 state this rank owns."""
    if hasattr(p, "ds_id"):  # ZeRO 3: equal padded partitions, rank r owns [r*pn, (r+1)*pn)
        opt = p._z3_optimizer
        part, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=True, optim_state_key=key)
        pn = part.numel()
        lo = pn * opt._get_param_partition_rank(p)
        hi = min(lo + pn, p.ds_numel)
        return (lo, part[:hi - lo]) if hi > lo else None
    mapping = getattr(p, "_hp_mapping", None)  # ZeRO 1/2: a fragment at lp_fragment_address
    if mapping is None:
        return None
    return mapping.lp_fragment_address.start, mapping.get_hp_fragment(key)
