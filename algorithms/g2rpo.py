"""G2RPO (Granular-GRPO): one SDE step per rollout, a group that differs only in its noise.

Paper: Zhou et al., "G2RPO: Granular GRPO for Precise Reward in Flow Models", 2025,
arXiv 2510.01982 ("Singular Stochastic Sampling", "Multi-Granularity Advantage Integration").
Settings from bcmi/Granular-GRPO, fastvideo/train_g2rpo_hps.py (commit ef6ec9f:
`run_anchor_sample_step`, `run_sde_sample_step`, `run_ode_sample_step`,
`sample_reference_model`, `train_one_step`) and scripts/finetune/finetune_g2rpo_hps.sh
(16 steps, shift 3, `--eta 0.7`, 12 rollouts per prompt, `--init_same_noise`,
`--eta_step_list 0 1 2 3 4 5 6 7`, `--granular_list 1 2`).

The reference, per prompt and iteration: one ODE trajectory (the anchor) from the group's
shared initial noise; for every step s of eta_step_list, G rows take ONE SDE step from the
anchor's x_s (Flow-GRPO's noise, eta 0.7: our `flow_sde` at its default level), each with
its own noise, and are then denoised by the ODE at every granularity g of granular_list
(after the step to sigma_{s+2}, every g-th sigma of the schedule; the last step jumps to
the clean prediction). The reward of each (row, s, g) is normalised over the G rows; the
advantage of the SDE transition (row, s) is the SUM over g; one optimizer step per s.

This plan:

- One SDE step per rollout, at the branch step s, ODE at every other step.
- A group of G rows is n = G / K noise draws times the K granularities (granularities,
  default [1, 2] as the reference's granular_list; it must contain 1). Row i * K of a
  prompt's group (draw i at granularity 1) takes the SDE step and trains it; the draw's
  other K - 1 rows share its prefix and its transition at s and leave it at s + 2 (the
  reference's `prefix = sigma_schedule[:eta_step + 2]`), then run the model at every g-th
  step of the table (`suffix = sigma_schedule[eta_step + 2::g]`: Plan.stride = g), holding
  the data prediction in between (grpo_zoo/flow/multistep.py). Where that grid misses
  sigma = 0, the reference returns the clean prediction of its second-to-last node without
  a model call at the last one; so does Plan.skips(). So the reference's 12 rollouts at [1, 2] are
  `data.group_size: 24` here (12 draws x 2), and each row is one decoded video.
- The n draws share the initial noise, the ODE prefix x_0 .. x_s (the anchor's) and the
  velocity at s, computed once (`parent`, `branch_at`); they differ only in the noise drawn
  at s. `initial_noise: independent` is an ablation (each draw from its own noise).
- Advantages (Multi-Granularity Advantage Integration): for each granularity, the draws'
  rewards are normalised within the prompt's n draws; the advantage of draw i's trained
  transition is the SUM over granularities, clipped to +-adv_clip (the reference's
  `advantages += group_advantages`, then the clamp). The bench normalises by the population
  std + 1e-4, the reference by the unbiased std + 1e-8.
- s is a function of the iteration: branch_steps[iteration % len(branch_steps)], the same
  for every prompt and rank, as the reference takes one optimizer step per s over all
  prompts; in len(branch_steps) iterations every step of the list is trained once. The
  reference trains all of them on the same prompts in one iteration (8 x G rollouts and
  8 optimizer steps per prompt batch, steps 2-8 off-policy: they reuse the log-probs recorded
  before the first update, under its clip of 1e-4); here each iteration rolls out G per prompt
  and its one optimizer step is on-policy.
- branch_steps defaults to the first half of the schedule (the reference's 0..7 of 16).

Not reproduced (and why):

- Several rewards (train_g2rpo_hps_clip.py and the other stored version of
  train_g2rpo_hps.py, commit 04ee954, add a CLIP score's advantages to HPS's): not in this
  file; DanceGRPO's `rewards` option shows how an algorithm sums per-reward advantages.
- The training forward: the reference runs the policy once at the shared x_s and reuses
  the velocity for all G rows; the shared PPO-clip objective runs one forward per trained
  transition, so the update counts n forwards (and backwards) per group instead of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.advantages import ctx_norm, normalize_within
from grpo_zoo.core.algorithm import AdvantageContext, Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.errors import ConfigError


@dataclass
class G2RPOConfig(AlgorithmConfig):
    name: str = "g2rpo"
    """G2RPO, Granular-GRPO (Zhou et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """shared (the reference): a group's rows share the ODE prefix and differ only in the noise of their SDE step."""
    branch_steps: list[int] | None = num(None, ge=0)
    """Steps of the one SDE step, taken in turn (iteration i uses entry i mod len); null: steps 0..floor(T/2)-1
    that have noise (the reference's 0..7 of 16)."""
    granularities: list[int] = num(default_factory=lambda: [1, 2], ge=1)
    """Step granularities the rest is denoised at after s + 2 (1 must be one; the reference's granular_list);
    data.group_size is the number of noise draws times their count."""

    def validate(self) -> None:
        steps = self.branch_steps
        if steps is not None and (not steps or len(set(steps)) != len(steps)):
            raise ConfigError(f"branch_steps: expected distinct steps >= 0, got {steps}")
        g = self.granularities
        if not g or 1 not in g or len(set(g)) != len(g):
            raise ConfigError(f"granularities: expected distinct step strides >= 1 including 1, got {g}")


@register("g2rpo")
class G2RPO(Algorithm):
    Config = G2RPOConfig
    paper = 'Zhou et al., 2025, "G2RPO" (arXiv 2510.01982)'
    reference = "bcmi/Granular-GRPO: fastvideo/train_g2rpo_hps.py"
    repository = "bcmi/Granular-GRPO@04ee954"
    settings = {
        "sampling.noise": Setting("flow_sde", "fastvideo/train_g2rpo_hps.py (flow_grpo_step)"),
        "sampling.noise_level": Setting(0.7, "scripts/finetune/finetune_g2rpo_hps.sh:30 (--eta 0.7)"),
        "optim.clip_range": Setting(1e-4, "scripts/finetune/finetune_g2rpo_hps.sh:38"),
        "optim.beta": Setting(0.0, "fastvideo/train_g2rpo_hps.py (no KL term)"),
        "optim.minibatches": Setting(
            "8 a rollout: one optimizer step per branch step, all on one rollout",
            "fastvideo/train_g2rpo_hps.py (train_one_step: for t_idx in range(train_timesteps), optimizer.step() each)",
            toolkit=1,
            why="the toolkit trains one branch step per iteration (steps[iteration % n]) on a fresh rollout: one on-policy optimizer step for it; the reference's steps 2-8 are off-policy under its clip",
        ),
        "optim.global_std": Setting(False, "fastvideo/train_g2rpo_hps.py (per group of a granularity)"),
        "optim.adv_std": Setting("unbiased", "fastvideo/train_g2rpo_hps.py (std(dim=0) + 1e-8)"),
        "optim.adv_eps": Setting(1e-8, "fastvideo/train_g2rpo_hps.py"),
        "optim.weight_decay": Setting(1e-4, "scripts/finetune/finetune_g2rpo_hps.sh:34 (--weight_decay 0.0001)"),
    }

    def steps(self, table) -> list[int]:
        """The branch steps under `table` (ConfigError if one has no noise)."""
        noisy = table.last_noisy_step + 1
        if self.cfg.branch_steps is None:
            if noisy < 1:
                raise ConfigError(f"branch_steps: no step has noise under noise kind {table.kind!r}")
            return list(range(max(1, min(table.num_steps // 2, noisy))))
        late = [s for s in self.cfg.branch_steps if s >= noisy]
        if late:
            raise ConfigError(
                f"branch_steps: step {late[0]} lies outside the noisy steps 0..{noisy - 1} "
                f"of the {table.num_steps}-step schedule"
            )
        return list(self.cfg.branch_steps)

    def granularities(self) -> list[int]:
        """1 first (the trained row's), then the others in the order given."""
        return [1] + [g for g in self.cfg.granularities if g != 1]

    def check(self, table, group_size: int) -> None:
        super().check(table, group_size)
        k = len(self.cfg.granularities)
        if k > 1 and table.num_steps - 1 in self.steps(table):
            raise ConfigError(
                f"branch_steps: at the last step ({table.num_steps - 1}) no step is left to denoise at "
                "another granularity; use earlier steps or granularities: [1]"
            )
        if group_size % k or group_size // k < 2:
            raise ConfigError(
                f"group_size: g2rpo's {k} granularities need at least 2 noise draws each "
                f"(group_size a multiple of {k}, at least {2 * k}), got {group_size}"
            )

    def trainable_steps(self, table) -> range:
        steps = self.steps(table)
        return range(min(steps), max(steps) + 1)

    def branch_step(self, iteration: int, table) -> int:
        """The step every row of the batch takes its SDE step at, in `iteration`."""
        steps = self.steps(table)
        return steps[iteration % len(steps)]

    def plan(self, ctx: PlanContext) -> Plan:
        s, t = self.branch_step(ctx.iteration, ctx.table), ctx.table.num_steps
        grains = self.granularities()
        k, rows = len(grains), torch.arange(ctx.batch_size)
        level = rows % ctx.group_size % k  # granularity index of each row
        carrier = rows - level  # the draw's granularity-1 row: it takes (and trains) the SDE step
        first = rows - rows % ctx.group_size  # the group's first row: the anchor every draw leaves at s
        shared = self.cfg.initial_noise == "shared"
        parent = torch.where(level > 0, carrier, first if shared else rows)
        branch_at = torch.where(level > 0, min(s + 2, t - 1), s if shared else 0)
        sde = self.empty(ctx)
        sde[:, s] = True
        train = sde & (level == 0)[:, None]
        stride = torch.tensor(grains)[level] * ctx.ode_stride  # sampling.ode_stride coarsens every row alike
        return self.make_plan(ctx, sde, train, parent=parent, branch_at=branch_at, stride=stride)

    def advantages(self, ctx: AdvantageContext, traj: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Per granularity, the draws' rewards normalised within the prompt; summed, then clipped."""
        p, g, k = ctx.num_prompts, ctx.group_size, len(self.cfg.granularities)
        local = ctx.scores.reshape(p * g // k, k)  # [draws, K]
        prompt = torch.arange(p * g // k) // (g // k)
        adv = sum(normalize_within(local[:, c], prompt, *ctx_norm(ctx, clip=float("inf"))).double() for c in range(k))
        return adv.clamp(-ctx.adv_clip, ctx.adv_clip).float()[traj // k]
