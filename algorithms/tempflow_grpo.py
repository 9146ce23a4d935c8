"""TempFlow-GRPO: per-step process rewards by branching off one ODE backbone, noise-aware weights.

Each prompt group follows one deterministic (ODE) backbone from one initial noise. At each
of n branch steps s, K children leave the backbone's state x_s with one SDE step and then
follow the ODE to the end, so a child's reward credits that single stochastic step. The K
children of one branch step form one advantage group (the reference's "seed group"); each
child trains its SDE transition only, weighted by the transition's noise std
sigma_t * sqrt(-dt) (the table's step_std), normalised by the shared loss to batch mean 1.

Rows of a group (G = K * n): rows 0..K-1 are the children of the LAST branch step; rows K..
are the children of the earlier steps, K per step, in step order. Every row is an SDE child:
the backbone's ODE states are shared as every row's prefix (row 0 carries them furthest, to the
last branch step, where it takes its own SDE step), and the backbone itself is never rolled to
the end, decoded or scored. Branching
steps are the earliest candidates: the first floor(T * timestep_fraction) steps that have
noise.

Settings from Shredded-Pork/TempFlow-GRPO and the paper (He et al., 2025, "TempFlow-GRPO:
When Timing Matters for GRPO in Flow Models", arXiv 2508.04324):
- scripts/train_sd3_pr.py (and scripts/train_flux_pr.py): exploration_k = 6 children per
  branch step; trains steps 0 .. int(T * timestep_fraction) - 1; policy loss scaled by the
  std returned by the SDE step (times a constant, 2.25 for SD3 / 1.73 for FLUX, that the
  bench's weight normalisation absorbs); the KL term unweighted.
- flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_perstep.py: at every step but the last
  the ODE latent is advanced, and its SDE children run the ODE to the end; per-step rewards.
- flow_grpo/diffusers_patch/sd3_sde_with_logprob.py: the returned std is std_t * sqrt(-dt)
  (commented "original paper"; std_t alone is the commented-out alternative: `std_t` here).
- flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_perstep.py (e66824e): the backbone
  advances by the ODE step only (`latents = ode_latents`) and only the children are decoded.
- config/dgx.py (pickscore_sd3_pr, geneval_sd3_pr, flux_pr): 10 steps, timestep_fraction 0.99
  (9 branch steps); the train scripts take advantages per branch step over one GPU's children,
  not gathered over GPUs (train_flux_pr.py: "# seed group").
So the reference's setting is K = 6, n = 9 on 10 steps: data.group_size = 54 here.

Difference from the reference: it branches at every step but the last even where
timestep_fraction trains fewer (those children are sampled and scored, not trained); here only
the n trained steps branch.
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
class TempFlowGRPOConfig(AlgorithmConfig):
    name: str = "tempflow_grpo"
    """TempFlow-GRPO (He et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """A group's rows all branch off one backbone, so they share its noise (only `shared` is valid)."""
    children: int | None = num(None, ge=2)
    """K: SDE children per branch step (the reference: 6); null derives K = G / n from data.group_size."""
    branch_steps: int | None = num(None, ge=1)
    """n: how many of the earliest candidate steps branch; null: as many as data.group_size allows."""
    timestep_fraction: float = num(0.99, gt=0, le=1)
    """Candidate branch steps: the first floor(T * fraction) steps that have noise, in (0, 1]."""
    weighting: Literal["step_std", "std_t", "none"] = "step_std"
    """Noise-aware weight of a branch step: its transition std sigma_t*sqrt(-dt) (the reference),
    std_t alone (the reference's commented-out variant), or none (uniform)."""

    def validate(self) -> None:
        if self.initial_noise != "shared":
            raise ConfigError("initial_noise: tempflow_grpo branches every group off one backbone noise; use shared")


@register("tempflow_grpo")
class TempFlowGRPO(Algorithm):
    Config = TempFlowGRPOConfig
    paper = 'He et al., 2025, "TempFlow-GRPO" (arXiv 2508.04324)'
    reference = "Shredded-Pork/TempFlow-GRPO: scripts/train_sd3_pr.py"
    repository = "Shredded-Pork/TempFlow-GRPO@63e4def"
    settings = {
        "sampling.noise": Setting(
            "flow_sde",
            "flow_grpo/diffusers_patch/sd3_sde_with_logprob_perstep.py (std_dev_t = sqrt(sigma / (1 - sigma)) * 0.7)",
        ),
        "sampling.noise_level": Setting(0.7, "the same line (0.7 for SD3.5-M, 0.9 for FLUX)"),
        "optim.clip_range": Setting(
            1e-4, "config/dgx.py sets none: Flow-GRPO's config/base.py:86 it starts from (yifan123/flow_grpo@ac4c86e)"
        ),
        "optim.beta": Setting(
            0.004, "config/dgx.py (general_ocr_sd3, geneval_sd3_pr: train.beta = 0.004; pickscore 0.001)"
        ),
        "optim.minibatches": Setting(2, "config/dgx.py (gradient_accumulation_steps = num_batches_per_epoch // 2)"),
        "optim.global_std": Setting(False, "config/dgx.py (*_pr: sample.global_std = False)"),
        "optim.adv_std": Setting("population", "flow_grpo/stat_tracking.py (np.std + 1e-4)"),
        "optim.adv_eps": Setting(1e-4, "flow_grpo/stat_tracking.py"),
        "optim.weight_decay": Setting(
            1e-4, "Flow-GRPO's config/base.py it starts from (train.adam_weight_decay = 1e-4)"
        ),
        "optim.ema_decay": Setting(
            0.9, "scripts/train_sd3_pr.py (EMAModuleWrapper(decay=0.9, update_step_interval=8))"
        ),
        "optim.ema_every": Setting(8, "scripts/train_sd3_pr.py (update_step_interval=8)"),
    }

    def trainable_steps(self, table) -> range:
        n = min(math.floor(table.num_steps * self.cfg.timestep_fraction), table.last_noisy_step + 1)
        if n < 1:
            raise ConfigError(f"timestep_fraction: {self.cfg.timestep_fraction} of {table.num_steps} steps is no step")
        return range(n)

    def shape(self, table, group_size: int) -> tuple[int, int]:
        """(K, n): children per branch step and branch steps, with G = K * n."""
        most, k, n = len(self.trainable_steps(table)), self.cfg.children, self.cfg.branch_steps
        if k is None and n is None:
            n = max((m for m in range(1, most + 1) if group_size % m == 0 and group_size // m >= 2), default=None)
            if n is None:
                raise ConfigError(f"group_size: tempflow_grpo needs G = K * n with K >= 2 children, got {group_size}")
            return group_size // n, n
        if n is None:
            n = group_size // k
        elif k is None:
            k = group_size // n
        if k < 2 or n < 1 or k * n != group_size or n > most:
            raise ConfigError(
                f"group_size: tempflow_grpo needs G = children * branch_steps (K >= 2, n <= {most} candidate steps),"
                f" got G={group_size}, K={k}, n={n}; set data.group_size or algorithm.children/branch_steps"
            )
        return k, n

    def check(self, table, group_size: int) -> None:
        super().check(table, group_size)
        self.shape(table, group_size)

    def plan(self, ctx: PlanContext) -> Plan:
        table, g, p = ctx.table, ctx.group_size, ctx.num_prompts
        k, n = self.shape(table, g)
        steps = list(self.trainable_steps(table))[:n]
        order = steps[-1:] + steps[:-1]  # rows 0..K-1 branch at the last step (row 0: the backbone)
        rows = torch.arange(ctx.batch_size)
        at = torch.tensor(order).repeat_interleave(k).repeat(p)  # [B] each row's one SDE step
        ids = torch.arange(n).repeat_interleave(k).repeat(p) + torch.arange(p).repeat_interleave(g) * n
        sde = self.empty(ctx)
        sde[rows, at] = True
        group = torch.full(sde.shape, -1, dtype=torch.long)
        group[rows, at] = ids  # one advantage group per (prompt, branch step)
        scale = {"step_std": table.step_std, "std_t": table.std_t}.get(self.cfg.weighting, 1.0)
        weight = sde.double() * scale
        backbone = rows - rows % g  # every row of a group leaves its first row's ODE path
        return self.make_plan(ctx, sde, weight=weight, parent=backbone, branch_at=at, group=group)
