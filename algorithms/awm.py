"""Advantage Weighted Matching: PPO-clip on a flow-matching likelihood surrogate (objective `awm`).

Rollouts are ODE only and keep just the clean samples. Each clean sample x0 is re-noised
at `timesteps` noise levels of the sampling schedule, one per stratum of its first
floor(T * timestep_fraction) steps, x_t = (1 - t) x0 + t eps. The flow-matching error
there, weighted (`weighting`), is a log-likelihood surrogate logp; the loss is PPO's clip
on exp(logp - logp_old) with the advantage scaled to [-advantage_max, advantage_max], plus
KLs in velocity space to the reference (optim.beta) and to an EMA of the policy
(ema_kl_beta) (`AWMObjective` below). Training forwards use no CFG.

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
- train.beta = 0.001 (GenEval, since its commit be51372; 0.003 OCR, 1e-4 PickScore), kl_weight
  Uniform: `optim.beta`.
- Run settings of the reference, the defaults of its runs (`settings` below): optim.global_std =
  true, one optimizer step per iteration (optim.minibatches = 1), an EMA of decay 0.99 stepped
  once an iteration and evaluated; the bench keeps its own guidance (the reference: 1, train.cfg
  = False), T (the reference: 14 ODE steps of its SA-solver with sde_frac 0) and learning rate.

Differences from the reference code, each small:
- It draws one set of strata per training micro-batch (shared by its samples); here each
  clean sample draws its own.
- It adds the EMA KL only when train.beta > 0 (the block is nested); here each KL has its
  own switch. It skips training in its first two epochs; here every iteration trains.
- The paper states the surrogate with a uniform weight; the configs use ghuber, followed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core import objective
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.core.contract import Batch, ReNoised, Terms
from grpo_zoo.core.forward_process import ForwardProcess
from grpo_zoo.core.loss import ppo_clip


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


def stratified_range(table, fraction: float, skip_first: bool) -> tuple[int, int]:
    """(lo, hi): the strata cover steps lo..hi-1 with hi = floor(T * fraction) and lo = 1
    when the first step (sigma = 1) is left out; at least one step on short schedules."""
    t = table.num_steps
    lo = 1 if skip_first and t > 1 else 0
    return lo, max(lo + 1, min(t, math.floor(t * fraction)))


@register("awm")
class AWM(Algorithm):
    Config = AWMConfig
    paper = 'Xue et al., 2025, "Advantage Weighted Matching" (arXiv 2509.25050)'
    reference = "scxue/advantage_weighted_matching: scripts/train_sd3_awm.py"
    repository = "scxue/advantage_weighted_matching@be51372"
    settings = {
        "algorithm.timesteps": Setting(6, "advantage_weighted_matching/config/dgx_awm.py:56"),
        "algorithm.timestep_fraction": Setting(0.9, "advantage_weighted_matching/config/dgx_awm.py:60"),
        "optim.beta": Setting(
            0.001,
            "advantage_weighted_matching/config/dgx_awm.py:55 (GenEval, since be51372; OCR 0.003, PickScore 1e-4)",
        ),
        "optim.minibatches": Setting(1, "advantage_weighted_matching/config/dgx_awm.py:52"),
        "optim.global_std": Setting(True, "advantage_weighted_matching/config/dgx_awm.py:72"),
        "optim.adv_std": Setting("population", "flow_grpo/stat_tracking.py:28 (np.std + 1e-4)"),
        "optim.adv_eps": Setting(1e-4, "flow_grpo/stat_tracking.py:28"),
        "optim.weight_decay": Setting(
            1e-4, "advantage_weighted_matching/config/base_awm.py:76 (train.adam_weight_decay)"
        ),
        "optim.ema_decay": Setting(
            0.99,
            "advantage_weighted_matching/config/dgx_awm.py:91 (stepped once an epoch; evaluated: scripts/train_sd3_awm.py:385)",
        ),
        "optim.ema_every": Setting(1, "advantage_weighted_matching/config/dgx_awm.py:92"),
    }
    objective = "awm"

    def trainable_steps(self, table) -> range:
        """The sampling steps whose noise level may be trained (re-noised at, not an SDE step)."""
        return range(*stratified_range(table, self.cfg.timestep_fraction, self.cfg.time_type == "discrete_wo_init"))

    def plan(self, ctx: PlanContext) -> Plan:
        return self.make_plan(ctx, self.empty(ctx))  # every step ODE; the objective re-noises x0


def matching_logp(v: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weighting: str, power: float):
    """AWM's log-likelihood surrogate: -mean((v - (eps - x0))^2), reshaped by `weighting`
    ("ghuber": -((mse + 1e-10)^p - 1e-10^p) * t / p), in float64, returned as float32."""
    lp = -(v.double() - target.double()).pow(2).flatten(1).mean(1)
    if weighting == "ghuber":
        tiny = 1e-10
        lp = -((-lp + tiny) ** power - tiny**power) * t.double() / power
    return lp.float()


@objective.register("awm")
class AWMObjective(ForwardProcess):
    """The `awm` objective, as scxue/advantage_weighted_matching scripts/train_sd3_awm.py computes it.

    Items: each clean sample at `timesteps` noise levels, one per stratum of the first
    floor(T * timestep_fraction) sampling steps (step 0, sigma = 1, left out under
    `time_type: discrete_wo_init`); the flow-matching error there is a log-likelihood
    surrogate, logp = matching_logp(v, eps - x0, t), recorded under the rollout policy.
    Per item (the reference's `exp_first`), with A' = clip(A, -c, c) / c * advantage_max:
        loss = max(-A' ratio, -A' clip(ratio, 1 - e, 1 + e)) + beta * mean((v - v_ref)^2)
               + ema_kl_beta * mean((v - v_ema)^2),   ratio = exp(logp - logp_old),
    e = the algorithm's clip_range (the surrogate has its own scale: optim.clip_range is not
    used). v_ema comes from an EMA of the trainable weights updated once per iteration,
    before the items are made (the reference: after each epoch's update), with decay
    min(kl_ema_decay, kl_ema_ramp * optimizer steps so far), kept in `state_dict`.
    Items record aux[:, 0] = eps and, with the EMA KL on, aux[:, 1] = v_ema."""

    Config = AWMConfig
    trailing_field = "ema_kl_beta"

    def steps_per_sample(self) -> int:
        return self.alg_cfg.timesteps

    def draw_steps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        cfg = self.alg_cfg
        n = self.steps_per_sample()
        lo, hi = stratified_range(self.table, cfg.timestep_fraction, cfg.time_type == "discrete_wo_init")
        bounds = torch.linspace(lo, hi, n + 1, dtype=torch.float64).long()
        lower, upper = bounds[:-1], bounds[1:]
        u = torch.rand(b, n, generator=gen, dtype=torch.float64)
        return lower + (u * (upper - lower)).long()

    # -- the EMA policy the second KL pulls toward --
    @property
    def ema_beta(self) -> float:
        return self.alg_cfg.ema_kl_beta

    def item_forwards(self) -> int:
        return 2 if self.ema_beta > 0 else 1

    def ema_decay(self, calls: int) -> float:
        """The decay of the EMA step made at the `calls`-th iteration (1, 2, ...)."""
        top, ramp = self.alg_cfg.kl_ema_decay, self.alg_cfg.kl_ema_ramp
        return top if ramp is None else min(top, ramp * self.optimizer_steps(calls))

    def ema_policy(self):
        """The EMA of the trainable weights for this iteration (one step per iteration)."""
        return self.trailing.advance(self.ema_decay)

    def items(self, ro, ctx, emb: torch.Tensor, gen: torch.Generator) -> tuple[ReNoised, int]:
        cfg = self.alg_cfg
        it, eps = self.renoise(ro, gen)
        v_old = self.forward_all(it.x_t, it.t, emb[it.traj])
        it.logp_old = matching_logp(v_old, eps - it.x0, it.t, cfg.weighting, cfg.ghuber_power)
        aux = [eps]
        if self.ema_beta > 0:
            with self.ema_policy().swapped_in():
                aux.append(self.forward_all(it.x_t, it.t, emb[it.traj]))
        it.aux = torch.stack(aux, 1)
        return it, len(it) * len(aux)

    def loss(self, b: Batch) -> Terms:
        it, cfg = b.items, self.alg_cfg
        c = cfg.adv_clip_max
        adv = b.adv.to(self.device).clamp(-c, c) / c * cfg.advantage_max
        x_t, x0, aux = it.x_t.to(self.device), it.x0.to(self.device), it.aux.to(self.device)
        t = it.t.to(self.device)
        v = self.velocity(x_t, t.float(), b.emb)
        v.retain_grad()
        logp = matching_logp(v, aux[:, 0] - x0, t, cfg.weighting, cfg.ghuber_power)
        per, st = ppo_clip(logp, it.logp_old.to(self.device), adv, b.weight.to(self.device), cfg.clip_range)
        stats = {"policy": per.detach(), **st}
        kl = self.kl_to_reference(v, x_t, t.float(), b.emb)
        if kl is not None:
            per = per + self.beta * kl
            stats["kl"] = kl.detach()
        if self.ema_beta > 0:
            ema_kl = (v - aux[:, 1]).pow(2).flatten(1).mean(1)
            per = per + self.ema_beta * ema_kl
            stats["ema_kl"] = ema_kl.detach()
        return Terms(per, stats, v, 0 if kl is None else len(t))
