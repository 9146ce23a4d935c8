"""Flow-GRPO: SDE at every step; train the first floor(T * timestep_fraction) transitions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grpo_zoo.algorithm import Algorithm, AlgorithmConfig, Plan, register
from grpo_zoo.errors import ConfigError


@dataclass
class FlowGRPOConfig(AlgorithmConfig):
    name: str = "flow_grpo"
    """Flow-GRPO (Liu et al., 2025)."""
    timestep_fraction: float = 0.6
    """Train the first floor(T * fraction) transitions of every trajectory, in (0, 1]."""

    def validate(self) -> None:
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"timestep_fraction: must lie in (0, 1], got {self.timestep_fraction}")


@register("flow_grpo")
class FlowGRPO(Algorithm):
    Config = FlowGRPOConfig

    def trainable_steps(self, table) -> range:
        num_steps = table.num_steps
        n = math.floor(num_steps * self.cfg.timestep_fraction)
        if n < 1:
            raise ConfigError(
                f"timestep_fraction: {self.cfg.timestep_fraction} of {num_steps} steps trains no step; raise it"
            )
        return range(n)

    def plan(self, num_prompts: int, group_size: int, table, gen: torch.Generator) -> Plan:
        b, t = num_prompts * group_size, table.num_steps
        sde, train, weight = self._empty(b, t)
        sde[:] = table.step_std > 0  # explore at every step that has noise
        train[:, self.trainable_steps(table)] = True
        weight[train] = 1.0
        return Plan(sde, train, weight, group_size, self.cfg.initial_noise == "shared")
