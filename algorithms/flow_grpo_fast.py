"""Flow-GRPO-Fast: SDE in a window of w consecutive steps, ODE elsewhere; train the window.

The window's start is drawn uniformly from `window_start_range` for every trajectory.
"Flow-GRPO-Fast1" is w = 1: one SDE step per trajectory, drawn per sample, unrectified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, register
from grpo_zoo.errors import ConfigError


@dataclass
class FlowGRPOFastConfig(AlgorithmConfig):
    name: str = "flow_grpo_fast"
    """Flow-GRPO-Fast: a short SDE window per trajectory."""
    window: int = num(2, ge=1)
    """w: number of consecutive SDE (and trained) steps; 1 gives Flow-GRPO-Fast1."""
    window_start_range: list[int] | None = num(None, ge=0)
    """[lo, hi]: the window starts at a step drawn uniformly in lo..hi (inclusive);
    null means every start that keeps the window on steps with noise."""

    def validate(self) -> None:
        r = self.window_start_range
        if r is not None and (len(r) != 2 or r[0] > r[1]):
            raise ConfigError(f"window_start_range: expected [lo, hi] with 0 <= lo <= hi, got {r}")


@register("flow_grpo_fast")
class FlowGRPOFast(Algorithm):
    Config = FlowGRPOFastConfig
    paper = 'Liu et al., 2025, "Flow-GRPO" (arXiv 2505.05470), its Fast variant'
    reference = "yifan123/flow_grpo: scripts/train_wan2_1.py"

    def starts(self, table) -> tuple[int, int]:
        w, num_steps = self.cfg.window, table.num_steps
        if w > num_steps:
            raise ConfigError(f"window: {w} steps is longer than the {num_steps}-step schedule")
        lo, hi = self.cfg.window_start_range or (0, table.last_noisy_step + 1 - w)
        if hi + w > num_steps:
            raise ConfigError(
                f"window_start_range: a window of {w} starting at {hi} ends past the "
                f"{num_steps}-step schedule; keep the start at most {num_steps - w}"
            )
        return lo, hi

    def trainable_steps(self, table) -> range:
        lo, hi = self.starts(table)
        return range(lo, hi + self.cfg.window)

    def plan(self, ctx: PlanContext) -> Plan:
        lo, hi = self.starts(ctx.table)
        start = torch.randint(lo, hi + 1, (ctx.batch_size,), generator=ctx.gen)
        steps = torch.arange(ctx.table.num_steps)
        sde = (steps >= start[:, None]) & (steps < start[:, None] + self.cfg.window)
        return self.make_plan(ctx, sde)
