"""Multiple-choice accuracy by option log-likelihood.

Each option is scored as a completion of the question prompt; the prediction is the option with
the highest (length-normalised by default) log-likelihood. Per-item correctness is kept so every
later metric (per-level preservation, confidence intervals) is computed from the same numbers.
"""

from __future__ import annotations

import numpy as np

from hdsu_ray.data.encode import IGNORE, encode_texts
from hdsu_ray.data.records import MCQRecord
from hdsu_ray.data.text import qa_completion, qa_prompt


def answer_logprob_sums(model, input_ids, attention_mask, labels):
    """Per-row sum and count of ``log p(label)`` over labelled positions: ``([B], [B])``.

    Only labelled (answer) positions go through the output head and the log-softmax: for option
    scoring they are a small share of the sequence, and on CPU the ``[B, L, V]`` logits and their
    log-softmax cost more than the transformer body of a small model. Models without a separable
    base and head fall back to full logits. ``labels`` are unshifted (``-100`` = no loss).
    """
    import torch

    target = labels[:, 1:]
    sel = target != IGNORE  # [B, L-1]
    base, head = _base_and_head(model)
    if base is not None:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        logits = head(hidden[sel])  # [n_labelled, V]
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][sel]
    lp = _label_logprobs(logits, target[sel])
    rows = sel.nonzero()[:, 0]
    sums = torch.zeros(len(input_ids), dtype=lp.dtype, device=lp.device).index_add_(0, rows, lp)
    return sums, sel.sum(-1)


def _label_logprobs(logits, labels):
    """``[n]`` log-probability of each label under ``logits [n, V]`` (the core's token_logprobs)."""
    from hdsu_ray.core.losses import token_logprobs

    return token_logprobs(logits[None], labels[None])[0][0]


def _base_and_head(model):
    """The transformer body and the output head of a causal LM, or ``(None, None)``."""
    if hasattr(model, "get_base_model"):  # a peft model (budget: lora): the LM with adapters injected
        model = model.get_base_model()
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (base, head) if base is not None and head is not None and base is not model else (None, None)


def shared_prompt_split(tokenizer, record: MCQRecord, max_len: int):
    """``(prompt_ids, [option_ids, ...])`` when every option's joint encoding (as scored one by one)
    is the same prompt tokens followed by its own answer tokens, none truncated; else ``None``."""
    enc = encode_texts(tokenizer, [qa_prompt(record)] * len(record.options),
                       [qa_completion(o) for o in record.options], max_len)
    prompt, options = None, []
    for ids, ans, trunc in zip(enc["input_ids"], enc["answer_mask"], enc["truncated"]):
        n = int(enc["attention_mask"][len(options)].sum())
        k = int(np.argmax(ans[:n])) if ans[:n].any() else n
        if trunc or k == n or ans[k:n].min() == 0:
            return None
        if prompt is None:
            prompt = ids[:k].tolist()
        elif ids[:k].tolist() != prompt:
            return None
        options.append(ids[k:n].tolist())
    return prompt, options


def packed_option_sums(model, items: list[tuple[list[int], list[list[int]]]], pad_id: int):
    """Score all options of several questions with the prompt run once per question.

    Each row packs ``prompt + option_1 + ... + option_K``; a 4D attention mask lets every option
    see the prompt and its own earlier tokens only, and position ids restart after the prompt for
    each option, so each option is scored exactly as if it followed the prompt alone. Questions are
    much longer than answer options, so most of the work of scoring pair by pair goes away.

    Returns:
        ``(sums [R, K], counts [R, K])`` tensors of answer-token log-probability sums and lengths.
    """
    import torch

    base, head = _base_and_head(model)
    dev = next(model.parameters()).device
    width = max(len(p) + sum(map(len, opts)) for p, opts in items)
    n_opt = max(len(opts) for _, opts in items)
    B = len(items)
    ids = np.full((B, width), pad_id, np.int64)
    pos = np.zeros((B, width), np.int64)
    allow = np.zeros((B, width, width), bool)
    rows, src, tgt, slot = [], [], [], []
    for b, (prompt, opts) in enumerate(items):
        P = len(prompt)
        ids[b, :P], pos[b, :P] = prompt, np.arange(P)
        allow[b, :P, :P] = np.tril(np.ones((P, P), bool))
        off = P
        for k, a in enumerate(opts):
            L = len(a)
            ids[b, off:off + L], pos[b, off:off + L] = a, np.arange(P, P + L)
            allow[b, off:off + L, :P] = True
            allow[b, off:off + L, off:off + L] = np.tril(np.ones((L, L), bool))
            # Token a[0] is predicted at the prompt's last position, a[t] at the block's previous one.
            src += [P - 1] + list(range(off, off + L - 1))
            tgt += a
            rows += [b] * L
            slot += [b * n_opt + k] * L
            off += L
        allow[b, np.arange(off, width), np.arange(off, width)] = True  # padding sees itself (no NaN)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((B, 1, width, width), dtype=dtype)
    mask.masked_fill_(~torch.from_numpy(allow)[:, None], torch.finfo(dtype).min)
    hidden = base(input_ids=torch.from_numpy(ids).to(dev), attention_mask=mask.to(dev),
                  position_ids=torch.from_numpy(pos).to(dev)).last_hidden_state
    logits = head(hidden[torch.tensor(rows, device=dev), torch.tensor(src, device=dev)])
    lp = _label_logprobs(logits, torch.tensor(tgt, device=dev))
    slots = torch.tensor(slot, device=dev)
    sums = torch.zeros(B * n_opt, device=dev).index_add_(0, slots, lp)
    counts = torch.zeros(B * n_opt, device=dev).index_add_(0, slots, torch.ones_like(lp))
    return sums.view(B, n_opt), counts.view(B, n_opt)


