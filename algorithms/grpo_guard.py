"""GRPO-Guard: Flow-GRPO with a per-step normalised ratio and per-step gradient reweighting.

Rollouts and trained steps are Flow-GRPO's (SDE at every step that has noise, train the
first floor(T * timestep_fraction)). Two changes make PPO's clip act alike on every step:

- RatioNorm (the `ratio_norm_clip` objective, `RatioNormClip` below): the log-ratio is
  shifted by its mean-difference term |mu - mu_old|^2 / (2 s^2) and scaled by the step's
  noise std s, so it is centred at 0 (the plain one drifts below 0 as the policy moves)
  with a spread that no longer grows as 1/s.
- Gradient reweighting (a plan weight): after RatioNorm the log-ratio is mean(eps * dmu),
  whose gradient in v scales with |d mu / d v| = |dt| (1 + std_t^2 (1 - sigma) / (2 sigma)).
  The paper reweights each step's loss by 1/dt (`grad_reweight: dt`, default); under
  Flow-GRPO's noise (flow_sde) the bracket is the constant 1 + a^2 / 2 away from the guarded
  first step, so this equalises the steps. `mean_gain` weights by 1/|d mu / d v|, which
  equalises them under any noise kind (wan_linear, cps); `none` is RatioNorm alone (the
  paper's ablation). Weights are normalised to mean 1 over the optimizer batch, so only
  their ratios across steps matter (the absolute 1/dt scale of the paper is a learning-rate
  factor).

Sources. Paper: Wang et al., "GRPO-Guard: Mitigating Implicit Over-Optimization in Flow
Matching via Regulated Clipping", arXiv 2510.22319 (RatioNorm, 1/dt gradient reweighting).
The brief's reference repository hxm2023/GRPO-Guard is an unrelated project of the same
name (trajectory contracts for LLM GRPO training); the ratio follows X-GenGroup/Flow-Factory
src/flow_factory/trainers/grpo.py:502-504 at a0b2bc5 (GRPOGuardTrainer; before its cc83694 the
normalised ratio was computed and then overwritten with the plain one). Flow-Factory applies no
separate per-step reweighting; the 1/dt weight is the paper's (also verl-omni's GRPO-Guard loss).
The clip range is Flow-Factory's default for GRPO and GRPO-Guard, (-1e-4, 1e-4)
(src/flow_factory/hparams/training_args.py:423), as `settings` below says: under RatioNorm the
log-ratio is scaled by s (about 0.05-0.3 here), so a bench-wide 0.2 would never bind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from grpo_zoo.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig

from grpo_zoo.core import objective
from grpo_zoo.core.algorithm import Plan, PlanContext, Setting, register
from grpo_zoo.core.objective import PPOClip
from grpo_zoo.errors import ConfigError


@dataclass
class GRPOGuardConfig(FlowGRPOConfig):
    name: str = "grpo_guard"
    """GRPO-Guard (Wang et al., 2025)."""
    grad_reweight: Literal["dt", "mean_gain", "none"] = "dt"
    """Per-step loss weight: dt: 1/|dt| (the paper); mean_gain: 1/|d mu/d v| (equal gradient
    sizes under any noise kind); none: RatioNorm alone."""


@register("grpo_guard")
class GRPOGuard(FlowGRPO):
    Config = GRPOGuardConfig
    paper = 'Wang et al., 2025, "GRPO-Guard" (arXiv 2510.22319)'
    reference = "X-GenGroup/Flow-Factory: src/flow_factory/trainers/grpo.py"
    repository = "X-GenGroup/Flow-Factory@a0b2bc5"
    settings = {
        "sampling.noise": Setting("flow_sde", "src/flow_factory/hparams/scheduler_args.py:27"),
        "sampling.noise_level": Setting(0.7, "src/flow_factory/hparams/scheduler_args.py:32"),
        "optim.clip_range": Setting(
            1e-4, "src/flow_factory/hparams/training_args.py:423 (read at src/flow_factory/trainers/grpo.py:506)"
        ),
        "optim.beta": Setting(0.0, "src/flow_factory/hparams/training_args.py:435"),
        "optim.minibatches": Setting(2, "src/flow_factory/hparams/training_args.py:142 (gradient_step_per_epoch)"),
        "optim.global_std": Setting(True, "src/flow_factory/hparams/training_args.py:414"),
        "optim.adv_std": Setting("population", "src/flow_factory/advantage/advantage_processor.py:259 (np.std)"),
        "optim.adv_eps": Setting(
            "max(std, 1e-6)",
            "src/flow_factory/advantage/advantage_processor.py:259",
            toolkit=1e-6,
            why="the toolkit adds its eps to the std: the same wherever the std is above 1e-6",
        ),
        "optim.weight_decay": Setting(1e-4, "src/flow_factory/hparams/training_args.py:194 (adam_weight_decay)"),
    }
    objective = "ratio_norm_clip"

    def step_weights(self, table) -> torch.Tensor:
        """[T] float64 weight of each step's transitions."""
        if self.cfg.grad_reweight == "dt":
            gain = table.dt.abs()
        elif self.cfg.grad_reweight == "mean_gain":
            gain = table.dmu_dv.abs()
        else:
            gain = torch.ones_like(table.dt)
        return torch.where(gain > 0, 1.0 / gain.clamp_min(1e-300), torch.zeros_like(gain))

    def check(self, table, group_size: int) -> None:
        super().check(table, group_size)
        dead = [j for j in self.trainable_steps(table) if self.step_weights(table)[j] <= 0]
        if dead:
            raise ConfigError(
                f"grad_reweight: step {dead[0]} has d mu/d v = 0 under noise kind {table.kind!r}; use grad_reweight: dt"
            )

    def plan(self, ctx: PlanContext) -> Plan:
        plan = super().plan(ctx)
        weight = plan.weight * self.step_weights(ctx.table).unsqueeze(0)
        return self.make_plan(ctx, plan.sde, plan.train, weight)


