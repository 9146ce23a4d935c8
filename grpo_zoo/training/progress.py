"""What a person and a job's log read while a run trains (rank 0, on stderr).

One line as the run starts (what runs, on what, with which budget, from which step), once every
check has passed and the weights are in place (seconds for the toy; a bad input stays one line of
its own), then, at the first iteration and every `logging.progress_every` seconds after, one line
with the step, the training reward, the share of the budget spent (the binding budget's numbers)
and an ETA. On a terminal with `progress` the tqdm bar replaces the lines; a SLURM job's log or a
pipe gets the lines (a bar's carriage returns make no log).
"""

from __future__ import annotations

import sys
import time


def budget_words(budget) -> str:
    parts = []
    if budget.flops is not None:
        parts.append(f"{budget.flops:.3g} training FLOPs")
    if budget.device_hours is not None:
        parts.append(f"{budget.device_hours:g} device-hours")
    if budget.steps is not None:
        parts.append(f"{budget.steps} iterations")
    return " or ".join(parts) or "no limit"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    def __init__(self, cfg, rank: int, bar: bool):
        self.cfg, self.rank = cfg, rank
        self.bar = bar and sys.stderr.isatty()
        self.every = cfg.logging.progress_every
        self.began: float | None = None
        self.start_fraction = 0.0
        self.last: float | None = None

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(f"{self.cfg.run_dir}: {text}", file=sys.stderr, flush=True)

    def start(self, step: int, where: str) -> None:
        """The first line, once every check has passed (a bad input stays one line of its own)."""
        c = self.cfg
        self.say(
            f"{c.algorithm.name} (seed {c.seed}) on {c.model.backend}:{c.model.path}, {where}, "
            f"budget {budget_words(c.budget)}, {'resuming at step ' + str(step) if step else 'starting'}"
        )

    def iteration(self, step: int, reward: float, fraction: float, spent: str) -> None:
        now = time.monotonic()
        if self.began is None:
            self.began, self.start_fraction = now, fraction
        if self.bar or (self.last is not None and now - self.last < self.every):
            return
        self.last = now
        done = fraction - self.start_fraction
        eta = (now - self.began) * (1 - fraction) / done if done > 0 and fraction < 1 else None
        when = f", ETA {duration(eta)}" if eta is not None else ""
        self.say(f"step {step}: reward {reward:.4f}, {min(fraction, 1):.0%} of the budget ({spent}){when}")
