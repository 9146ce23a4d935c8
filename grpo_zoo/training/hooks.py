"""Hooks watch a run from inside the training loop (tuning reports, early stopping); each
method gets the grpo_zoo.training.trainer.Trainer that runs it."""

from __future__ import annotations


class StopRun(Exception):
    """Raised by a hook to end a run early but cleanly (e.g. a pruned tuning trial)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class Hook:
    """Watches a run from inside the loop (tuning reports, early stopping). Hooks may call
    `trainer.evaluate_and_log()` and raise StopRun; they never change what is trained."""

    def on_start(self, trainer) -> None:
        """Once, before the first iteration of this process (after any resume)."""

    def on_eval(self, trainer, row: dict) -> None:
        """After every logged evaluation (including the one before the first step)."""

    def after_iteration(self, trainer) -> None:
        """After every iteration, its row and any scheduled evaluation logged."""