@objective.register("ratio_norm_clip")
class RatioNormClip(PPOClip):
    """PPO-clip with GRPO-Guard's RatioNorm (Wang et al., 2025, arXiv 2510.22319).

    A step is Gaussian with per-element std s and mean mu = a x + dmu_dv v. For a sample
    x' = mu_old + s eps, the per-element mean log-ratio is
        log r = mean(eps * dmu) / s - |dmu|^2 / (2 s^2),   dmu = mu - mu_old = dmu_dv (v - v_old),
    so E[log r] = -|dmu|^2 / (2 s^2) < 0, worst where s is small: the ratio drifts below 1
    and its spread differs by step. RatioNorm adds the mean term back and scales by s:
        log r_hat = s * (log r + |dmu|^2 / (2 s^2)) = mean(eps * dmu),
    exactly 1 on-policy, centred at 0 for any policy change, with a spread that no longer
    carries 1/s. |dmu|^2 (mean over elements) flows into the gradient, as in the reference
    (X-GenGroup/Flow-Factory src/flow_factory/trainers/grpo.py, GRPOGuardTrainer._guard_ratio:
    (log_prob - old_log_prob) * scale + mse / (2 * scale), scale = sqrt(-dt) * std_dev_t);
    mu_old comes from the velocity recorded at sampling (`v_sample`), mu - mu_old is exact
    because the mean is linear in v. GRPO-Guard's second part, the per-step gradient
    reweighting, is a plan weight (`GRPOGuard.step_weights`)."""

    needs_sampling_velocity = True

    def log_ratio(self, logp, logp_old, v, tr, k) -> torch.Tensor:
        dmu = self.table.dmu_dv[k].float().to(self.device).view(-1, *([1] * (v.dim() - 1)))
        diff = (dmu * (v - tr.v_sample.to(self.device).float())).flatten(1).pow(2).mean(1)
        s = self.table.step_std[k].float().to(self.device)
        return (logp - logp_old) * s + diff / (2 * s)
