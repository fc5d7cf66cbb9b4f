"""Variants of the forget questions that a loss tuned on the original options cannot target.

A forget loss that ranks the right option below the *given* distractors can pass the MCQ metric
by learning those four strings, not by forgetting the fact. Two probes change what is scored:

* ``shuffled``: the same options in another order (a loss that learned positions fails it);
* ``fresh``: the same question and right answer among distractors drawn from other questions'
  right answers on the same topic (a loss that learned to prefer the old distractors fails it).

Both are deterministic in the seed and the rows, so every method is probed on the same variants.
"""

from __future__ import annotations

import random
from dataclasses import replace

from hdsu_ray.data.records import MCQRecord

TOPIC_FIELDS = ("topic", "subject_name", "subject")


def shuffled(records: list[MCQRecord], seed: int) -> list[MCQRecord]:
    """Each question with its options in a seeded new order (the right one moves with them)."""
    out = []
    for r in records:
        order = list(range(len(r.options)))
        random.Random(f"{seed}:shuffle:{r.uid}").shuffle(order)
        out.append(replace(r, options=tuple(r.options[i] for i in order), answer_index=order.index(r.answer_index)))
    return out


def _topic(r: MCQRecord) -> str:
    return next((r.fields[f] for f in TOPIC_FIELDS if r.fields.get(f)), "")


def fresh_distractors(records: list[MCQRecord], pool: list[MCQRecord], seed: int) -> list[MCQRecord]:
    """Each question with its distractors replaced by right answers of other questions of its topic
    in ``pool`` (texts unlike its own answer); a question keeps its original distractors only
    where the pool has too few. The right answer takes a seeded position."""
    answers: dict[str, list[str]] = {}
    for p in pool:
        answers.setdefault(_topic(p), []).append(p.answer.strip())
    out = []
    for r in records:
        rng = random.Random(f"{seed}:fresh:{r.uid}")
        gold = r.answer.strip()
        candidates = sorted({a for a in answers.get(_topic(r), []) if a.lower() != gold.lower()})
        k = len(r.options) - 1
        if len(candidates) < k:
            out.append(r)
            continue
        options = rng.sample(candidates, k)
        position = rng.randrange(k + 1)
        options.insert(position, r.answer)
        out.append(replace(r, options=tuple(options), answer_index=position))
    return out
