"""Multiple-choice accuracy by option log-likelihood.

Each option is scored as a completion of the question prompt; the prediction is the option with
the highest (length-normalised by default) log-likelihood. Per-item correctness is kept so every
later metric (per-level preservation, confidence intervals) is computed from the same numbers.
"""

from __future__ import annotations

import numpy as np

from hdsu_ray.data.encode import encode_texts
from hdsu_ray.data.records import MCQRecord
from hdsu_ray.data.text import qa_completion, qa_prompt


def option_scores(model, tokenizer, records: list[MCQRecord], *, max_len: int, batch_size: int = 64,
                  normalise: str = "mean") -> np.ndarray:
    """Score every option of every record.

    Returns:
        ``[N, max_options]`` float array; options a record lacks are ``-inf``.
    """
    import torch

    from hdsu_ray.core.losses import token_logprobs

    pairs = [(i, j, qa_prompt(r), qa_completion(opt)) for i, r in enumerate(records)
             for j, opt in enumerate(r.options)]
    width = max(len(r.options) for r in records)
    scores = np.full((len(records), width), -np.inf)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            enc = encode_texts(tokenizer, [p for _, _, p, _ in chunk], [a for _, _, _, a in chunk], max_len)
            dev = next(model.parameters()).device
            ids = torch.from_numpy(enc["input_ids"]).to(dev)
            logits = model(input_ids=ids, attention_mask=torch.from_numpy(enc["attention_mask"]).to(dev)).logits
            logp, mask = token_logprobs(logits[:, :-1].float(), torch.from_numpy(enc["labels"][:, 1:]).to(dev))
            total = (logp * mask).sum(-1)
            count = mask.sum(-1).clamp(min=1)
            value = total / count if normalise == "mean" else total
            for (i, j, _, _), v in zip(chunk, value.tolist()):
                scores[i, j] = v
    return scores


def mcq_correct(model, tokenizer, records: list[MCQRecord], **kwargs) -> np.ndarray:
    """``[N]`` bool: is the top-scoring option the right one."""
    if not records:
        return np.zeros(0, dtype=bool)
    scores = option_scores(model, tokenizer, records, **kwargs)
    answers = np.array([r.answer_index for r in records])
    return scores.argmax(axis=1) == answers


def encode_options(tokenizer, records: list[MCQRecord], max_len: int) -> dict[str, np.ndarray]:
    """All ``(prompt, option)`` pairs of ``records`` encoded once, for scoring inside a training
    loop without a tokenizer: arrays ``[N * n_options, L]`` plus ``answers [N]``."""
    n_opt = max(len(r.options) for r in records)
    prompts, answers = [], []
    for r in records:
        opts = list(r.options) + [r.options[-1]] * (n_opt - len(r.options))  # pad with a repeat
        prompts += [qa_prompt(r)] * n_opt
        answers += [qa_completion(o) for o in opts]
    enc = encode_texts(tokenizer, prompts, answers, max_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": enc["labels"],
            "answers": np.array([r.answer_index for r in records]), "n_options": np.array(n_opt)}


def accuracy_encoded(model, enc: dict[str, np.ndarray], batch_size: int = 64) -> float:
    """MC accuracy (mean-normalised option log-likelihood) on arrays from :func:`encode_options`."""
    import torch

    from hdsu_ray.core.losses import token_logprobs

    n_opt = int(enc["n_options"])
    values = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(enc["input_ids"]), batch_size):
            dev = next(model.parameters()).device
            ids = torch.as_tensor(enc["input_ids"][s:s + batch_size], device=dev)
            am = torch.as_tensor(enc["attention_mask"][s:s + batch_size], device=dev)
            logits = model(input_ids=ids, attention_mask=am).logits[:, :-1].float()
            logp, mask = token_logprobs(logits, torch.as_tensor(enc["labels"][s:s + batch_size, 1:], device=dev))
            values.append(((logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).cpu().numpy())
    model.train(was_training)
    scores = np.concatenate(values).reshape(-1, n_opt)
    return float((scores.argmax(axis=1) == enc["answers"]).mean())
