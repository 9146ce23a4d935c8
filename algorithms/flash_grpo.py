"""Flash-GRPO: one SDE step per trajectory, iso-temporal grouping, rectified gradients.

Every rollout is ODE except step k, the only trained transition. With iso-temporal
grouping all G rollouts of a prompt share k (so a group's reward spread comes from the
policy, not from the timestep) and prompts draw k independently; the `per_sample`
ablation draws k per trajectory. Rectification weights the transition by
c(k) = 1 / lambda(t_k), which the shared loss divides by the batch mean of c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, register
from grpo_zoo.errors import ConfigError


@dataclass
class FlashGRPOConfig(AlgorithmConfig):
    name: str = "flash_grpo"
    """Flash-GRPO (ICML 2026)."""
    grouping: Literal["iso_temporal", "per_sample"] = "iso_temporal"
    """iso_temporal: one k per prompt group, shared by its G rollouts; per_sample: k per trajectory."""
    rectify: bool = True
    """Weight each transition by c(k) = 1/lambda(t_k), normalised by the batch mean."""
    k_range: list[int] | None = num(None, ge=0)
    """[lo, hi]: k is drawn uniformly from steps lo..hi (inclusive); null means every step with noise."""

    def validate(self) -> None:
        r = self.k_range
        if r is not None and (len(r) != 2 or r[0] > r[1]):
            raise ConfigError(f"k_range: expected [lo, hi] with 0 <= lo <= hi, got {r}")


@register("flash_grpo")
class FlashGRPO(Algorithm):
    Config = FlashGRPOConfig
    paper = '"Flash-GRPO" (ICML 2026)'
    reference = "Shredded-Pork/Flash-GRPO: scripts/train_wanx2_1_flash.py"

    def trainable_steps(self, table) -> range:
        num_steps = table.num_steps
        lo, hi = self.cfg.k_range or (0, table.last_noisy_step)
        if hi >= num_steps:
            raise ConfigError(f"k_range: step {hi} lies outside the {num_steps}-step schedule (0..{num_steps - 1})")
        return range(lo, hi + 1)

    def plan(self, ctx: PlanContext) -> Plan:
        candidates = torch.tensor(list(self.trainable_steps(ctx.table)))
        iso = self.cfg.grouping == "iso_temporal"
        k = candidates[torch.randint(len(candidates), (ctx.num_prompts if iso else ctx.batch_size,), generator=ctx.gen)]
        if iso:
            k = k.repeat_interleave(ctx.group_size)
        rows = torch.arange(ctx.batch_size)
        sde = self.empty(ctx)
        sde[rows, k] = True
        c = ctx.table.inv_lam[k] if self.cfg.rectify else torch.ones(ctx.batch_size, dtype=torch.float64)
        weight = torch.zeros(sde.shape, dtype=torch.float64)
        weight[rows, k] = c
        return self.make_plan(ctx, sde, weight=weight)
