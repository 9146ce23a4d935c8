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
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
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
    """[lo, hi]: k is drawn uniformly from steps lo..hi (inclusive); null: the first half of the
    steps, the reference's rule (0..T/2 - 1)."""

    def validate(self) -> None:
        r = self.k_range
        if r is not None and (len(r) != 2 or r[0] > r[1]):
            raise ConfigError(f"k_range: expected [lo, hi] with 0 <= lo <= hi, got {r}")


@register("flash_grpo")
class FlashGRPO(Algorithm):
    Config = FlashGRPOConfig
    paper = '"Flash-GRPO" (ICML 2026)'
    reference = "Shredded-Pork/Flash-GRPO: scripts/train_wanx2_1_flash.py"
    repository = "Shredded-Pork/Flash-GRPO@4211013"
    settings = {
        "sampling.noise": Setting("wan_linear", "flow_grpo/diffusers_patch/wan2_1_pipeline_with_logprob2.py:51"),
        "sampling.noise_level": Setting(1.0, "the same line (the formula has no scale)"),
        "algorithm.k_range": Setting(
            None,
            "scripts/train_wanx2_1_flash.py:697 (weights = [1] * 10 of 20 steps): null is that rule, k in the first half of the steps",
        ),
        "optim.clip_range": Setting(1e-3, "config/dgx.py:55"),
        "optim.beta": Setting(0.0, "config/dgx.py:53"),
        "optim.minibatches": Setting(
            2, "scripts/train_wanx2_1_flash.py:940,1032 (an optimizer step per half of the samples)"
        ),
        "optim.global_std": Setting(True, "config/dgx.py:63"),
        "optim.adv_std": Setting("population", "flow_grpo/stat_tracking.py:28 (np.std + 1e-4)"),
        "optim.adv_eps": Setting(1e-4, "flow_grpo/stat_tracking.py:28"),
        "optim.weight_decay": Setting(
            1e-4, "config/base.py:76 (train.adam_weight_decay = 1e-4; config/dgx.py keeps it)"
        ),
        "optim.ema_decay": Setting(0.9, "scripts/train_wanx2_1_flash.py:488 (evaluated: :251)"),
        "optim.ema_every": Setting(8, "scripts/train_wanx2_1_flash.py:488 (update_step_interval=8)"),
    }

    def trainable_steps(self, table) -> range:
        num_steps = table.num_steps
        # null: the reference's rule, the first half of the steps (10 of 20: train_wanx2_1_flash.py:697)
        lo, hi = self.cfg.k_range or (0, max(0, min(num_steps // 2 - 1, table.last_noisy_step)))
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
