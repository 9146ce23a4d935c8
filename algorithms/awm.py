"""Advantage Weighted Matching: PPO-clip on a flow-matching likelihood surrogate (objective `awm`).

Rollouts are ODE only and keep just the clean samples. Each clean sample x0 is re-noised
at `timesteps` noise levels of the sampling schedule, one per stratum of its first
floor(T * timestep_fraction) steps, x_t = (1 - t) x0 + t eps. The flow-matching error
there, weighted (`weighting`), is a log-likelihood surrogate logp; the loss is PPO's clip
on exp(logp - logp_old) with the advantage scaled to [-advantage_max, advantage_max], plus
KLs in velocity space to the reference (optim.beta) and to an EMA of the policy
(ema_kl_beta) (grpo_zoo/objectives.py, `AWM`). Training forwards use no CFG.

Sources. Paper: Xue et al., "Advantage Weighted Matching: Aligning RL with Pretraining in
Diffusion Models", arXiv 2509.25050. Code: scxue/advantage_weighted_matching
advantage_weighted_matching/scripts/train_sd3_awm.py and config/dgx_awm.py (the SD3.5-M
GenEval / OCR / PickScore configs); X-GenGroup/Flow-Factory src/flow_factory/trainers/rl/awm.py
and hparams/training_args/awm.py for comparison.

Published defaults (config/dgx_awm.py; the same in its GenEval, OCR and PickScore configs
unless said):
- train.train_timesteps = 6, train.timestep_fraction = 0.9, time_type discrete_wo_init
  (GenEval, OCR; `discrete`, which may pick sigma = 1, for PickScore): `timesteps`,
  `timestep_fraction`, `time_type`.
- train.weighting = ghuber with ghuber_power = 0.25: `weighting`, `ghuber_power`.
- train.loss_type = exp_first (a ratio per timestep and sample), train.clip_range = 1,
  train.adv_clip_max = 5 with train.advantage_max = 1: `clip_range`, `adv_clip_max`,
  `advantage_max`.
- train.ema_beta = 1 with kl_ema_weight Uniform, kl_ema_decay = 0.3, kl_ema_decay_type
  linear (decay = min(0.3, 0.001 * optimizer steps), one EMA step per epoch after its
  update): `ema_kl_beta`, `kl_ema_decay`, `kl_ema_ramp`.
- train.beta = 0.003 (GenEval, OCR; 1e-4 PickScore), kl_weight Uniform: `optim.beta`.
- Run settings of the reference (run config): sampling.guidance = 1 (train.cfg = False),
  sampling.steps = 14 ODE steps (its SA-solver with sde_frac 0), optim.lr = 3e-4,
  optim.global_std = true, one optimizer step per iteration (optim.minibatches = 1).

Differences from the reference code, each small:
- It draws one set of strata per training micro-batch (shared by its samples); here each
  clean sample draws its own.
- It adds the EMA KL only when train.beta > 0 (the block is nested); here each KL has its
  own switch. It skips training in its first two epochs; here every iteration trains.
- The paper states the surrogate with a uniform weight; the configs use ghuber, followed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from grpo_zoo.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, register
from grpo_zoo.config import num
from grpo_zoo.objectives import stratified_range


@dataclass
class AWMConfig(AlgorithmConfig):
    name: str = "awm"
    """Advantage Weighted Matching (Xue et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "independent"
    """Must stay independent: ODE rollouts from one noise would all be the same sample."""
    timesteps: int = num(6, ge=1)
    """Training noise levels per clean sample, one per stratum of the eligible steps."""
    timestep_fraction: float = num(0.9, gt=0, le=1)
    """The strata cover the first floor(T * fraction) sampling steps, in (0, 1]."""
    time_type: Literal["discrete_wo_init", "discrete"] = "discrete_wo_init"
    """discrete_wo_init: leave out step 0 (sigma = 1); discrete: include it."""
    weighting: Literal["ghuber", "uniform"] = "ghuber"
    """Surrogate: uniform: -mse; ghuber: -((mse + 1e-10)^p - 1e-10^p) * t / p."""
    ghuber_power: float = num(0.25, gt=0)
    """p of the ghuber weighting, > 0."""
    clip_range: float = num(1.0, gt=0)
    """PPO clip epsilon of the surrogate's ratio (replaces optim.clip_range), > 0."""
    adv_clip_max: float = num(5.0, gt=0)
    """Advantages are clipped to +-adv_clip_max, then divided by it ..."""
    advantage_max: float = num(1.0, gt=0)
    """... and multiplied by advantage_max."""
    ema_kl_beta: float = num(1.0, ge=0)
    """Weight of mean((v - v_ema)^2), the KL to the EMA policy; 0 skips its forward."""
    kl_ema_decay: float = num(0.3, ge=0, lt=1)
    """Largest decay of the EMA policy, in [0, 1)."""
    kl_ema_ramp: float | None = num(1e-3, ge=0)
    """Decay = min(kl_ema_decay, ramp * optimizer steps so far); null: kl_ema_decay throughout."""


@register("awm")
class AWM(Algorithm):
    Config = AWMConfig
    paper = 'Xue et al., 2025, "Advantage Weighted Matching" (arXiv 2509.25050)'
    reference = "scxue/advantage_weighted_matching: scripts/train_sd3_awm.py"
    objective = "awm"

    def trainable_steps(self, table) -> range:
        """The sampling steps whose noise level may be trained (re-noised at, not an SDE step)."""
        return range(*stratified_range(table, self.cfg.timestep_fraction, self.cfg.time_type == "discrete_wo_init"))

    def plan(self, ctx: PlanContext) -> Plan:
        return self.make_plan(ctx, self.empty(ctx))  # every step ODE; the objective re-noises x0
