"""Training objectives, registered by name; an algorithm declares which one it trains with.

An objective turns a rollout into training items (`items`) and a micro-batch of items into
per-item losses (`loss`). The update loop (grpo_zoo/update.py) is the same for all: it
normalises weights over the optimizer batch, sums the per-item losses, runs backward, and
counts the forwards and backwards each objective reports (`items` returns the forwards it
ran, `Terms.extra_forwards` those of a loss without a backward; `cfg_mult` says whether
they ran under CFG, `item_forwards`/`extra_forwards` predict them for the estimator).

- `ppo_clip` (default): Flow-GRPO's weighted PPO-clip on the recorded SDE transitions,
  log-probs recomputed under the current policy, plus beta * KL to the reference.
- `ratio_norm_clip`: the same with GRPO-Guard's RatioNorm (see `RatioNormClip`).
- `nft`: DiffusionNFT's forward-process objective on re-noised clean samples (see `NFT`).
- `awm`: Advantage Weighted Matching: PPO-clip on a flow-matching log-likelihood
  surrogate at re-noised clean samples, plus KLs to the reference and an EMA policy (`AWM`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from grpo_zoo.ema import Trailing
from grpo_zoo.flow import sde_step, transition_mean
from grpo_zoo.loss import gaussian_kl, ppo_clip

_OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str):
    def deco(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return deco


def get(name: str) -> type[Objective]:
    from grpo_zoo.errors import ConfigError

    if name not in _OBJECTIVES:
        raise ConfigError(f"objective: unknown objective {name!r} (choose one of {', '.join(sorted(_OBJECTIVES))})")
    return _OBJECTIVES[name]


def names() -> list[str]:
    return sorted(_OBJECTIVES)


@dataclass
class Batch:
    """One micro-batch as an objective sees it."""

    items: object
    """grpo_zoo.rollout.Transitions: the items (x, x_next, logp_old, step, sigma, aux)."""
    adv: torch.Tensor
    """[n] advantages."""
    weight: torch.Tensor
    """[n] weights normalised to mean 1 over the optimizer batch."""
    emb: torch.Tensor
    """[n, L, D] prompt embeddings of the items."""


@dataclass
class Terms:
    """What an objective computed for a micro-batch."""

    per: torch.Tensor
    """[n] per-item loss, with grad (summed, then divided by the minibatch size)."""
    stats: dict[str, torch.Tensor]
    """[n] detached per-item statistics: policy, kl, clipfrac, approx_kl, ratio."""
    velocity: torch.Tensor | None = None
    """The velocity the loss flows through (grad retained), for per-timestep gradient sizes."""
    extra_forwards: int = 0
    """Forwards run without a backward (a reference model, say), in samples."""


class Objective:
    """Base class: `needs_transitions` says what the rollout must keep (SDE transitions, or only final samples)."""

    name: ClassVar[str]
    needs_transitions: ClassVar[bool] = True
    """True: items are the plan's trained SDE transitions with their log-probs."""
    needs_sampling_velocity: ClassVar[bool] = False
    """True: the rollout keeps the sampling policy's velocity of every trained transition (`aux`)."""
    per_reward_advantages: ClassVar[bool] = False
    """True: the loss takes advantages [N, K], one column per reward (an algorithm's several rewards)."""
    trains_with_cfg: ClassVar[bool] = True
    """True: the objective's forwards use the sampling guidance; False: the conditional
    velocity alone (one transformer pass per sample) whatever `sampling.guidance`."""

    def __init__(self, algorithm_cfg, optim, sampling, table, policy, null_emb, dtype, device):
        self.alg_cfg, self.optim, self.sampling, self.table = algorithm_cfg, optim, sampling, table
        self.policy, self.null_emb, self.dtype, self.device = policy, null_emb, dtype, device

    @classmethod
    def preflight(cls, cfg) -> None:
        """Raise ConfigError if this objective cannot run under the run config (no compute)."""

    @property
    def guidance(self) -> float:
        """The CFG scale of the objective's own forwards."""
        return float(self.sampling.guidance) if self.trains_with_cfg else 1.0

    @property
    def cfg_mult(self) -> int:
        """Transformer passes per sample of the objective's forwards (2 under CFG)."""
        return 2 if self.guidance != 1.0 else 1

    @property
    def beta(self) -> float:
        """Weight of the KL to the reference policy (optim.beta; 0 skips its forward)."""
        return float(getattr(self.optim, "beta", 0.0) or 0.0)

    def items(self, ro, emb: torch.Tensor, gen: torch.Generator) -> tuple[object, int]:
        """The training items of a rollout and the forwards spent making them (samples)."""
        return ro.transitions, 0

    def num_items(self, plan) -> int:
        """How many items a plan yields (for estimates, without running it)."""
        return int(plan.train.sum())

    def item_forwards(self) -> int:
        """Forwards `items` runs per item (for estimates)."""
        return 0

    def extra_forwards(self) -> int:
        """Forwards without a backward that `loss` runs per item (for estimates)."""
        return 1 if self.beta > 0 else 0

    def state_dict(self) -> dict:
        """State that must survive a resume (saved with every checkpoint; none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """Entered around the training rollout: the weights it samples with (default: the
        policy's own; DiffusionNFT's old policy swaps its trailing copy in)."""
        return contextlib.nullcontext()

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.policy.net.named_parameters() if p.requires_grad}

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        null = self.null_emb if self.guidance != 1.0 else None
        v = self.policy.velocity(x.to(self.dtype), sigma, emb, null, self.guidance)
        return v.float()

    @torch.no_grad()
    def reference_velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        with self.policy.reference():
            return self.velocity(x, sigma, emb)

    def loss(self, b: Batch) -> Terms:
        raise NotImplementedError


@register("ppo_clip")
class PPOClip(Objective):
    """Weighted PPO-clip on SDE transitions (+ beta * KL to the reference)."""

    per_reward_advantages = True

    def log_ratio(self, logp, logp_old, v, tr, k) -> torch.Tensor:
        """log pi(x'|x) - log pi_old(x'|x) per item (the plain PPO ratio)."""
        return logp - logp_old

    def loss(self, b: Batch) -> Terms:
        tr, table, k = b.items, self.table, b.items.step
        x = tr.x.to(self.device)
        sigma = table.sigma[k].float().to(self.device)
        v = self.velocity(x, sigma, b.emb)
        v.retain_grad()
        step = (table.sigma[k], table.sigma_next[k], table.std_t[k])
        _, logp, mean = sde_step(table.kind, x, v, *step, x_next=tr.x_next.to(self.device))
        logp_old = tr.logp_old.to(self.device)
        shifted = self.log_ratio(logp, logp_old, v, tr, k)
        per, st = ppo_clip(
            shifted + logp_old, logp_old, b.adv.to(self.device), b.weight.to(self.device), self.optim.clip_range
        )
        stats = {"policy": per.detach(), **st}
        extra = 0
        if self.beta > 0:
            v_ref = self.reference_velocity(x, sigma, b.emb)
            mean_ref = transition_mean(table.kind, x, v_ref, *step)
            kl = gaussian_kl(mean, mean_ref, table.step_std[k])
            per = per + self.beta * kl
            stats["kl"] = kl.detach()
            extra = len(k)
        return Terms(per, stats, v, extra)


@register("ratio_norm_clip")
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
    (X-GenGroup/Flow-Factory src/flow_factory/trainers/rl/grpo.py, GRPOGuardTrainer._guard_ratio:
    (log_prob - old_log_prob) * scale + mse / (2 * scale), scale = sqrt(-dt) * std_dev_t);
    mu_old comes from the velocity recorded at sampling (`aux`), mu - mu_old is exact
    because the mean is linear in v. GRPO-Guard's second part, the per-step gradient
    reweighting, is a plan weight (algorithms/grpo_guard.py)."""

    needs_sampling_velocity = True

    def log_ratio(self, logp, logp_old, v, tr, k) -> torch.Tensor:
        dmu = self.table.dmu_dv[k].float().to(self.device).view(-1, *([1] * (v.dim() - 1)))
        diff = (dmu * (v - tr.aux.to(self.device).float())).flatten(1).pow(2).mean(1)
        s = self.table.step_std[k].float().to(self.device)
        return (logp - logp_old) * s + diff / (2 * s)


