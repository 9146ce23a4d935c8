"""The policy update: minibatches of training items through an objective, then engine steps.

Items are shuffled (seeded) into `optim.minibatches` minibatches per inner epoch, each
split into micro-batches of `optim.micro_batch`; weights are normalised to mean 1 over
the minibatch of all ranks, the objective's per-item losses are summed and divided by
the minibatch size, and the engine steps once per minibatch. Every rank runs the same
number of engine steps even when ranks hold different numbers of items (a rank with none
in a minibatch contributes a zero gradient), and compute is counted from what each rank
ran, summed over ranks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from grpo_zoo.core.contract import AdvantageContext, Batch, Items
from grpo_zoo.core.loss import normalize_weights
from grpo_zoo.core.objective import Objective
from grpo_zoo.errors import NonFiniteError

FIXED = ("policy", "kl", "clipfrac", "approx_kl", "ratio")
"""Stats with a fixed metric name (UpdateStats.row); any other an objective reports is
logged as stats/<name>."""


@dataclass
class UpdateStats:
    """What one update measured; `row()` gives the fixed metric names."""

    policy: float = 0.0
    kl: float = 0.0
    clipfrac: float = 0.0
    approx_kl: float = 0.0
    ratio_mean: float = 0.0
    ratio_max_dev: float = 0.0
    ratio_dev_first_minibatch: float = 0.0
    grad_norm: float = 0.0
    grad_t: dict[int, float] = field(default_factory=dict)
    """Mean per-item gradient size at the velocity, by timestep index."""
    extra: dict[str, float] = field(default_factory=dict)
    """Means of the objective's own stats (names outside FIXED), logged as stats/<name>."""
    forwards: float = 0.0
    """Samples forwarded with grad, each with a backward (all ranks)."""
    extra_forwards: float = 0.0
    """Samples forwarded without a backward (reference models; all ranks)."""

    def row(self) -> dict[str, float]:
        out = {
            "loss/policy": self.policy,
            "loss/kl": self.kl,
            "stats/clipfrac": self.clipfrac,
            "stats/approx_kl": self.approx_kl,
            "stats/ratio_mean": self.ratio_mean,
            "stats/ratio_max_dev": self.ratio_max_dev,
            "stats/ratio_dev_first_minibatch": self.ratio_dev_first_minibatch,
            "stats/grad_norm": self.grad_norm,
        }
        for k in sorted(self.grad_t):
            out[f"grad_t/{k:02d}"] = self.grad_t[k]
        for name in sorted(self.extra):
            out[f"stats/{name}"] = self.extra[name]
        return out


def update(
    objective: Objective,
    engine,
    items: Items,
    adv: torch.Tensor,
    emb: torch.Tensor,
    optim,
    gen: torch.Generator,
    on_step=None,
    step: int = 0,
    ctx: AdvantageContext | None = None,
) -> UpdateStats:
    """Train on `items` (with advantages `adv` [N], or [N, K] per reward where the objective
    takes them, prompt embeddings `emb` per row, and the iteration's scored context `ctx`)."""
    if adv.dim() == 2 and not objective.per_reward_advantages:
        raise ValueError(f"objective {objective.name!r} takes one advantage per item, got {tuple(adv.shape)}")
    n = len(items)
    sums: dict[str, float] = defaultdict(float)
    gsum: dict[int, float] = defaultdict(float)
    gcount: dict[int, int] = defaultdict(int)
    grad_norms: list[float] = []
    forwards = extra = 0
    passes = objective.passes_per_item()
    first_dev = None
    for _ in range(optim.inner_epochs):
        perm = torch.randperm(n, generator=gen)
        for mb in minibatches(perm, optim.minibatches):
            total = engine.all_reduce_sum(torch.tensor([float(items.weight[mb].sum()), float(len(mb))]))
            micro = list(mb.split(optim.micro_batch)) if len(mb) else []
            if not micro:  # nothing here this minibatch, but every rank steps together
                _zero_backward(engine)
            for i, idx in enumerate(micro):
                sub = items.select(idx)
                w = normalize_weights(sub.weight, float(total[0]), int(total[1])).float()
                terms = objective.loss(Batch(sub, adv[idx], w, emb[sub.traj].to(objective.device), ctx))
                loss = terms.per.sum() / len(mb)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"non-finite loss at step {step}")
                engine.backward(loss, last_micro_batch=i == len(micro) - 1)
                forwards += len(idx) * passes
                extra += terms.extra_forwards
                if terms.velocity is not None and terms.velocity.grad is not None:
                    norms = terms.velocity.grad.flatten(1).norm(dim=1).cpu() * len(mb)  # per item, undo 1/|mb|
                    for kk, nn in zip(sub.step.tolist(), norms.tolist()):
                        if kk >= 0:
                            gsum[kk] += nn
                            gcount[kk] += 1
                st = terms.stats
                for key, value in st.items():
                    sums[key] += float(value.sum())
                if "ratio" in st:
                    sums["ratio_dev"] = max(sums["ratio_dev"], float((st["ratio"] - 1).abs().max()))
                sums["count"] += len(idx)
            if first_dev is None:  # the first minibatch is on-policy: its ratios are 1
                first_dev = sums["ratio_dev"]
            grad_norms.append(engine.step())
            if on_step is not None:
                on_step()
    counts = engine.all_reduce_sum(torch.tensor([float(forwards), float(extra)], dtype=torch.float64))
    c = max(sums["count"], 1)
    return UpdateStats(
        policy=sums["policy"] / c,
        kl=sums["kl"] / c,
        clipfrac=sums["clipfrac"] / c,
        approx_kl=sums["approx_kl"] / c,
        ratio_mean=sums["ratio"] / c if "ratio" in sums else 1.0,  # no ratio reported: on-policy
        ratio_max_dev=sums["ratio_dev"],
        ratio_dev_first_minibatch=first_dev if first_dev is not None else 0.0,
        grad_norm=sum(grad_norms) / max(len(grad_norms), 1),
        grad_t={kk: gsum[kk] / gcount[kk] for kk in gsum},
        extra={k: v / c for k, v in sums.items() if k not in (*FIXED, "ratio_dev", "count")},
        forwards=float(counts[0]),
        extra_forwards=float(counts[1]),
    )


def minibatches(perm: torch.Tensor, m: int) -> list[torch.Tensor]:
    """Exactly m minibatches of ceil(N / m) items (the last ones shorter or empty)."""
    size = max(1, -(-len(perm) // m))
    parts = list(perm.split(size)) if len(perm) else []
    return parts + [perm[:0]] * (m - len(parts))


def _zero_backward(engine) -> None:
    """A backward of zero through every trainable weight: gradient reductions stay in step."""
    params = [p for p in engine.module.parameters() if p.requires_grad]
    engine.backward(sum((p * 0).sum() for p in params), last_micro_batch=True)
