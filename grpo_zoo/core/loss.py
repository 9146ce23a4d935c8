"""The one loss every algorithm trains with: weighted PPO-clip plus a KL to the reference.

Per trained transition i with advantage A_i, ratio_i = exp(logp_i - logp_old_i) and
normalised weight w_i:
    policy_i = max(-A_i * ratio_i, -A_i * clip(ratio_i, 1 - eps, 1 + eps)) * w_i
    kl_i     = mean_d((mu_theta - mu_ref)^2) / (2 * step_std_i^2)
    loss     = mean_i(policy_i) + beta * mean_i(kl_i)
"""

from __future__ import annotations

import torch


def normalize_weights(raw: torch.Tensor, batch_sum: float, batch_count: int) -> torch.Tensor:
    """raw / mean(raw), the mean taken over the whole optimizer batch (all ranks).

    The caller passes the sum and count of raw weights over that batch, so that a
    micro-batch is normalised by the same constant as every other.
    """
    return raw / (batch_sum / batch_count)


def ppo_clip(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    weight: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-transition weighted PPO-clip terms and their statistics (no reduction).

    `adv` [N] or [N, K]: with K columns (one per reward, coefficients applied), each column is
    clipped on its own and the K terms summed, as DanceGRPO sums its per-reward losses."""
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    r = ratio[:, None] if adv.dim() == 2 else ratio
    unclipped = -adv * r
    clipped = -adv * torch.clamp(r, 1.0 - clip_range, 1.0 + clip_range)
    per = torch.maximum(unclipped, clipped)
    per = (per.sum(-1) if adv.dim() == 2 else per) * weight
    with torch.no_grad():
        stats = {
            "ratio": ratio.detach(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float(),
            # k3 estimator of KL(old || new), as PPO implementations report it
            "approx_kl": (ratio - 1.0) - log_ratio,
        }
    return per, stats


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, step_std: torch.Tensor) -> torch.Tensor:
    """KL between N(mean, s^2) and N(mean_ref, s^2) per sample, averaged over elements."""
    s = step_std.float().reshape(-1, *([1] * (mean.dim() - 1)))
    return (((mean.float() - mean_ref.float()) ** 2) / (2 * s**2)).flatten(1).mean(1)
