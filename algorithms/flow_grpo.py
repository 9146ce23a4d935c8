"""Flow-GRPO: SDE at every step; train the first floor(T * timestep_fraction) transitions."""

from __future__ import annotations

import math
from dataclasses import dataclass

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.errors import ConfigError


@dataclass
class FlowGRPOConfig(AlgorithmConfig):
    name: str = "flow_grpo"
    """Flow-GRPO (Liu et al., 2025)."""
    timestep_fraction: float = num(0.99, gt=0, le=1)
    """Train the first floor(T * fraction) transitions of every trajectory, in (0, 1]."""


@register("flow_grpo")
class FlowGRPO(Algorithm):
    Config = FlowGRPOConfig
    paper = 'Liu et al., 2025, "Flow-GRPO" (arXiv 2505.05470)'
    reference = "yifan123/flow_grpo: scripts/train_wan2_1.py"
    repository = "yifan123/flow_grpo@31c71b9"
    settings = {
        # its Wan config (config/grpo.py, general_ocr_wan2_1) and trainer (scripts/train_wan2_1.py)
        "sampling.noise": Setting(
            "wan_linear",
            "scripts/train_wan2_1.py@74db691's Wan pipeline: std = sigma_min + (sigma_max - sigma_min) sigma (its file is not in the stored index; Shredded-Pork/Flash-GRPO@4211013 flow_grpo/diffusers_patch/wan2_1_pipeline_with_logprob2.py:51 carries the same step)",
        ),
        "sampling.noise_level": Setting(1.0, "the same line (the formula has no scale)"),
        "algorithm.timestep_fraction": Setting(0.99, "config/grpo.py:52"),
        "optim.clip_range": Setting(1e-3, "config/grpo.py:56"),
        "optim.beta": Setting(0.004, "config/grpo.py:54"),
        "optim.minibatches": Setting(2, "config/grpo.py:45,50 (2 sampling batches, one optimizer step each)"),
        "optim.global_std": Setting(False, "config/grpo.py:64"),
        "optim.adv_std": Setting("population", "flow_grpo/stat_tracking.py (np.std(rewards) + 1e-4)"),
        "optim.adv_eps": Setting(1e-4, "flow_grpo/stat_tracking.py"),
        "optim.weight_decay": Setting(
            1e-4, "config/base.py:69 at ac4c86e (train.adam_weight_decay = 1e-4, every commit since 39d3d2c)"
        ),
        "optim.ema_decay": Setting(
            0.9,
            "scripts/train_wan2_1.py@74db691 (EMAModuleWrapper(decay=0.9, update_step_interval=8); evaluation and checkpoints use it)",
        ),
        "optim.ema_every": Setting(8, "scripts/train_wan2_1.py@74db691 (update_step_interval=8)"),
    }

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
