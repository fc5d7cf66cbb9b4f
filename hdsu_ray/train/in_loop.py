"""Evaluate-and-select inside the unlearning loop.

Every ``every`` steps the model is scored on the bundle's ``eval`` arrays (the forget sample and
retain validation rows, never rows that are reported) and the checkpoint with the best selection
objective is kept. Every rank computes the same numbers, which keeps ZeRO-3's collective forward
passes in step and makes the early-stop decision identical everywhere.
"""

from __future__ import annotations

from hdsu_ray.eval.selection import evaluation_steps, objective
from hdsu_ray.train.jobs import InLoopSettings


class InLoopEval:
    def __init__(self, arrays: dict | None, cfg: InLoopSettings, model):
        self.arrays, self.cfg, self.model = arrays, cfg, model
        self.every = (cfg.every or cfg.candidates) if arrays else 0
        self.best_obj, self.best_state, self.best_step = None, None, None
        self.base_retain = self._accuracy("retain") if self.every else None

    def _accuracy(self, which: str) -> float:
        from hdsu_ray.eval.mcq import accuracy_encoded

        return accuracy_encoded(self.model, self.arrays[which], normalise=self.cfg.normalise)

    def due(self, step: int, steps: int) -> bool:
        if not self.every:
            return False
        if self.cfg.candidates:  # the same number of candidates whatever the run's length
            return step + 1 in evaluation_steps(steps, self.cfg.candidates)
        return (step + 1) % self.cfg.every == 0 or step == steps - 1

    def after_step(self, step: int, steps: int, record: dict, adapter) -> bool:
        """Score the model when due, remember the best state; True when unlearning should stop."""
        if not self.due(step, steps):
            return False
        fa, ra = self._accuracy("forget"), self._accuracy("retain")
        kp = ra / self.base_retain if self.base_retain else 0.0
        value = objective(self.cfg.select, 1.0 - fa, kp)
        record.update(eval_forget_accuracy=fa, eval_retain_accuracy=ra, objective=value)
        if self.cfg.select != "last" and (self.best_obj is None or value > self.best_obj):
            self.best_obj, self.best_state, self.best_step = value, adapter.state_dict(), step
        target = self.cfg.stop_at_forget_accuracy
        return target is not None and fa <= target

    def restore_best(self, adapter) -> None:
        if self.best_state is not None:
            adapter.load_state_dict(self.best_state)
