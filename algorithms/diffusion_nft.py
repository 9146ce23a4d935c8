"""DiffusionNFT: negative-aware fine-tuning on the forward process (objective `nft`).

Rollouts are ODE only and keep just the clean samples; no SDE log-prob is needed. Each
clean sample x0 is re-noised at `timesteps` distinct noise levels of the sampling schedule,
x_t = (1 - t) x0 + t eps, and the policy v is trained there against two implicit policies
built from it and the old (rollout) velocity v_old: v+ = b v + (1 - b) v_old pulled toward
x0 with weight r, v- = (1 + b) v_old - b v with weight 1 - r, where r = clip(A, -c, c) /
(2c) + 1/2 maps the group advantage to [0, 1]; both in x0 space with an adaptive weight,
scaled by c / b (`NFTObjective` below). Training forwards use no CFG.

Sources. Paper: Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward
Process", arXiv 2509.16117. Code: NVlabs/DiffusionNFT scripts/train_nft_sd3.py and
config/nft.py + config/base.py (NVlabs/DiffusionNFT@24af555, readable whole; first read in
its forks Xianchao-Wu/DiffusionNFT and jiaxi98/DiffusionNFT, which keep the training loop and
configs); X-GenGroup/Flow-Factory
src/flow_factory/trainers/rl/nft.py and hparams/training_args/nft.py for comparison.

Published defaults, and where they live here:
- timesteps: floor(0.99 T) of the T sampling steps per sample, without replacement (config
  train.timestep_fraction = 0.99 over a per-sample shuffle of the scheduler's timesteps):
  `timesteps: null`; `t_range: [0, 1]` (every sampling noise level is eligible).
- nft_beta (config.beta) = 1.0 (GenEval, PickScore, HPSv2 configs; 0.1 for OCR and the
  multi-reward config); adv_clip_max = 5 (train.adv_clip_max).
- KL to the reference, mean((v - v_ref)^2), weight train.beta = 1e-4: `optim.beta`.
- Run settings of the reference, the defaults of its runs (`settings` below, README "Settings
  per method"): ODE rollouts with its solver "dpm2" (sampling.ode_solver), optim.global_std =
  true, one optimizer step per iteration (optim.minibatches = 1), the EMA evaluated; the bench
  keeps its own sampling.guidance (the reference is CFG-free: 1), T and learning rate.
- The old policy (`old_decay_max`, `old_decay_rate`, `old_decay_flat`). The reference
  keeps an "old" copy of the weights (a second LoRA adapter, equal to the weights at the
  start) that samples the rollouts and gives v_old, and soft-updates it after each
  iteration's update, old <- d old + (1 - d) new, d = return_decay(global step, decay_type):
  decay_type 1 (its default: min(0.001 * steps, 0.5)) or 2 (its OCR config: 0 for 75 steps,
  then 0.0075 per step up to 0.999). Here the copy moves once per iteration before the
  rollout with the same d (the same weights at the same point of the loop), samples the
  rollout and gives v_old. Evaluation samples with an EMA of the weights (decay 0.9, every
  optimizer step: scripts/train_nft_sd3.py:567, evaluated at :221), as `settings` says.

Differences from the reference code:
- The paper writes the loss in velocity space, r |v+ - v*|^2 + (1 - r) |v- - v*|^2; the
  code (followed here) works in x0 space with a detached per-sample adaptive weight and
  the constants c / b.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core import objective
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.core.contract import Batch, ReNoised, Terms
from grpo_zoo.core.forward_process import ForwardProcess, renoise_steps
from grpo_zoo.errors import ConfigError


@dataclass
class DiffusionNFTConfig(AlgorithmConfig):
    name: str = "diffusion_nft"
    """DiffusionNFT (Zheng et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "independent"
    """Must stay independent: ODE rollouts from one noise would all be the same sample."""
    timesteps: int | None = num(None, ge=1)
    """Training noise levels per clean sample, distinct, drawn from the sampling schedule's
    (inside t_range); null: floor(0.99 T), the reference's timestep_fraction 0.99."""
    t_range: list[float] = num(default_factory=lambda: [0.0, 1.0], ge=0, le=1)
    """[lo, hi]: the sampling noise levels sigma in lo <= sigma <= hi are eligible."""
    nft_beta: float = num(1.0, gt=0, le=1)
    """b: strength of the implicit policies v+- = v_old +- b (v - v_old), in (0, 1]."""
    adv_clip_max: float = num(5.0, gt=0)
    """c: advantages are clipped to +-c before r = A / (2c) + 1/2; the loss is scaled by c."""
    old_decay_max: float = num(0.5, ge=0, lt=1)
    """The old policy (it samples the rollouts and gives v_old) trails the weights with decay
    min(max(0, steps - old_decay_flat) * old_decay_rate, old_decay_max), moved once per
    iteration; 0: the old policy is the current one (no copy kept)."""
    old_decay_rate: float = num(1e-3, ge=0)
    """Decay gained per optimizer step."""
    old_decay_flat: int = num(0, ge=0)
    """Optimizer steps before the decay starts to grow (0 until then)."""

    def validate(self) -> None:
        r = self.t_range
        if len(r) != 2 or not r[0] < r[1]:
            raise ConfigError(f"t_range: expected [lo, hi] with 0 <= lo < hi <= 1, got {r}")


@register("diffusion_nft")
class DiffusionNFT(Algorithm):
    Config = DiffusionNFTConfig
    paper = 'Zheng et al., 2025, "DiffusionNFT" (arXiv 2509.16117)'
    reference = "NVlabs/DiffusionNFT: scripts/train_nft_sd3.py"
    repository = "NVlabs/DiffusionNFT@24af555"
    settings = {
        "sampling.ode_solver": Setting("dpm2", "config/nft.py:64 (solver = 'dpm2')"),
        "optim.beta": Setting(1e-4, "config/nft.py:24"),
        "optim.minibatches": Setting(1, "config/nft.py:89 (gradient_step_per_epoch = 1)"),
        "optim.global_std": Setting(True, "config/base.py:57"),
        "optim.adv_std": Setting("population", "flow_grpo/stat_tracking.py:28 (np.std + 1e-4)"),
        "optim.adv_eps": Setting(1e-4, "flow_grpo/stat_tracking.py:28"),
        "optim.weight_decay": Setting(1e-4, "config/base.py:72 (train.adam_weight_decay)"),
        "optim.ema_decay": Setting(0.9, "scripts/train_nft_sd3.py:567 (evaluated: :221)"),
        "optim.ema_every": Setting(1, "scripts/train_nft_sd3.py:567 (update_step_interval=1)"),
    }
    objective = "nft"

    def trainable_steps(self, table) -> range:
        """The sampling steps whose noise level may be trained (re-noised at, not an SDE step)."""
        steps = renoise_steps(table, tuple(self.cfg.t_range))
        if not len(steps):
            raise ConfigError(f"t_range: no sampling noise level lies in {self.cfg.t_range}; widen it")
        return range(int(steps[0]), int(steps[-1]) + 1)

    def plan(self, ctx: PlanContext) -> Plan:
        return self.make_plan(ctx, self.empty(ctx))  # every step ODE; the objective re-noises x0


@objective.register("nft")
class NFTObjective(ForwardProcess):
    """The `nft` objective, as NVlabs/DiffusionNFT scripts/train_nft_sd3.py computes it.

    Items: each clean sample at `timesteps` distinct noise levels drawn from the sampling
    schedule's (those inside `t_range`; default floor(0.99 T), the reference's
    timestep_fraction 0.99 of its shuffled scheduler timesteps), v_old recorded at each
    under the rollout policy (`aux`). With r = clip(A, -c, c) / (2c) + 1/2 (c = adv_clip_max),
    v+ = b v + (1 - b) v_old, v- = (1 + b) v_old - b v (b = nft_beta) and x0(u) = x_t - t u:
        loss = c * (r |x0(v+) - x0|^2 / d+ + (1 - r) |x0(v-) - x0|^2 / d-) / b + beta * mean((v - v_ref)^2)
    with d+- the detached per-sample mean |x0(v+-) - x0| (at least 1e-5: adaptive weighting).
    The paper writes the loss in velocity space without the constants c / b and the
    adaptive weight; the reference code has them, and so does this. The old policy is a
    trailing copy of the weights (grpo_zoo.core.ema.Trailing): it samples the rollouts
    (`sampling_weights`) and gives v_old, and moves once per iteration before the rollout,
    old <- d old + (1 - d) weights, d = min(max(0, steps - old_decay_flat) * old_decay_rate,
    old_decay_max) at the optimizer steps made so far (the reference's `return_decay`).
    old_decay_max 0 keeps no copy: the old policy is the current one."""

    Config = DiffusionNFTConfig
    trailing_field = "old_decay_max"

    @property
    def trails(self) -> bool:
        return self.alg_cfg.old_decay_max > 0

    def old_decay(self, calls: int) -> float:
        """The decay of the move made at the `calls`-th iteration (1, 2, ...)."""
        cfg = self.alg_cfg
        return min(max(0, self.optimizer_steps(calls) - cfg.old_decay_flat) * cfg.old_decay_rate, cfg.old_decay_max)

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        if not self.trails:
            return contextlib.nullcontext()
        return self.trailing.advance(self.old_decay).swapped_in()

    def t_range(self) -> tuple[float, float]:
        lo, hi = self.alg_cfg.t_range
        return float(lo), float(hi)

    def steps_per_sample(self) -> int:
        eligible = len(renoise_steps(self.table, self.t_range()))
        n = self.alg_cfg.timesteps
        n = max(1, math.floor(0.99 * self.table.num_steps)) if n is None else n
        return max(1, min(n, eligible))

    def draw_steps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        eligible = renoise_steps(self.table, self.t_range())
        order = torch.rand(b, len(eligible), generator=gen, dtype=torch.float64).argsort(1)
        return eligible[order[:, : self.steps_per_sample()]]

    def items(self, ro, ctx, emb: torch.Tensor, gen: torch.Generator) -> tuple[ReNoised, int]:
        it, _ = self.renoise(ro, gen)
        old = (
            self.trailing.ema.swapped_in()
            if self.trails and self.trailing.ema is not None
            else contextlib.nullcontext()
        )
        with old:  # the old policy as the rollout had it (moved before it)
            it.aux = self.forward_all(it.x_t, it.t, emb[it.traj])
        return it, len(it)

    def loss(self, b: Batch) -> Terms:
        it, cfg = b.items, self.alg_cfg
        beta, c = cfg.nft_beta, cfg.adv_clip_max
        x_t, x0, v_old = it.x_t.to(self.device), it.x0.to(self.device), it.aux.to(self.device)
        t = it.t.float().to(self.device)
        v = self.velocity(x_t, t, b.emb)
        v.retain_grad()
        r = (b.adv.to(self.device).clamp(-c, c) / c / 2 + 0.5).clamp(0, 1)
        tt = t.view(-1, *([1] * (x_t.dim() - 1)))
        pos = x_t - tt * (beta * v + (1 - beta) * v_old)
        neg = x_t - tt * ((1 + beta) * v_old - beta * v)

        def adaptive(pred: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                scale = (pred.double() - x0.double()).abs().flatten(1).mean(1).clamp_min(1e-5)
            return ((pred - x0) ** 2).flatten(1).mean(1) / scale.float()

        per = c * (r * adaptive(pos) + (1 - r) * adaptive(neg)) / beta * b.weight.to(self.device)
        zero = torch.zeros_like(per).detach()  # no ratio: reported as on-policy, never clipped
        stats = {"policy": per.detach(), "clipfrac": zero, "approx_kl": zero, "ratio": zero + 1}
        kl = self.kl_to_reference(v, x_t, t, b.emb)
        if kl is not None:
            per = per + self.beta * kl
            stats["kl"] = kl.detach()
        return Terms(per, stats, v, 0 if kl is None else len(t))
