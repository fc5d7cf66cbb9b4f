"""What a method sees in one step: the batches and lazily computed, cached forward passes.

Batches hold ``[B, L]`` tensors in text positions. Everything a loss consumes is already shifted
(position t predicts token t+1), so ``logp``, ``mask`` and the weights are ``[B, L-1]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hdsu_ray.core.losses import token_logprobs


class StepView:
    """Forward passes over ``forget`` and ``retain`` batches, each computed at most once per step.

    Args:
        model: the causal LM being unlearned (possibly wrapped by DDP/DeepSpeed).
        batches: ``{"forget": {...}, "retain": {...}}``, each with ``input_ids``, ``attention_mask``,
            ``labels`` ``[B, L]`` and optional ``token_weight`` ``[B, L-1]`` (concept weights on
            targeted tokens), ``preserve_weight`` ``[B, L-1]``, ``ref_logp`` ``[B, L-1]``,
            ``ref_topk_idx``/``ref_topk_logp`` ``[B, L-1, K]``.
    """

    def __init__(self, model: Any, batches: dict[str, dict[str, Tensor]], hidden_layer: int | None = None):
        self.model, self.batches, self.hidden_layer = model, batches, hidden_layer
        self._out: dict[str, Any] = {}

    def has(self, which: str) -> bool:
        return which in self.batches

    def batch(self, which: str) -> dict[str, Tensor]:
        return self.batches[which]

    def _forward(self, which: str):
        if which not in self._out:
            b = self.batches[which]
            self._out[which] = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                          output_hidden_states=self.hidden_layer is not None)
        return self._out[which]

    def logits(self, which: str) -> Tensor:
        """``[B, L-1, V]`` next-token logits."""
        return self._forward(which).logits[:, :-1].float()

    def logp(self, which: str) -> tuple[Tensor, Tensor]:
        """``(logp, mask)`` ``[B, L-1]``: log-prob of each label token and where a label exists."""
        key = f"logp:{which}"
        if key not in self._out:
            self._out[key] = token_logprobs(self.logits(which), self.batches[which]["labels"][:, 1:])
        return self._out[key]

    def option_scores(self, which: str = "forget") -> tuple[Tensor, Tensor, Tensor]:
        """``(scores [B, K], answer [B], valid [B, K])`` for the answer options of ``which``'s
        questions (batch ``"<which>_options"``): each option's mean answer-token log-likelihood,
        the score the evaluation ranks options by."""
        from hdsu_ray.core.losses import option_scores

        b = self.batches[f"{which}_options"]
        logp, mask = self.logp(f"{which}_options")
        return option_scores(logp, mask, b["valid"].shape[1]), b["answer"], b["valid"]

    def concept_option_scores(self, which: str = "forget") -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`option_scores` with the right option scored by its tokens' concept weights, and
        each question's weight (its row's strongest concept weight); the plain scores and
        ``None`` when the batch has no concept weights."""
        from hdsu_ray.core.losses import concept_weighted_scores

        scores, answer, valid = self.option_scores(which)
        if "token_weight" not in self.batches[which]:
            return scores, answer, valid, None
        logp, mask = self.logp(f"{which}_options")
        rows = torch.arange(len(answer), device=answer.device) * valid.shape[1] + answer
        # The right option's row is the question's own text (same tokens, same positions), so the
        # row's token weights line up with it; the two batches are only trimmed to other widths.
        tw = self.batches[which]["token_weight"]
        width = min(tw.shape[1], logp.shape[1])
        weights = torch.zeros_like(logp[rows])
        weights[:, :width] = tw[:, :width]
        scores = concept_weighted_scores(scores, answer, logp[rows], mask[rows], weights)
        return scores, answer, valid, tw.max(dim=-1).values

    def weights(self, which: str, token_weights: bool) -> Tensor:
        """Uniform weights on label tokens, or the concept weights when ``token_weights``."""
        _, mask = self.logp(which)
        if token_weights and "token_weight" in self.batches[which]:
            return self.batches[which]["token_weight"] * mask
        return mask.float()

    def hidden(self, which: str) -> Tensor:
        """``[B, L, H]`` hidden states after layer ``hidden_layer`` (RMU)."""
        return self._forward(which).hidden_states[self.hidden_layer]

    def label_mask(self, which: str) -> Tensor:
        return (self.batches[which]["labels"] != -100).to(torch.float32)
