"""The robustness stage: attack every unlearned model after unlearning, as Ray tasks.

Per method (its first seed's model), written into ``results.json`` as ``robustness``:

* ``quant8``, ``quant4``: every linear weight rounded to nearest in groups (``group_size``),
  then the same forget and retain_test evaluation;
* ``relearn``: fine-tune on ``relearn_fraction`` of the forget rows for ``relearn_steps`` steps,
  evaluate on the other forget rows along the way; the same attack on the retrain oracle (which
  never saw the rows) gives the curve of learning them for the first time;
* ``benign_relearn``: the same fine-tuning on retain_train rows only, then the forget and
  retain_test evaluation.

A method is flagged when an attack brings back at least ``max_recovery`` of what it removed:
``(attacked forget accuracy - forget accuracy after) / (before - after)``; for relearning, when
its relearned accuracy exceeds the oracle's after the same steps by ``max_recovery`` x the
forgotten gap. The defaults and why: docs/metrics.md.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def relearn_split(forget: list, fraction: float, seed: int) -> tuple[list, list]:
    """``(rows the attacker fine-tunes on, rows it is evaluated on)``, disjoint, seeded."""
    order = np.random.default_rng([seed, 97]).permutation(len(forget))
    k = max(1, min(len(forget) - 1, round(fraction * len(forget))))
    return [forget[i] for i in sorted(order[:k])], [forget[i] for i in sorted(order[k:])]


def _loss(model, batch):
    from hdsu_ray.core.losses import token_logprobs, weighted_nll

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    logp, mask = token_logprobs(logits, batch["labels"][:, 1:])
    return weighted_nll(logp, mask.float())


def _batches(tok, records, steps: int, batch: int, max_len: int, seed: int):
    import torch

    from hdsu_ray.data.encode import encode_texts
    from hdsu_ray.data.text import qa_text

    prompts, answers = zip(*map(qa_text, records))
    enc = encode_texts(tok, list(prompts), list(answers), max_len)
    rng = np.random.default_rng([seed, 98])
    for _ in range(steps):
        rows = rng.choice(len(records), size=min(batch, len(records)), replace=False)
        width = int(enc["attention_mask"][rows].sum(axis=1).max())
        yield {k: torch.as_tensor(enc[k][rows][:, :width]) for k in ("input_ids", "attention_mask", "labels")}


def _relearn(model_dir: str, train: list, evaluate: list, cfg: dict, acc, seed: int) -> tuple[list[dict], Any]:
    """Fine-tune the model in ``model_dir`` on ``train``; ``(forget accuracy on evaluate along the
    steps, the fine-tuned model)``."""
    from hdsu_ray.core.attacks import finetune
    from hdsu_ray.models.build import load_model_dir

    model, tok = load_model_dir(model_dir)
    at = set(range(cfg["eval_every"], cfg["relearn_steps"] + 1, cfg["eval_every"])) | {cfg["relearn_steps"]}
    curve = [{"step": 0, "forget_accuracy": acc(model, evaluate)}]
    finetune(model, _batches(tok, train, cfg["relearn_steps"], cfg["relearn_batch"], cfg["max_len"], seed),
             lr=cfg["relearn_lr"], loss_fn=_loss,
             on_step=lambda k: curve.append({"step": k, "forget_accuracy": acc(model, evaluate)}) if k in at else None)
    return curve, model


def _attack_task(model_dir: str, oracle_dir: str | None, sets: dict, cfg: dict, threads: int, seed: int) -> dict:
    import torch

    from hdsu_ray.core.attacks import quantize_linear_layers_
    from hdsu_ray.eval.mcq import mcq_correct
    from hdsu_ray.logs import configure
    from hdsu_ray.models.build import load_model_dir

    configure()
    torch.set_num_threads(threads)
    model, tok = load_model_dir(model_dir)

    def acc(m, records) -> float:
        return float(mcq_correct(m, tok, records, max_len=cfg["max_len"], batch_size=cfg["batch_size"],
                                 normalise=cfg["normalise"]).mean())

    out: dict[str, Any] = {}
    for bits in cfg["quant_bits"]:
        q = copy.deepcopy(model)
        n = quantize_linear_layers_(q, bits, cfg["group_size"])
        out[f"quant{bits}"] = {"forget_accuracy": acc(q, sets["forget"]), "retain_accuracy": acc(q, sets["retain"]),
                               "bits": bits, "group_size": cfg["group_size"], "layers": n}
    curve, _ = _relearn(model_dir, sets["relearn_train"], sets["relearn_eval"], cfg, acc, seed)
    oracle = _relearn(oracle_dir, sets["relearn_train"], sets["relearn_eval"], cfg, acc, seed)[0] if oracle_dir else None
    out["relearn"] = {"forget_accuracy": curve[-1]["forget_accuracy"], "start_accuracy": curve[0]["forget_accuracy"],
                      "curve": curve, "oracle_curve": oracle,
                      "oracle_forget_accuracy": oracle[-1]["forget_accuracy"] if oracle else None,
                      "train_rows": len(sets["relearn_train"]), "eval_rows": len(sets["relearn_eval"]),
                      "steps": cfg["relearn_steps"], "lr": cfg["relearn_lr"]}
    benign, tuned = _relearn(model_dir, sets["benign"], sets["forget"], cfg, acc, seed)
    out["benign_relearn"] = {"forget_accuracy": benign[-1]["forget_accuracy"], "start_accuracy": benign[0]["forget_accuracy"],
                             "curve": benign, "retain_accuracy": acc(tuned, sets["retain"]),
                             "train_rows": len(sets["benign"])}
    return out


def run_attacks(workflow, data, model_dirs: dict[str, Path], oracle_dir: Path | None) -> dict[str, dict]:
    """``{label: robustness record}``: every model attacked in its own Ray task."""
    import ray

    from hdsu_ray.runtime import held_cpus, task_cpus

    r = workflow.robustness
    train, evaluate = relearn_split(data.forget, r.relearn_fraction, workflow.seed)
    sets = ray.put({"forget": data.forget, "retain": data.retain_test, "relearn_train": train,
                    "relearn_eval": evaluate, "benign": data.retain_train})
    cfg = {"quant_bits": list(r.quant_bits), "group_size": r.group_size, "relearn_steps": r.relearn_steps,
           "relearn_lr": r.relearn_lr, "relearn_batch": r.relearn_batch, "eval_every": r.eval_every,
           "max_len": workflow.model.tiny.max_len, "batch_size": workflow.evaluate.batch_size,
           "normalise": workflow.evaluate.normalise}
    cpus = min(task_cpus(workflow.cluster), workflow.cluster.cpus_per_worker)
    task = ray.remote(_attack_task)
    refs = {label: task.options(num_cpus=cpus - held_cpus(), scheduling_strategy="DEFAULT",
                                name=f"attack {workflow.name} {label}").remote(
        str(d), str(oracle_dir) if oracle_dir else None, sets, cfg, max(1, int(cpus)), workflow.seed)
        for label, d in model_dirs.items()}
    log.info("[robustness] %d models: quantization (%s bits), relearning (%d steps on %d forget rows)",
             len(refs), ", ".join(map(str, r.quant_bits)), r.relearn_steps, len(train))
    return {label: ray.get(ref) for label, ref in refs.items()}


def robustness_flags(row: dict, record: dict, max_recovery: float) -> dict[str, Any]:
    """Per attack: the share of the forgotten accuracy it recovered, and whether that flags the
    method (``None`` when nothing was forgotten, so nothing could be recovered)."""
    attacked = row.get("first_seed") or row  # the attacks took the first seed's model
    before, after = row["before"].get("forget_accuracy"), attacked["after"].get("forget_accuracy")
    gap = (before - after) if before is not None and after is not None else None
    flags = {}
    for name, attack in record.items():
        recovered = None
        if gap and gap > 0:
            base = attack.get("start_accuracy", after)  # relearning is scored on its own rows
            if name == "relearn" and attack.get("oracle_forget_accuracy") is not None:
                base = max(base, attack["oracle_forget_accuracy"])  # learning the rows anew is no leak
            recovered = (attack["forget_accuracy"] - base) / gap
        attack["recovered"] = recovered
        flags[name] = None if recovered is None else bool(recovered >= max_recovery)
    return {"flagged": any(v for v in flags.values()), "attacks": flags, "max_recovery": max_recovery}
