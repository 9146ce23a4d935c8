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

This plan reproduces the single-granularity core (granular_list = [1]):

- One SDE step per rollout, at the branch step s, ODE at every other step.
- Rows branch from their group's first row at s (`parent`, `branch_at`): the G rows share
  the initial noise, the ODE prefix x_0 .. x_s (the anchor's) and the velocity at s,
  computed once, and differ only in the noise drawn at s. Each trains that one
  transition, weight 1, with GRPO's group advantage of its reward (the bench normalises
  by the population std + 1e-4; the reference by the unbiased std + 1e-8).
- s is a function of the iteration: branch_steps[iteration % len(branch_steps)], the same
  for every prompt and rank, as the reference takes one optimizer step per s over all
  prompts; in len(branch_steps) iterations every step of the list is trained once. The
  reference trains all of them on the same prompts in one iteration (8 x G rollouts and
  8 optimizer steps per prompt batch); here each iteration rolls out G per prompt.
- branch_steps defaults to the first half of the schedule (the reference's 0..7 of 16).
- `initial_noise: independent` is an ablation (no shared prefix: G rollouts from their own
  noise, each with one SDE step at s), not the reference.

Not reproduced (and why):

- Multi-granularity advantage integration. The rollout runs every row on one step table
  (the run's schedule); a row denoised at granularity 2 needs Euler steps over sigma
  intervals the table does not have. It is not expressible as extra branches: a child
  that leaves an SDE row at step s + 1 and follows the ODE on the same table reproduces
  its parent exactly. What would express it: a plan flag "reuse the previous step's
  velocity at (row, step)" (an Euler step from sigma_a to sigma_c with v(x_a) equals two
  table steps that share v(x_a); the reference's coarse steps sum consecutive table
  intervals), so granularity-g children could branch from each SDE row at s + 1, sharing
  its transition and the velocity there, and `advantages()` would sum, per trained
  transition, the normalised rewards of the row and its children. That needs the flag in
  Plan and rollout, group_size = G x len(granular_list) rows of which only G train (the
  registry tests require every row to train a step), and a group id per granularity.
- Several rewards (train_g2rpo_hps_clip.py and the other stored version of
  train_g2rpo_hps.py, commit 04ee954, add a CLIP score's advantages to HPS's): the
  algorithm receives only the run's training reward.
- The training forward: the reference runs the policy once at the shared x_s and reuses
  the velocity for all G rows; the shared PPO-clip objective runs one forward per trained
  transition, so the update counts G forwards (and backwards) per group instead of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, register
from grpo_zoo.errors import ConfigError


@dataclass
class G2RPOConfig(AlgorithmConfig):
    name: str = "g2rpo"
    """G2RPO, Granular-GRPO (Zhou et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """shared (the reference): a group's rows share the ODE prefix and differ only in the noise of their SDE step."""
    branch_steps: list[int] | None = None
    """Steps of the one SDE step, taken in turn (iteration i uses entry i mod len); null: steps 0..floor(T/2)-1
    that have noise (the reference's 0..7 of 16)."""

    def validate(self) -> None:
        steps = self.branch_steps
        if steps is not None and (not steps or min(steps) < 0 or len(set(steps)) != len(steps)):
            raise ConfigError(f"branch_steps: expected distinct steps >= 0, got {steps}")


@register("g2rpo")
class G2RPO(Algorithm):
    Config = G2RPOConfig
    paper = 'Zhou et al., 2025, "G2RPO" (arXiv 2510.01982)'
    reference = "bcmi/Granular-GRPO: fastvideo/train_g2rpo_hps.py"

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

    def trainable_steps(self, table) -> range:
        steps = self.steps(table)
        return range(min(steps), max(steps) + 1)

    def branch_step(self, iteration: int, table) -> int:
        """The step every row of the batch takes its SDE step at, in `iteration`."""
        steps = self.steps(table)
        return steps[iteration % len(steps)]

    def plan(self, ctx: PlanContext) -> Plan:
        s = self.branch_step(ctx.iteration, ctx.table)
        sde = self.empty(ctx)
        sde[:, s] = True
        if self.cfg.initial_noise == "independent":
            return self.make_plan(ctx, sde)
        rows = torch.arange(ctx.batch_size)
        first = rows - rows % ctx.group_size  # each row follows its group's first row up to s
        branch_at = torch.full((ctx.batch_size,), s, dtype=torch.long)
        return self.make_plan(ctx, sde, parent=first, branch_at=branch_at)