# -- forward-process objectives: clean samples re-noised at the schedule's noise levels --
def renoise_steps(table, t_range=(0.0, 1.0)) -> torch.Tensor:
    """Indices j of the sampling steps whose noise level sigma_j lies in [lo, hi]."""
    lo, hi = t_range
    return ((table.sigma >= lo) & (table.sigma <= hi)).nonzero().flatten()


def stratified_range(table, fraction: float, skip_first: bool) -> tuple[int, int]:
    """(lo, hi): AWM's strata cover steps lo..hi-1 with hi = floor(T * fraction) and lo = 1
    when the first step (sigma = 1) is left out; at least one step on short schedules."""
    t = table.num_steps
    lo = 1 if skip_first and t > 1 else 0
    return lo, max(lo + 1, min(t, math.floor(t * fraction)))


class ForwardProcess(Objective):
    """Items are the rollout's clean samples x0, each re-noised at a few of the sampling
    schedule's noise levels t = sigma_k: x_t = (1 - t) x0 + t eps (fresh eps per item).
    The rollout keeps no transitions (the plan is ODE only); `step` holds k, so per-step
    gradient sizes are reported as for SDE objectives. Forwards use no CFG."""

    needs_transitions = False
    trains_with_cfg = False
    trailing_field: ClassVar[str | None] = None
    """The algorithm field that, when > 0, makes the objective keep a trailing copy of the
    weights (`self.trailing`): DiffusionNFT's old policy, AWM's EMA policy."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.trailing = Trailing(self.trainable)  # empty until an objective advances it

    def state_dict(self) -> dict:
        return self.trailing.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trailing.load_state_dict(state)

    @classmethod
    def preflight(cls, cfg) -> None:
        field = cls.trailing_field
        if field and float(getattr(cfg.algorithm, field, 0.0) or 0.0) > 0 and cfg.engine.zero_stage == 3:
            from grpo_zoo.errors import ConfigError

            raise ConfigError(
                f"algorithm.{field}: {cls.name}'s trailing copy of the weights needs whole parameters on "
                f"each rank; use engine.zero_stage <= 2 or {field}: 0"
            )

    def steps_per_sample(self) -> int:
        raise NotImplementedError

    def draw_steps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """[b, n] step indices for b clean samples."""
        raise NotImplementedError

    def num_items(self, plan) -> int:
        return plan.sde.shape[0] * self.steps_per_sample()

    def item_forwards(self) -> int:
        return 1

    def renoise(self, ro, gen: torch.Generator):
        """(traj, step, t, x0, eps, x_t) of every item, drawn from `gen` in that order."""
        x0 = ro.latents.float().cpu()
        steps = self.draw_steps(len(x0), gen)
        traj = torch.arange(len(x0)).repeat_interleave(steps.shape[1])
        step = steps.flatten()
        t = self.table.sigma[step].double()
        eps = torch.randn(len(traj), *x0.shape[1:], generator=gen)
        tt = t.float().view(-1, *([1] * (x0.dim() - 1)))
        return traj, step, t, x0[traj], eps, (1 - tt) * x0[traj] + tt * eps

    @torch.no_grad()
    def forward_all(self, xt: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The policy's velocity at every item (no grad), in micro-batches; on the CPU."""
        size = int(getattr(self.optim, "micro_batch", 64) or 64)
        out = [
            self.velocity(xt[i : i + size].to(self.device), t[i : i + size].float().to(self.device), emb[i : i + size])
            .float()
            .cpu()
            for i in range(0, len(xt), size)
        ]
        return torch.cat(out) if out else xt.new_zeros(0, *xt.shape[1:])

    def transitions(self, traj, step, t, x0, xt, aux, logp_old=None):
        from grpo_zoo.rollout import Transitions

        n = len(traj)
        logp_old = torch.zeros(n) if logp_old is None else logp_old
        ones = torch.ones(n, dtype=torch.float64)
        return Transitions(traj=traj, step=step, x=xt, x_next=x0, logp_old=logp_old, weight=ones, sigma=t, aux=aux)

    def kl_to_reference(self, v, xt, t, emb) -> torch.Tensor | None:
        """mean((v - v_ref)^2) per item (the references' velocity-space KL), or None if beta = 0."""
        if self.beta <= 0:
            return None
        return (v - self.reference_velocity(xt, t, emb)).pow(2).flatten(1).mean(1)