def packed_batches(splits: list, width: int, batch_size: int) -> list[list[int]]:
    """The records with a shared-prompt split, in batches of ``batch_size // width`` questions.

    Shortest first: batches of similar length waste little on padding (the order changes no score).
    """
    packable = sorted((i for i, sp in enumerate(splits) if sp is not None),
                      key=lambda i: len(splits[i][0]) + sum(map(len, splits[i][1])))
    per_batch = max(1, batch_size // width)
    return [packable[start:start + per_batch] for start in range(0, len(packable), per_batch)]


def option_scores(model, tokenizer, records: list[MCQRecord], *, max_len: int, batch_size: int = 64,
                  normalise: str = "mean", packed: bool = True) -> np.ndarray:
    """Score every option of every record.

    With ``packed`` (and a model with a separable body and head), questions whose options share
    their prompt tokens are scored by :func:`packed_option_sums`; the rest one pair at a time.

    Returns:
        ``[N, max_options]`` float array; options a record lacks are ``-inf``.
    """
    import torch

    width = max(len(r.options) for r in records)
    scores = np.full((len(records), width), -np.inf)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    splits = ([shared_prompt_split(tokenizer, r, max_len) for r in records] if packed
              and _base_and_head(model)[0] is not None else [None] * len(records))
    pairs = [(i, j, qa_prompt(r), qa_completion(opt)) for i, r in enumerate(records) if splits[i] is None
             for j, opt in enumerate(r.options)]
    # Batches of similar length waste little on padding (the order does not change any score).
    pairs.sort(key=lambda x: len(x[2]) + len(x[3]))
    with torch.no_grad():
        for chunk in packed_batches(splits, width, batch_size):
            total, count = packed_option_sums(model, [splits[i] for i in chunk], tokenizer.pad_token_id)
            value = total / count.clamp(min=1) if normalise == "mean" else total
            for row, i in enumerate(chunk):
                n = len(records[i].options)
                scores[i, :n] = value[row, :n].cpu().numpy()
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            enc = encode_texts(tokenizer, [p for _, _, p, _ in chunk], [a for _, _, _, a in chunk], max_len)
            total, count = answer_logprob_sums(model, torch.from_numpy(enc["input_ids"]).to(dev),
                                               torch.from_numpy(enc["attention_mask"]).to(dev),
                                               torch.from_numpy(enc["labels"]).to(dev))
            value = total / count.clamp(min=1) if normalise == "mean" else total
            for (i, j, _, _), v in zip(chunk, value.tolist()):
                scores[i, j] = v
    model.train(was_training)
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


def accuracy_encoded(model, enc: dict[str, np.ndarray], batch_size: int = 64, normalise: str = "mean") -> float:
    """MC accuracy on arrays from :func:`encode_options`, options scored as :func:`option_scores`
    scores them (``normalise``: mean or sum of answer-token log-likelihoods), so the in-loop
    selection and the final evaluation agree."""
    import torch

    n_opt = int(enc["n_options"])
    values = []
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        for s in range(0, len(enc["input_ids"]), batch_size):
            total, count = answer_logprob_sums(
                model, torch.as_tensor(enc["input_ids"][s:s + batch_size], device=dev),
                torch.as_tensor(enc["attention_mask"][s:s + batch_size], device=dev),
                torch.as_tensor(enc["labels"][s:s + batch_size], device=dev))
            values.append((total / count.clamp(min=1) if normalise == "mean" else total).cpu().numpy())
    model.train(was_training)
    scores = np.concatenate(values).reshape(-1, n_opt)
    return float((scores.argmax(axis=1) == enc["answers"]).mean())
