"""General medical competence: questions that have nothing to do with the forget request, so a
method that forgets by damaging the model shows it here (MMLU medical subjects, PubMedQA).

For a pretrained model this, not the retain rows it was fine-tuned on, is the preservation its
users care about; for the tiny model built here it is a sanity check (it scores near chance).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from hdsu_ray.data.loaders import load_records
from hdsu_ray.data.records import MCQRecord


def mmlu_records(folder: Path) -> list[MCQRecord]:
    """Every question of every ``*_test.csv`` subject file in ``folder``, subject by subject."""
    return [r for path in sorted(Path(folder).glob("*_test.csv")) for r in load_records("mmlu", path)]


def pubmedqa_records(path: Path) -> list[MCQRecord]:
    """PubMedQA labelled questions as yes/no/maybe choices, each asked after its abstract (the task
    is to answer from the abstract, not to recall it)."""
    return [replace(r, question=f"{r.fields['context']}\n{r.question}") for r in load_records("pubmedqa", path)]


def sample(records: list[MCQRecord], n: int, seed: int, salt: str) -> list[MCQRecord]:
    """A fixed, seeded sample of at most ``n`` rows, in file order."""
    if len(records) <= n:
        return list(records)
    keep = set(random.Random(f"{seed}:{salt}").sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]


def competence_sets(workflow) -> dict[str, list[MCQRecord]]:
    """``{"mmlu": [...], "pubmedqa": [...]}`` for the workflow's ``evaluate`` paths (each optional)."""
    from hdsu_ray.config.paths import data_path

    ev, out = workflow.evaluate, {}
    if ev.mmlu_path:
        out["mmlu"] = sample(mmlu_records(data_path(workflow, ev.mmlu_path)), ev.competence_samples,
                             workflow.data.seed, "mmlu")
    if ev.pubmedqa_path:
        out["pubmedqa"] = sample(pubmedqa_records(data_path(workflow, ev.pubmedqa_path)), ev.competence_samples,
                                 workflow.data.seed, "pubmedqa")
    return out
