"""Group-relative advantages, shared by every algorithm.

A = (r - mean_group) / (std + eps), with std taken over the group or, with
`global_std`, over the whole batch (all ranks, when the caller gathers first), then
clipped to +-clip. Rewards come as [P, G]: one row per prompt group. The std is the
population's (n, Flow-GRPO's np.std, eps 1e-4) or, with `unbiased`, the sample's (n - 1,
torch's .std() as DanceGRPO takes it, eps 1e-8): optim.adv_std and optim.adv_eps.
"""

from __future__ import annotations

import torch

from grpo_zoo.core.contract import AdvantageContext

STD_EPS = 1e-4


def group_advantages(
    rewards: torch.Tensor, global_std: bool = False, clip: float = 5.0, unbiased: bool = False, eps: float = STD_EPS
) -> torch.Tensor:
    """Advantages [P, G] for rewards [P, G] (float64 internally, returned float32)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, group >= 2], got {tuple(rewards.shape)}")
    r = rewards.double()
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(unbiased=unbiased) if global_std else r.std(dim=1, keepdim=True, unbiased=unbiased)
    adv = (r - mean) / (std + eps)
    return adv.clamp(-clip, clip).float()


def rank_group_advantages(ctx: AdvantageContext, entry: str | None = None) -> torch.Tensor:
    """[P, G] group advantages of this rank's groups for reward `entry` (default: the
    training reward), normalised as over the whole batch (`global_std` takes every rank's
    spread), so a rank's advantages do not depend on how the batch is split."""
    rewards = ctx.batch_rewards[entry or ctx.reward]
    p = ctx.num_prompts
    adv = group_advantages(rewards, ctx.global_std, ctx.adv_clip, ctx.adv_std == "unbiased", ctx.adv_eps)
    return adv[ctx.rank * p : (ctx.rank + 1) * p]


def zero_std_ratio(rewards: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (they give no learning signal)."""
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return float((spread <= 1e-8).double().mean())


def normalize_within(
    values: torch.Tensor,
    groups: torch.Tensor,
    global_std: bool = False,
    clip: float = 5.0,
    unbiased: bool = False,
    eps: float = STD_EPS,
):
    """Advantages [N] of `values` [N] normalised within the items sharing a group id [N]:
    (v - mean_group) / (std + eps), std over the group (or all N with `global_std`); with
    `unbiased` the sample std (n - 1; a group of one item has advantage 0)."""
    v = values.double()
    _, inverse = torch.unique(groups, return_inverse=True)
    count = torch.zeros(int(inverse.max()) + 1 if len(v) else 0, dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(v)
    )
    mean = torch.zeros_like(count).index_add_(0, inverse, v) / count
    dev = v - mean[inverse]
    if global_std:
        std = v.std(unbiased=unbiased).expand_as(v)
    else:
        dof = (count - 1).clamp(min=1) if unbiased else count
        var = torch.zeros_like(count).index_add_(0, inverse, dev**2) / dof
        std = var.sqrt()[inverse]
    return (dev / (std + eps)).clamp(-clip, clip).float()


def ctx_norm(ctx: AdvantageContext, clip: float | None = None) -> tuple:
    """normalize_within's (global_std, clip, unbiased, eps) from a context (`clip` overrides its adv_clip)."""
    return ctx.global_std, ctx.adv_clip if clip is None else clip, ctx.adv_std == "unbiased", ctx.adv_eps


def aggregate(algorithm, ctx: AdvantageContext, traj: torch.Tensor, step: torch.Tensor, weights, rule: str):
    """The advantages of the trained items (traj, step) under several weighted rewards
    (`weights` {entry: w}, reward.aggregate `rule`), each entry's advantage by the algorithm's
    own rule (`algorithm.advantages` with that entry as the training reward):
    - sum, or one reward (`weights` None): the training entry's advantages [N];
    - advantages: sum_k w_k / sum(w) A_k, each A_k unclipped, the sum clipped to +-adv_clip
      once [N] (MixGRPO's advantage_aggr, fastvideo/train_grpo_flux.py:448-455, 567, 767 at
      Tencent-Hunyuan/MixGRPO@e5cdd6a);
    - losses: [N, K], column k = w_k A_k, A_k clipped (DanceGRPO's one clipped loss per reward,
      summed with its coefficient: fastvideo/train_grpo_hunyuan.py:443-477, final_loss = vq_coef *
      vq_loss + mq_coef * mq_loss, at XueZeyue/DanceGRPO@15cc71d; ppo_clip clips each column)."""
    import dataclasses
    import math

    if not weights or rule == "sum":
        return algorithm.advantages(ctx, traj, step)
    if rule == "advantages":
        total = sum(weights.values())
        unclipped = dataclasses.replace(ctx, adv_clip=math.inf)
        parts = [
            w / total * algorithm.advantages(dataclasses.replace(unclipped, reward=e), traj, step)
            for e, w in weights.items()
        ]
        return torch.stack(parts).sum(0).clamp(-ctx.adv_clip, ctx.adv_clip)
    if rule == "losses":
        cols = [w * algorithm.advantages(dataclasses.replace(ctx, reward=e), traj, step) for e, w in weights.items()]
        return torch.stack(cols, -1)
    raise ValueError(f"reward.aggregate: unknown rule {rule!r}")
