"""MixGRPO: SDE inside a sliding window of w steps, ODE elsewhere; only the window trains.

The window starts at step 0 and moves `shift` steps later every `shift_every` training
iterations, staying inside the first floor(T * timestep_fraction) steps and rolling back
to step 0 when it would leave them ("progressive" strategy with roll-back). The plan is a
function of the iteration, so a resumed run plans exactly as an uninterrupted one.

Settings from Tencent-Hunyuan/MixGRPO, scripts/finetune/finetune_flux_grpo_MixGRPO.sh
(group_size=4 steps in the window, iters_per_group=25, prog_overlap_step=1, roll_back,
timestep_fraction=0.6, init_same_noise) and the paper (Li et al., 2025, arXiv 2507.21802).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.errors import ConfigError


@dataclass
class MixGRPOConfig(AlgorithmConfig):
    name: str = "mix_grpo"
    """MixGRPO (Li et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """The reference starts a group's rollouts from one noise (init_same_noise)."""
    window: int = num(4, ge=1)
    """w: consecutive SDE (and trained) steps (cut to the span on schedules too short for it)."""
    shift_every: int = num(25, ge=1)
    """Training iterations between two moves of the window."""
    shift: int = num(1, ge=1)
    """Steps the window moves each time."""
    timestep_fraction: float = num(0.6, gt=0, le=1)
    """The window stays inside the first floor(T * fraction) steps, in (0, 1]."""


@register("mix_grpo")
class MixGRPO(Algorithm):
    Config = MixGRPOConfig
    paper = 'Li et al., 2025, "MixGRPO" (arXiv 2507.21802)'
    reference = "Tencent-Hunyuan/MixGRPO: scripts/finetune/finetune_flux_grpo_MixGRPO.sh"
    repository = "Tencent-Hunyuan/MixGRPO@e5cdd6a"
    settings = {
        "sampling.noise": Setting(
            "flow_sde",
            "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:55 (--flow_grpo_sampling); fastvideo/utils/sampling_utils.py:177",
        ),
        "sampling.noise_level": Setting(0.7, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:196 (--eta 0.7)"),
        "optim.clip_range": Setting(1e-4, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:156"),
        "optim.beta": Setting(0.0, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:56 (kl_coeff 0)"),
        "optim.minibatches": Setting(
            4, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:68,150 (12 samples a rank, 3 per step)"
        ),
        "optim.global_std": Setting(False, "fastvideo/train_grpo_flux.py:448 (per group)"),
        "optim.adv_std": Setting("unbiased", "fastvideo/train_grpo_flux.py:448 (torch .std() + 1e-8)"),
        "optim.adv_eps": Setting(1e-8, "fastvideo/train_grpo_flux.py:448"),
    }

    def span(self, table) -> int:
        """Steps the window moves in: the first floor(T * fraction) steps that have noise."""
        n = min(math.floor(table.num_steps * self.cfg.timestep_fraction), table.last_noisy_step + 1)
        if n < 1:
            raise ConfigError(f"timestep_fraction: {self.cfg.timestep_fraction} of {table.num_steps} steps is no step")
        return n

    def width(self, table) -> int:
        """The window, cut to the span on schedules too short for it."""
        return min(self.cfg.window, self.span(table))

    def trainable_steps(self, table) -> range:
        return range(self.span(table))

    def start(self, iteration: int, table) -> int:
        """The window's first step at `iteration`."""
        positions = self.span(table) - self.width(table) + 1
        return (iteration // self.cfg.shift_every) * self.cfg.shift % positions

    def plan(self, ctx: PlanContext) -> Plan:
        s, w = self.start(ctx.iteration, ctx.table), self.width(ctx.table)
        sde = self.empty(ctx)
        sde[:, s : s + w] = True
        return self.make_plan(ctx, sde)