@register("nft")
class NFT(ForwardProcess):
    """DiffusionNFT (Zheng et al., 2025, arXiv 2509.16117): negative-aware fine-tuning on the
    forward process, as NVlabs/DiffusionNFT scripts/train_nft_sd3.py computes it.

    Items: each clean sample at `timesteps` distinct noise levels drawn from the sampling
    schedule's (those inside `t_range`; default floor(0.99 T), the reference's
    timestep_fraction 0.99 of its shuffled scheduler timesteps), v_old recorded at each
    under the rollout policy. With r = clip(A, -c, c) / (2c) + 1/2 (c = adv_clip_max),
    v+ = b v + (1 - b) v_old, v- = (1 + b) v_old - b v (b = nft_beta) and x0(u) = x_t - t u:
        loss = c * (r |x0(v+) - x0|^2 / d+ + (1 - r) |x0(v-) - x0|^2 / d-) / b + beta * mean((v - v_ref)^2)
    with d+- the detached per-sample mean |x0(v+-) - x0| (at least 1e-5: adaptive weighting).
    The paper writes the loss in velocity space without the constants c / b and the
    adaptive weight; the reference code has them, and so does this. The old policy is a
    trailing copy of the weights (grpo_zoo.ema.Trailing): it samples the rollouts
    (`sampling_weights`) and gives v_old, and moves once per iteration before the rollout,
    old <- d old + (1 - d) weights, d = min(max(0, steps - old_decay_flat) * old_decay_rate,
    old_decay_max) at the optimizer steps made so far (the reference's `return_decay`).
    old_decay_max 0 keeps no copy: the old policy is the current one."""

    trailing_field = "old_decay_max"

    @property
    def trails(self) -> bool:
        return float(getattr(self.alg_cfg, "old_decay_max", 0.0) or 0.0) > 0

    def old_decay(self, calls: int) -> float:
        """The decay of the move made at the `calls`-th iteration (1, 2, ...)."""
        steps = calls * int(getattr(self.optim, "minibatches", 1)) * int(getattr(self.optim, "inner_epochs", 1))
        flat = int(getattr(self.alg_cfg, "old_decay_flat", 0))
        rate = float(getattr(self.alg_cfg, "old_decay_rate", 1e-3))
        return min(max(0, steps - flat) * rate, float(getattr(self.alg_cfg, "old_decay_max", 0.5)))

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        if not self.trails:
            return contextlib.nullcontext()
        return self.trailing.advance(self.old_decay).swapped_in()

    def steps_per_sample(self) -> int:
        eligible = len(renoise_steps(self.table, self._t_range()))
        n = getattr(self.alg_cfg, "timesteps", None)
        n = max(1, math.floor(0.99 * self.table.num_steps)) if n is None else int(n)
        return max(1, min(n, eligible))

    def _t_range(self) -> tuple[float, float]:
        lo, hi = getattr(self.alg_cfg, "t_range", None) or (0.0, 1.0)
        return float(lo), float(hi)

    def draw_steps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        eligible = renoise_steps(self.table, self._t_range())
        order = torch.rand(b, len(eligible), generator=gen, dtype=torch.float64).argsort(1)
        return eligible[order[:, : self.steps_per_sample()]]

    def items(self, ro, emb: torch.Tensor, gen: torch.Generator) -> tuple[object, int]:
        traj, step, t, x0, _, xt = self.renoise(ro, gen)
        old = (
            self.trailing.ema.swapped_in()
            if self.trails and self.trailing.ema is not None
            else contextlib.nullcontext()
        )
        with old:  # the old policy as the rollout had it (moved before it)
            v_old = self.forward_all(xt, t, emb[traj])
        return self.transitions(traj, step, t, x0, xt, v_old), len(traj)

    def loss(self, b: Batch) -> Terms:
        it = b.items
        beta = float(getattr(self.alg_cfg, "nft_beta", 1.0))
        c = float(getattr(self.alg_cfg, "adv_clip_max", 5.0))
        xt, x0, v_old = it.x.to(self.device), it.x_next.to(self.device), it.aux.to(self.device)
        t = it.sigma.float().to(self.device)
        v = self.velocity(xt, t, b.emb)
        v.retain_grad()
        r = (b.adv.to(self.device).clamp(-c, c) / c / 2 + 0.5).clamp(0, 1)
        tt = t.view(-1, *([1] * (xt.dim() - 1)))
        pos = xt - tt * (beta * v + (1 - beta) * v_old)
        neg = xt - tt * ((1 + beta) * v_old - beta * v)

        def adaptive(pred: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                scale = (pred.double() - x0.double()).abs().flatten(1).mean(1).clamp_min(1e-5)
            return ((pred - x0) ** 2).flatten(1).mean(1) / scale.float()

        per = c * (r * adaptive(pos) + (1 - r) * adaptive(neg)) / beta * b.weight.to(self.device)
        zero = torch.zeros_like(per).detach()
        stats = {"policy": per.detach(), "clipfrac": zero, "approx_kl": zero, "ratio": zero + 1}
        kl = self.kl_to_reference(v, xt, t, b.emb)
        if kl is not None:
            per = per + self.beta * kl
            stats["kl"] = kl.detach()
        return Terms(per, stats, v, 0 if kl is None else len(t))


def matching_logp(v: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weighting: str, power: float):
    """AWM's log-likelihood surrogate: -mean((v - (eps - x0))^2), reshaped by `weighting`
    ("ghuber": -((mse + 1e-10)^p - 1e-10^p) * t / p), in float64, returned as float32."""
    lp = -(v.double() - target.double()).pow(2).flatten(1).mean(1)
    if weighting == "ghuber":
        tiny = 1e-10
        lp = -((-lp + tiny) ** power - tiny**power) * t.double() / power
    return lp.float()


@register("awm")
class AWM(ForwardProcess):
    """Advantage Weighted Matching (Xue et al., 2025, arXiv 2509.25050), as
    scxue/advantage_weighted_matching scripts/train_sd3_awm.py computes it.

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
    min(kl_ema_decay, kl_ema_ramp * optimizer steps so far), kept in `state_dict`."""

    trailing_field = "ema_kl_beta"

    def steps_per_sample(self) -> int:
        return max(1, int(getattr(self.alg_cfg, "timesteps", 6)))

    def draw_steps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        n = self.steps_per_sample()
        fraction = float(getattr(self.alg_cfg, "timestep_fraction", 0.9))
        skip_first = getattr(self.alg_cfg, "time_type", "discrete_wo_init") == "discrete_wo_init"
        lo, hi = stratified_range(self.table, fraction, skip_first)
        bounds = torch.linspace(lo, hi, n + 1, dtype=torch.float64).long()
        lower, upper = bounds[:-1], bounds[1:]
        u = torch.rand(b, n, generator=gen, dtype=torch.float64)
        return lower + (u * (upper - lower)).long()

    # -- the EMA policy the second KL pulls toward --
    @property
    def ema_beta(self) -> float:
        return float(getattr(self.alg_cfg, "ema_kl_beta", 0.0) or 0.0)

    def item_forwards(self) -> int:
        return 2 if self.ema_beta > 0 else 1

    def ema_decay(self, calls: int) -> float:
        """The decay of the EMA step made at the `calls`-th iteration (1, 2, ...)."""
        steps = calls * int(getattr(self.optim, "minibatches", 1)) * int(getattr(self.optim, "inner_epochs", 1))
        top = float(getattr(self.alg_cfg, "kl_ema_decay", 0.3))
        ramp = getattr(self.alg_cfg, "kl_ema_ramp", 1e-3)
        return top if ramp is None else min(top, float(ramp) * steps)

    def ema_policy(self):
        """The EMA of the trainable weights for this iteration (one step per iteration)."""
        return self.trailing.advance(self.ema_decay)

    def items(self, ro, emb: torch.Tensor, gen: torch.Generator) -> tuple[object, int]:
        traj, step, t, x0, eps, xt = self.renoise(ro, gen)
        weighting = getattr(self.alg_cfg, "weighting", "ghuber")
        power = float(getattr(self.alg_cfg, "ghuber_power", 0.25))
        v_old = self.forward_all(xt, t, emb[traj])
        logp_old = matching_logp(v_old, eps - x0, t, weighting, power)
        aux = [eps]
        if self.ema_beta > 0:
            with self.ema_policy().swapped_in():
                aux.append(self.forward_all(xt, t, emb[traj]))
        made = len(traj) * len(aux)
        return self.transitions(traj, step, t, x0, xt, torch.stack(aux, 1), logp_old), made

    def loss(self, b: Batch) -> Terms:
        it, cfg = b.items, self.alg_cfg
        c = float(getattr(cfg, "adv_clip_max", 5.0))
        adv = b.adv.to(self.device).clamp(-c, c) / c * float(getattr(cfg, "advantage_max", 1.0))
        xt, x0, aux = it.x.to(self.device), it.x_next.to(self.device), it.aux.to(self.device)
        t = it.sigma.to(self.device)
        v = self.velocity(xt, t.float(), b.emb)
        v.retain_grad()
        weighting = getattr(cfg, "weighting", "ghuber")
        logp = matching_logp(v, aux[:, 0] - x0, t, weighting, float(getattr(cfg, "ghuber_power", 0.25)))
        clip = float(getattr(cfg, "clip_range", 1.0))
        per, st = ppo_clip(logp, it.logp_old.to(self.device), adv, b.weight.to(self.device), clip)
        stats = {"policy": per.detach(), **st}
        kl = self.kl_to_reference(v, xt, t.float(), b.emb)
        if kl is not None:
            per = per + self.beta * kl
            stats["kl"] = kl.detach()
        if self.ema_beta > 0:
            ema_kl = (v - aux[:, 1]).pow(2).flatten(1).mean(1)
            per = per + self.ema_beta * ema_kl
            stats["ema_kl"] = ema_kl.detach()
        return Terms(per, stats, v, 0 if kl is None else len(t))
