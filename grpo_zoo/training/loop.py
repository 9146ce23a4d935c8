"""The run loop around the iterations: the evaluation before the first step and on schedule,
checkpoints, hooks, the budget, the final evaluation and the completion record. Every way out
is recorded in status.json (grpo_zoo/training/ending.py).

RunLoop is the base of grpo_zoo.training.trainer.Trainer, which builds what the loop reads
(`cfg`, `run`, `lock`, `engine`, `meter`, `hooks`, `stateful`, `rank`, `world`, `progress`)
and implements `iteration()`.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from grpo_zoo.errors import NonFiniteError
from grpo_zoo.runs import exit_signals
from grpo_zoo.training.checkpoint import save
from grpo_zoo.training.ending import recorded
from grpo_zoo.training.evaluation import evaluate, write_eval_videos
from grpo_zoo.training.hooks import StopRun


class RunLoop:
    """The loop of a run around `iteration()`; Trainer builds what it reads (see the module docstring)."""

    # -- evaluation and checkpoints ------------------------------------------------------------
    def evaluate(self) -> dict:
        return evaluate(self)

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            **{key: part.state_dict() for key, part in self.stateful.items()},
            "torch_rng": torch.get_rng_state(),
            "last_eval": self.last_eval,  # a resumed run does not repeat a finished evaluation
            "metrics_rows": self.run.rows_written if self.rank == 0 else None,  # the rows a resume keeps
        }
        save(self.run, self.engine, self.step, self.rank, state)

    def evaluate_and_log(self) -> dict:
        row = self.evaluate()
        self.meter.tick()  # evaluation holds the devices too: a device-hour budget counts it
        self._log(row)
        if not math.isfinite(row["eval/reward"]):
            raise NonFiniteError(f"non-finite eval reward at step {self.step}")
        self.last_eval = (self.step, row)
        for hook in self.hooks:
            hook.on_eval(self, row)
        return row

    def spent(self) -> str:
        """The binding budget's numbers: what is spent of it."""
        b, total = self.cfg.budget, self.meter.total
        shares = []
        if b.flops is not None:
            shares.append((total.flops / b.flops, f"{total.flops:.3g} of {b.flops:.3g} FLOPs"))
        if b.device_hours is not None:
            hours = total.device_seconds / 3600
            shares.append((hours / b.device_hours, f"{hours:.3g} of {b.device_hours:g} device-hours"))
        if b.steps is not None:
            shares.append((self.step / b.steps, f"step {self.step} of {b.steps}"))
        return max(shares)[1] if shares else f"step {self.step}"

    def budget_fraction(self) -> float:
        """How much of the budget is spent (the largest fraction over the budgets set)."""
        return self.meter.fraction(self.cfg.budget, self.step)

    def _log(self, row: dict) -> None:
        self.meter.total.device_seconds = self.engine.broadcast_float(self.meter.total.device_seconds)
        full = {"step": self.step, **row, **self.meter.total.as_metrics()}
        if self.rank == 0:
            self.run.log(full)

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict:
        # TERM / INT raise inside; every way out is recorded in status.json (grpo_zoo/training/ending.py)
        try:
            with exit_signals(), recorded(self.run, self.rank, lambda: self.step):
                return self._train()
        finally:
            self.engine.close()
            if self.lock is not None:
                self.lock.release()

    def _train(self) -> dict:
        cfg = self.cfg
        bar = tqdm(total=cfg.budget.steps, initial=self.step, desc=cfg.algorithm.name, disable=not self.report.bar or self.rank != 0, dynamic_ncols=True)  # fmt: skip
        self.meter.pause()
        status = "completed"
        try:
            for hook in self.hooks:
                hook.on_start(self)
            if self.step == 0:
                self.evaluate_and_log()
                self.meter.pause()
            while (reason := self.meter.exhausted(cfg.budget, self.step)) is None:
                row = self.iteration()
                self.step += 1
                self.meter.tick()
                self._log(row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward/mean']:.3f}")
                self.report.iteration(self.step, row["reward/mean"], self.budget_fraction(), self.spent())
                if cfg.data.eval_every > 0 and self.step % cfg.data.eval_every == 0:
                    self.evaluate_and_log()
                for hook in self.hooks:
                    hook.after_iteration(self)
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                self.meter.pause()  # checkpoint writing and hooks are not counted (evaluation is)
        except StopRun as stop:  # a hook ended the run: keep its last evaluation
            status, reason = stop.status, stop.reason
        finally:  # the bar's line ends before any error line is printed
            bar.close()
        if self.last_eval is None or (status == "completed" and self.last_eval[0] != self.step):
            self.evaluate_and_log()
        write_eval_videos(self)
        if self.step % cfg.checkpoint_every != 0:
            self.save_checkpoint()
        checksums = self.engine.all_gather_cat(torch.tensor([self.engine.param_checksum()], dtype=torch.float64))
        summary = {
            "reason": reason,
            "ranks_in_sync": bool((checksums == checksums[0]).all()),
            "param_checksums": checksums.tolist(),
            "step": self.step,
            "eval/reward": self.last_eval[1]["eval/reward"],
            **self.meter.total.as_metrics(),
        }
        if self.rank == 0:
            self.run.complete(summary, status=status)
        return {"status": status, **summary}
