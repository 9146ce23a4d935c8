"""Training objectives, registered by name; an algorithm declares which one it trains with.

An objective turns a rollout into training items (`items`) and a micro-batch of items into
per-item losses (`loss`). The update loop (grpo_zoo/update.py) is the same for all: it
normalises weights over the optimizer batch, sums the per-item losses, runs backward, and
counts the forwards and backwards each objective reports.

- `ppo_clip` (default): Flow-GRPO's weighted PPO-clip on the recorded SDE transitions,
  log-probs recomputed under the current policy, plus beta * KL to the reference.
- `ratio_norm_clip`: the same, with the log-ratio normalised per step as GRPO-Guard's
  RatioNorm does: shifted by the mean-difference term its Gaussian form carries
  (so an unchanged policy has ratio 1 in expectation whatever the step) and scaled by the
  step's noise std, so every step's ratio spreads alike.
- `nft`: DiffusionNFT's forward-process objective. Items are the clean samples re-noised
  at `timesteps` points; no SDE log-prob is needed. With r = clip(A, -c, c) / (2c) + 1/2,
  v+ = b v + (1 - b) v_old and v- = (1 + b) v_old - b v, x0(v) = x_t - t v:
  loss = c * (r |x0(v+) - x0|^2 / d+ + (1 - r) |x0(v-) - x0|^2 / d-) / b, with d+-
  the (detached) mean absolute error of each prediction (its adaptive weighting).
  Reference: NVlabs/DiffusionNFT, and X-GenGroup/Flow-Factory trainers/nft.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

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
    """Base: `records` is what the rollout keeps (SDE transitions or only final samples)."""

    name: ClassVar[str]
    needs_transitions: ClassVar[bool] = True
    """True: items are the plan's trained SDE transitions with their log-probs."""

    def __init__(self, algorithm_cfg, optim, sampling, table, policy, null_emb, dtype, device):
        self.alg_cfg, self.optim, self.sampling, self.table = algorithm_cfg, optim, sampling, table
        self.policy, self.null_emb, self.dtype, self.device = policy, null_emb, dtype, device

    def items(self, ro, emb: torch.Tensor, gen: torch.Generator) -> tuple[object, int]:
        """The training items of a rollout and the forwards spent making them (samples)."""
        return ro.transitions, 0

    def num_items(self, plan) -> int:
        """How many items a plan yields (for estimates, without running it)."""
        return int(plan.train.sum())

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        v = self.policy.velocity(x.to(self.dtype), sigma, emb, self.null_emb, self.sampling.guidance)
        return v.float()

    def loss(self, b: Batch) -> Terms:
        raise NotImplementedError


@register("ppo_clip")
class PPOClip(Objective):
    """Weighted PPO-clip on SDE transitions (+ beta * KL to the reference)."""

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
        if self.optim.beta > 0:
            with torch.no_grad(), self.policy.reference():
                v_ref = self.velocity(x, sigma, b.emb)
            mean_ref = transition_mean(table.kind, x, v_ref, *step)
            kl = gaussian_kl(mean, mean_ref, table.step_std[k])
            per = per + self.optim.beta * kl
            stats["kl"] = kl.detach()
            extra = len(k)
        return Terms(per, stats, v, extra)


@register("ratio_norm_clip")
class RatioNormClip(PPOClip):
    """PPO-clip with GRPO-Guard's per-step normalised log-ratio.

    For a Gaussian step with per-element std s and mean mu = a x + dmu_dv v, the per-element
    mean log-ratio of x' ~ N(mu_old, s^2) is (|x' - mu_old|^2 - |x' - mu|^2) / (2 s^2 d),
    whose expectation -|mu - mu_old|^2 / (2 s^2 d) drifts below 0 as s shrinks. Adding that
    term back (mu - mu_old = dmu_dv (v - v_old), v_old recorded at sampling) centres the
    log-ratio at 0 for every step; multiplying by s makes its spread alike across steps."""

    def log_ratio(self, logp, logp_old, v, tr, k) -> torch.Tensor:
        dmu = self.table.dmu_dv[k].float().to(self.device).view(-1, *([1] * (v.dim() - 1)))
        diff = (dmu * (v - tr.aux.to(self.device).float())).flatten(1).pow(2).mean(1)
        s = self.table.step_std[k].float().to(self.device)
        return (logp - logp_old + diff / (2 * s**2)) * s


@register("nft")
class NFT(Objective):
    """DiffusionNFT's forward-process objective on re-noised clean samples (no log-probs)."""

    needs_transitions = False

    def num_items(self, plan) -> int:
        return plan.sde.shape[0] * int(getattr(self.alg_cfg, "timesteps", 1))

    def items(self, ro, emb: torch.Tensor, gen: torch.Generator) -> tuple[object, int]:
        from grpo_zoo.rollout import Transitions

        x0 = ro.latents.float().cpu()
        b = len(x0)
        n_t = int(getattr(self.alg_cfg, "timesteps", 1))
        traj = torch.arange(b).repeat_interleave(n_t)
        lo, hi = getattr(self.alg_cfg, "t_range", (0.0, 1.0))
        t = lo + (hi - lo) * torch.rand(len(traj), generator=gen, dtype=torch.float64)
        eps = torch.randn(len(traj), *x0.shape[1:], generator=gen)
        tt = t.float().view(-1, *([1] * (x0.dim() - 1)))
        xt = (1 - tt) * x0[traj] + tt * eps
        with torch.no_grad():
            v_old = torch.cat(
                [
                    self.velocity(
                        xt[i : i + 64].to(self.device), t[i : i + 64].float().to(self.device), emb[traj[i : i + 64]]
                    ).cpu()
                    for i in range(0, len(traj), 64)
                ]
            )
        items = Transitions(
            traj=traj,
            step=torch.full((len(traj),), -1),
            x=xt,
            x_next=x0[traj],
            logp_old=torch.zeros(len(traj)),
            weight=torch.ones(len(traj), dtype=torch.float64),
            sigma=t,
            aux=v_old,
        )
        return items, len(traj)

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
        return Terms(per, stats, v, 0)
