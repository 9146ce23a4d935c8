"""Flow-GRPO: SDE at every step; train the first floor(T * timestep_fraction) transitions."""

from __future__ import annotations

import math
from dataclasses import dataclass

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, register
from grpo_zoo.errors import ConfigError


@dataclass
class FlowGRPOConfig(AlgorithmConfig):
    name: str = "flow_grpo"
    """Flow-GRPO (Liu et al., 2025)."""
    timestep_fraction: float = num(0.6, gt=0, le=1)
    """Train the first floor(T * fraction) transitions of every trajectory, in (0, 1]."""


@register("flow_grpo")
class FlowGRPO(Algorithm):
    Config = FlowGRPOConfig
    paper = 'Liu et al., 2025, "Flow-GRPO" (arXiv 2505.05470)'
    reference = "yifan123/flow_grpo: scripts/train_wan2_1.py"

    def trainable_steps(self, table) -> range:
        num_steps = table.num_steps
        n = math.floor(num_steps * self.cfg.timestep_fraction)
        if n < 1:
            raise ConfigError(
                f"timestep_fraction: {self.cfg.timestep_fraction} of {num_steps} steps trains no step; raise it"
            )
        return range(n)

    def plan(self, ctx: PlanContext) -> Plan:
        sde = self.empty(ctx)
        sde[:] = ctx.table.step_std > 0  # explore at every step that has noise
        train = self.empty(ctx)
        train[:, self.trainable_steps(ctx.table)] = True
        return self.make_plan(ctx, sde, train)
