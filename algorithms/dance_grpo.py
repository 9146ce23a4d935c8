"""DanceGRPO: SDE at every step but the last, a random subset of each trajectory's steps trained.

Paper: Xue et al., "DanceGRPO: Unleashing GRPO on Visual Generation", 2025, arXiv 2505.07818.
Settings from XueZeyue/DanceGRPO, fastvideo/train_grpo_flux.py (`flux_step`,
`sample_reference_model`, `train_one_step`) and scripts/finetune/finetune_flux_grpo.sh
(`--eta 0.3 --timestep_fraction 0.6 --init_same_noise`). The video trainer,
fastvideo/train_grpo_hunyuan.py, is not in our index; unattributed copies of it and of its
Hunyuan and Wan 2.1 launch scripts show the same step, the same per-sample step subsets and
fraction 0.6, and differ in the reward (VideoAlign), eta (0.25 for Hunyuan, 0.3 for Wan)
and best-of-N selection (below).

What the reference does, and what this plan does:

- Every step is stochastic with a constant noise level: std_dev_t = eta * sqrt(-dt), the
  marginal-preserving reverse SDE with std_t = eta. That is the noise kind `constant`
  (grpo_zoo/flow/sde.py); the run selects it, since noise is a sampling setting:
  `sampling.noise: constant` (its default level, 0.3, is the reference's eta), as in
  experiments/toy/dance_grpo.yaml. Under another noise kind the plan is the same.
- The last step's transition is never trained (the reference drops it from the samples)
  and its output is never used (the decoded image is the clean prediction x - sigma * v
  made at the last step, which is the ODE step to sigma = 0): so here the last step is
  ODE and the trained steps are drawn from steps 0 .. T-2.
- Each trajectory trains its own random floor((T - 1) * timestep_fraction) of those steps,
  drawn afresh every iteration: the reference draws a permutation of the steps per sample
  (`torch.randperm` once per row of the batch) and trains its first
  int(len * timestep_fraction). The subset is NOT shared by the group or the batch.
- The G rollouts of a prompt start from one noise (`init_same_noise`): `initial_noise`
  defaults to shared, so a group shares x_0 and the velocity at step 0, and every row
  draws its own noise from step 0 on.
- Advantages: GRPO's group advantage of the row's reward, given to every trained step of
  the row (the shared `advantages`; the reference divides by the unbiased std + 1e-8, the
  bench by the population std + 1e-4 for every algorithm).
- Several rewards (the video trainer's VideoAlign visual and motion quality with vq_coef /
  mq_coef, fastvideo/train_grpo_hunyuan.py:443-477): `reward.aggregate` defaults to `losses`
  here, so under `reward.name: {entry: coefficient}` each entry is normalised within the
  group on its own and clipped to +-adv_clip, the PPO-clip loss is computed per reward with
  the one shared ratio and the losses summed with the coefficients (advantages [N, K] to the
  objective: the sum of K clipped losses, not the clipped loss of summed advantages;
  grpo_zoo/core/advantages.py `aggregate`). The reference's defaults (vq_coef 1, mq_coef 0)
  train on one reward.

Not reproduced:

- Best-of-N (`--bestofn 8` of 24 rollouts in the Hunyuan script: train only the 4 best and
  4 worst rows): the plan is made before the rewards exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.errors import ConfigError


@dataclass
class DanceGRPOConfig(AlgorithmConfig):
    name: str = "dance_grpo"
    """DanceGRPO (Xue et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """The reference starts a group's rollouts from one noise (init_same_noise)."""
    timestep_fraction: float = num(0.6, gt=0, le=1)
    """Each trajectory trains a random floor((T - 1) * fraction) of steps 0..T-2 (at least one), in (0, 1]."""


@register("dance_grpo")
class DanceGRPO(Algorithm):
    Config = DanceGRPOConfig
    paper = 'Xue et al., 2025, "DanceGRPO" (arXiv 2505.07818)'
    reference = "XueZeyue/DanceGRPO: fastvideo/train_grpo_flux.py"
    repository = "XueZeyue/DanceGRPO@15cc71d"
    settings = {
        "sampling.noise": Setting("constant", "fastvideo/train_grpo_hunyuan.py:74 (std = eta sqrt(dt))"),
        "sampling.noise_level": Setting(0.3, "scripts/finetune/finetune_wan_2_1_grpo.sh:41 (--eta 0.3; Hunyuan 0.25)"),
        "algorithm.timestep_fraction": Setting(0.6, "fastvideo/train_grpo_hunyuan.py:413,431"),
        "optim.clip_range": Setting(
            1e-4, "fastvideo/train_grpo_hunyuan.py:434 (hard-coded); finetune_wan_2_1_grpo.sh:53"
        ),
        "optim.beta": Setting(0.0, "fastvideo/train_grpo_hunyuan.py (no KL term)"),
        "optim.adv_clip": Setting(5.0, "fastvideo/train_grpo_hunyuan.py:435"),
        "optim.minibatches": Setting(
            1,
            "scripts/finetune/finetune_wan_2_1_grpo.sh:24,29 (gradient accumulation over every sample: one step a rollout)",
        ),
        "optim.global_std": Setting(False, "fastvideo/train_grpo_hunyuan.py:379 (per group)"),
        "optim.adv_std": Setting("unbiased", "fastvideo/train_grpo_hunyuan.py:379 (group_rewards.std() + 1e-8)"),
        "optim.adv_eps": Setting(1e-8, "fastvideo/train_grpo_hunyuan.py:379"),
        "optim.weight_decay": Setting(1e-4, "scripts/finetune/finetune_wan_2_1_grpo.sh:45 (--weight_decay 0.0001)"),
        "reward.aggregate": Setting(
            "losses", "fastvideo/train_grpo_hunyuan.py:477 (final_loss = vq_coef * vq_loss + mq_coef * mq_loss)"
        ),
    }

    def trainable_steps(self, table) -> range:
        """Steps before the last that have noise (cps has none at the last step anyway)."""
        n = min(table.num_steps - 1, table.last_noisy_step + 1)
        if n < 1:
            raise ConfigError(
                f"timestep_fraction: DanceGRPO trains noisy steps before the last one and a "
                f"{table.num_steps}-step schedule under {table.kind!r} has none; raise sampling.steps"
            )
        return range(n)

    def num_trained(self, table) -> int:
        """floor(len(pool) * fraction), at least one step on short schedules."""
        return max(1, math.floor(len(self.trainable_steps(table)) * self.cfg.timestep_fraction))

    def plan(self, ctx: PlanContext) -> Plan:
        pool = self.trainable_steps(ctx.table)
        sde = self.empty(ctx)
        sde[:, pool] = True  # every step but the last: SDE
        # a random permutation of the pool per trajectory; its first n steps train
        perm = torch.rand(ctx.batch_size, len(pool), generator=ctx.gen).argsort(dim=1)
        train = self.empty(ctx)
        train.scatter_(1, perm[:, : self.num_trained(ctx.table)] + pool.start, True)
        return self.make_plan(ctx, sde, train)
