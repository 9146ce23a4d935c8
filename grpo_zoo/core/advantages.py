"""Group-relative advantages, shared by every algorithm.

A = (r - mean_group) / (std + 1e-4), with std taken over the group or, with
`global_std`, over the whole batch (all ranks, when the caller gathers first), then
clipped to +-clip. Rewards come as [P, G]: one row per prompt group.
"""

from __future__ import annotations

import torch

from grpo_zoo.core.contract import AdvantageContext

STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, global_std: bool = False, clip: float = 5.0) -> torch.Tensor:
    """Advantages [P, G] for rewards [P, G] (float64 internally, returned float32)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, group >= 2], got {tuple(rewards.shape)}")
    r = rewards.double()
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(unbiased=False) if global_std else r.std(dim=1, keepdim=True, unbiased=False)
    adv = (r - mean) / (std + STD_EPS)
    return adv.clamp(-clip, clip).float()


def rank_group_advantages(ctx: AdvantageContext, entry: str | None = None) -> torch.Tensor:
    """[P, G] group advantages of this rank's groups for reward `entry` (default: the
    training reward), normalised as over the whole batch (`global_std` takes every rank's
    spread), so a rank's advantages do not depend on how the batch is split."""
    rewards = ctx.batch_rewards[entry or ctx.reward]
    p = ctx.num_prompts
    return group_advantages(rewards, ctx.global_std, ctx.adv_clip)[ctx.rank * p : (ctx.rank + 1) * p]


def zero_std_ratio(rewards: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (they give no learning signal)."""
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return float((spread <= 1e-8).double().mean())


def normalize_within(values: torch.Tensor, groups: torch.Tensor, global_std: bool = False, clip: float = 5.0):
    """Advantages [N] of `values` [N] normalised within the items sharing a group id [N]:
    (v - mean_group) / (std + 1e-4), std over the group (or all N with `global_std`)."""
    v = values.double()
    _, inverse = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(inverse.max()) + 1 if len(v) else 0, dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(v)
    )
    mean = torch.zeros_like(count).index_add_(0, inverse, v) / count
    dev = v - mean[inverse]
    if global_std:
        std = v.std(unbiased=False).expand_as(v)
    else:
        var = torch.zeros_like(count).index_add_(0, inverse, dev**2) / count
        std = var.sqrt()[inverse]
    return (dev / (std + STD_EPS)).clamp(-clip, clip).float()
