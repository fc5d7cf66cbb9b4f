"""Token tensors for training and for option scoring.

Sequences are right-padded ``[N, L]`` int64 arrays (numpy, so they go into the Ray object store
zero-copy). ``labels`` are -100 where no loss applies. Positions follow the *unshifted* text: the
model's logits at position t-1 predict token t; :func:`shift` does that alignment once.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100


def encode_texts(tokenizer, prompts: list[str], answers: list[str], max_len: int,
                 loss_on: str = "answer") -> dict[str, np.ndarray]:
    """Tokenize ``prompt + answer`` jointly (as the annotator does) and mark the answer tokens.

    Returns:
        ``input_ids [N, L]``, ``attention_mask [N, L]``, ``labels [N, L]`` (token id on answer
        tokens, or on all tokens with ``loss_on="all"``; -100 elsewhere) and ``answer_mask [N, L]``.
        A BOS token, when the tokenizer has one, is position 0 and never carries a loss.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = []
    for prompt, answer in zip(prompts, answers):
        enc = tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
        ids = bos + enc["input_ids"]
        is_answer = [0] * len(bos) + [int(start >= len(prompt)) for start, _ in enc["offset_mapping"]]
        # Truncate the prompt's left side first so the answer survives long questions.
        overflow = max(0, len(ids) - max_len)
        if overflow:
            ids = ids[: len(bos)] + ids[len(bos) + overflow:]
            is_answer = is_answer[: len(bos)] + is_answer[len(bos) + overflow:]
        rows.append((ids, is_answer, overflow))
    width = max(len(ids) for ids, _, _ in rows)
    n = len(rows)
    out = {"input_ids": np.full((n, width), tokenizer.pad_token_id, dtype=np.int64),
           "attention_mask": np.zeros((n, width), dtype=np.int64),
           "labels": np.full((n, width), IGNORE, dtype=np.int64),
           "answer_mask": np.zeros((n, width), dtype=np.int64),
           "truncated": np.zeros(n, dtype=np.int64)}
    for i, (ids, is_answer, overflow) in enumerate(rows):
        k = len(ids)
        out["input_ids"][i, :k] = ids
        out["attention_mask"][i, :k] = 1
        out["answer_mask"][i, :k] = is_answer
        lab = np.array(ids)
        keep = np.array(is_answer, dtype=bool) if loss_on == "answer" else np.arange(k) >= len(bos)
        out["labels"][i, :k] = np.where(keep, lab, IGNORE)
        out["truncated"][i] = overflow
    return out


def shift(logits, labels):
    """Align logits with the next token: ``(logits[:, :-1], labels[:, 1:])``."""
    return logits[:, :-1], labels[:, 1:]
