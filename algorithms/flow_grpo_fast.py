"""Flow-GRPO-Fast: SDE in a window of w consecutive steps, ODE elsewhere; train the window.

The window's start is drawn uniformly from `window_start_range` for every trajectory.
"Flow-GRPO-Fast1" is w = 1: one SDE step per trajectory, drawn per sample, unrectified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.errors import ConfigError


@dataclass
class FlowGRPOFastConfig(AlgorithmConfig):
    name: str = "flow_grpo_fast"
    """Flow-GRPO-Fast: a short SDE window per trajectory."""
    window: int = num(2, ge=1)
    """w: number of consecutive SDE (and trained) steps; 1 gives Flow-GRPO-Fast1."""
    window_start_range: list[int] | None = num(None, ge=0)
    """[lo, hi]: the window starts at a step drawn uniformly in lo..hi (inclusive); null: the
    reference's rule, a window inside the first half of the steps (start 0..T/2 - window)."""

    def validate(self) -> None:
        r = self.window_start_range
        if r is not None and (len(r) != 2 or r[0] > r[1]):
            raise ConfigError(f"window_start_range: expected [lo, hi] with 0 <= lo <= hi, got {r}")


@register("flow_grpo_fast")
class FlowGRPOFast(Algorithm):
    Config = FlowGRPOFastConfig
    paper = 'Liu et al., 2025, "Flow-GRPO" (arXiv 2505.05470), its Fast variant'
    reference = "yifan123/flow_grpo: scripts/train_wan2_1.py"
    repository = "yifan123/flow_grpo@31c71b9"
    settings = {
        # the Fast configs (config/grpo.py, pickscore_sd3_fast_nocfg); Wan has no Fast config
        "sampling.noise": Setting("cps", "config/grpo.py (pickscore_sd3_fast_nocfg: sample.sde_type = 'cps')"),
        "sampling.noise_level": Setting(0.8, "config/grpo.py (pickscore_sd3_fast_nocfg: sample.noise_level = 0.8)"),
        "algorithm.window_start_range": Setting(
            None,
            "config/grpo.py (sde_window_range = (0, num_steps // 2)): null is that rule, a start in 0 .. T/2 - window",
        ),
        "optim.clip_range": Setting(1e-5, "config/grpo.py (pickscore_sd3_fast_nocfg: train.clip_range = 1e-5)"),
        "optim.beta": Setting(0.0, "config/grpo.py (pickscore_sd3_fast_nocfg: train.beta = 0)"),
        "optim.minibatches": Setting(2, "config/grpo.py (2 sampling batches a epoch, one optimizer step each)"),
        "optim.global_std": Setting(True, "config/grpo.py (pickscore_sd3_fast_nocfg: sample.global_std = True)"),
        "optim.adv_std": Setting("population", "flow_grpo/stat_tracking.py (np.std + 1e-4)"),
        "optim.adv_eps": Setting(1e-4, "flow_grpo/stat_tracking.py"),
        "optim.weight_decay": Setting(1e-4, "config/base.py:69 at ac4c86e (train.adam_weight_decay = 1e-4)"),
        "optim.ema_decay": Setting(
            0.9, "scripts/train_sd3_fast.py@74db691 (EMAModuleWrapper(decay=0.9, update_step_interval=8))"
        ),
        "optim.ema_every": Setting(8, "scripts/train_sd3_fast.py@74db691 (update_step_interval=8)"),
    }

    def starts(self, table) -> tuple[int, int]:
        w, num_steps = self.cfg.window, table.num_steps
        if w > num_steps:
            raise ConfigError(f"window: {w} steps is longer than the {num_steps}-step schedule")
        # null: the reference's sde_window_range = (0, T // 2), a start in 0 .. T // 2 - w (at least 0)
        lo, hi = self.cfg.window_start_range or (0, max(0, min(num_steps // 2, table.last_noisy_step + 1) - w))
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
