"""BranchGRPO: a binary rollout tree with shared prefixes, depth-wise advantages, pruning.

Each prompt group is one tree from one initial noise. At every split step each branch
splits in two, so r split steps give G = 2^r leaves (the rows); a branch shares its
parent's prefix, computed once. Every step with noise is SDE (BranchGRPO-Mix: only the
first `sde_window` steps and the split steps), and each transition of the tree is trained
once, by the row that owns it. A transition's node value is the mean reward of the leaves
below it (reward fusion); values are normalised per depth (step) across the tree's nodes,
and a transition trains with its node's advantage. Steps before the first split have a
single node (advantage 0 in the reference) and are not trained. Pruning leaves the
rollout alone and trains fewer transitions: depth pruning drops whole steps (optionally a
window sliding earlier with the iteration), width pruning keeps part of each leaf's
transitions after the last split.

Settings from Fredreic1849/BranchGRPO and the paper (Li et al., 2025, "BranchGRPO: Stable
and Efficient GRPO with Structured Branching in Diffusion Models", arXiv 2509.06040):
- scripts/finetune/finetune_flux_branchgrpo_8gpus.sh: 20 steps, split points 0,3,6,9,
  16 generations (4 binary splits), mixed ODE/SDE off (window 4, slide interval 30 when
  on), probability-weighted fusion off, depth pruning none, width pruning off.
- fastvideo/train_branchgrpo_flux.py: binary splits (run_tree_sample_step), SDE on every
  step unless mixed, all tree edges trained; compute_node_rewards_from_leaves (leaf mean,
  or a softmax over child-edge log-probs with --tree_prob_weighted);
  compute_hierarchical_advantages_by_depth (per tree and depth, 0 for a single node);
  depth pruning by node depth (= step + 1) with a sliding window that stops at the last
  split; width pruning mode 1 (best ratio of each last-split branch's later transitions).

Reward fusion with `prob_weighted` (the reference's --tree_prob_weighted,
`compute_node_rewards_from_leaves`): bottom-up, a node with one child takes its value; a
node with several takes sum(softmax(alpha * child edge log-probs) * child values), alpha =
1, where a child edge's log-prob is that child's transition's (per-element mean, as the
rollout records it, ctx.logp). Width pruning `best_worst` (the reference's mode 2,
`train_one_step_tree`): of this rank's transitions after the last split, sorted by
advantage, train the best keep // 2 and the worst keep - keep // 2, keep = max(2,
int(n * width_ratio)); it is decided after the advantages (`keep`), and the others run no
forward or backward.

Split noise and the scored sample, as the reference has them: a split step draws its two
children with 4x the noise (--tree_split_noise_scale 4.0, flux_step_with_split, L271-272) and
scores them under the unscaled Gaussian (L277-279; training recomputes the same law, so old and
new log-probs agree with each other, not with the sampling law): `split_noise_scale`, the
plan's noise_scale. Each leaf's reward is of the last step's predicted clean sample x - sigma v
(pred_original, L249, L515, L861-866), not of the last step's noisy sample; the last step's
transition is still trained, as the reference's collect_all_transitions does: `score`.

Differences from the reference: the depth-wise normalisation's std convention and epsilon are
the settings below (the reference: sample std + 1e-8); a depth whose std is below 1e-6 gets 0
there and the bench's clip here; the script's --pruning_step_ratio (pruning only in the first
part of training) is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.advantages import ctx_norm, normalize_within
from grpo_zoo.core.algorithm import AdvantageContext, Algorithm, AlgorithmConfig, Plan, PlanContext, Setting, register
from grpo_zoo.errors import ConfigError


@dataclass
class BranchGRPOConfig(AlgorithmConfig):
    name: str = "branch_grpo"
    """BranchGRPO (Li et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """A tree grows from one noise (the reference's init_same_noise; only `shared` is valid)."""
    split_points: list[int] | None = num(None, ge=0)
    """Steps at which every branch splits in two (G = 2^len leaves); null: log2(G) splits every
    `split_every` steps from step 0 (the reference: 0,3,6,9 with 16 leaves on 20 steps)."""
    split_every: int = num(3, ge=1)
    """Spacing of the default split points (narrowed to fit short schedules)."""
    sde_window: int | None = num(None, ge=1)
    """BranchGRPO-Mix: null: every step with noise is SDE; w: only the first w steps and the split
    steps are SDE (and trained), ODE elsewhere (the reference's mix setting: 4)."""
    prune_steps: list[int] | None = num(None, ge=0)
    """Depth pruning: steps whose transitions are not trained (the reference lists node depths,
    = step + 1; its script prunes none)."""
    prune_slide_every: int = num(0, ge=0)
    """0: fixed pruned steps; n: they move one step earlier every n iterations (the reference: 30)."""
    prune_stop: int | None = None
    """The earliest step a sliding pruned window reaches; null: the step before the last split."""
    width_pruning: Literal["off", "per_branch", "best_worst"] = "off"
    """per_branch (the reference's mode 1): of the n transitions each leaf makes after the last
    split, train the first max(1, int(n * width_ratio)); they share one advantage, so the
    reference's stable sort by advantage keeps the earliest. best_worst (mode 2): of the rank's
    transitions after the last split, train those with the highest and the lowest advantages."""
    prob_weighted: bool = False
    """Fuse child values weighted by softmax of their edge log-probs (the reference's
    --tree_prob_weighted; its script: off) instead of the mean of the leaves below."""
    width_ratio: float = num(0.5, gt=0, le=1)
    """Share of each leaf's post-split transitions kept by width pruning, in (0, 1]."""
    split_noise_scale: float = num(4.0, gt=0)
    """The noise a split step draws is this multiple of the Gaussian its transitions are scored
    under, old and new log-probs alike (the reference's --tree_split_noise_scale 4.0,
    flux_step_with_split; 1: every SDE step samples the law it scores)."""
    score: Literal["prediction", "latent"] = "prediction"
    """What the reward sees of a leaf: `prediction`, the last step's predicted clean sample
    x - sigma v (the reference decodes pred_original), or `latent`, the last step's sample."""

    def validate(self) -> None:
        if self.initial_noise != "shared":
            raise ConfigError("initial_noise: branch_grpo grows each tree from one noise; use shared")
        pts = self.split_points
        if pts is not None and (not pts or sorted(set(pts)) != list(pts)):
            raise ConfigError(f"split_points: expected increasing distinct steps >= 0, got {pts}")


BRANCH_MINIBATCHES = 17
"""optim.minibatches at the toy tree (P = 4, G = 8, T = 10: 200 trained transitions a rank): 200 / 12."""


@register("branch_grpo")
class BranchGRPO(Algorithm):
    Config = BranchGRPOConfig
    paper = 'Li et al., 2025, "BranchGRPO" (arXiv 2509.06040)'
    reference = "Fredreic1849/BranchGRPO: fastvideo/train_branchgrpo_flux.py"
    repository = "Fredreic1849/BranchGRPO@19fbb9f"
    settings = {
        "sampling.noise": Setting("constant", "fastvideo/train_branchgrpo_flux.py:252 (std = eta sqrt(dt))"),
        "sampling.noise_level": Setting(0.3, "scripts/finetune/finetune_flux_branchgrpo_8gpus.sh:83 (--eta 0.3)"),
        "algorithm.split_noise_scale": Setting(
            4.0, "scripts/finetune/finetune_flux_branchgrpo_8gpus.sh:29,97; fastvideo/train_branchgrpo_flux.py:271-279"
        ),
        "algorithm.score": Setting("prediction", "fastvideo/train_branchgrpo_flux.py:249,515,861-866 (pred_original)"),
        "optim.clip_range": Setting(1e-3, "scripts/finetune/finetune_flux_branchgrpo_8gpus.sh:94"),
        "optim.beta": Setting(0.0, "fastvideo/train_branchgrpo_flux.py (no KL term)"),
        "optim.minibatches": Setting(
            "an optimizer step every 12 trained transitions (about 37 a rollout)",
            "fastvideo/train_branchgrpo_flux.py:1592; scripts/finetune/finetune_flux_branchgrpo_8gpus.sh:71",
            toolkit=BRANCH_MINIBATCHES,
            why="the same rule at the toy's tree: its trained transitions a rank / 12, rounded",
        ),
        "optim.global_std": Setting(False, "fastvideo/train_branchgrpo_flux.py:655 (per tree and depth)"),
        "optim.adv_std": Setting(
            "unbiased", "fastvideo/train_branchgrpo_flux.py:670 (torch .std() + 1e-8: a 2-node depth gets +-0.71)"
        ),
        "optim.adv_eps": Setting(1e-8, "fastvideo/train_branchgrpo_flux.py:670"),
        "optim.weight_decay": Setting(
            1e-4, "scripts/finetune/finetune_flux_branchgrpo_8gpus.sh:87 (--weight_decay 0.0001)"
        ),
    }

    def trainable_steps(self, table) -> range:
        return range(table.last_noisy_step + 1)

    def splits(self, table, group_size: int) -> list[int]:
        """The split steps: log2(G) of them, each with noise."""
        r = group_size.bit_length() - 1
        if group_size != 1 << r:
            raise ConfigError(f"group_size: branch_grpo's binary tree has 2^splits leaves; got {group_size}")
        last = table.last_noisy_step
        pts = self.cfg.split_points
        if pts is None:
            if r - 1 > last:
                raise ConfigError(f"group_size: {group_size} leaves need {r} split steps; the schedule has {last + 1}")
            every = self.cfg.split_every if r < 2 else min(self.cfg.split_every, last // (r - 1))
            pts = [i * every for i in range(r)]
        if len(pts) != r:
            raise ConfigError(
                f"split_points: {len(pts)} splits make {1 << len(pts)} leaves, data.group_size is {group_size}"
            )
        if pts[-1] > last:
            raise ConfigError(f"split_points: step {pts[-1]} has no noise (the last noisy step is {last})")
        return list(pts)

    def check(self, table, group_size: int) -> None:
        super().check(table, group_size)
        self.splits(table, group_size)

    def sde_steps(self, table, pts: list[int]) -> torch.Tensor:
        """[T] bool: the stochastic steps (every step with noise; BranchGRPO-Mix: a window and the splits)."""
        steps = torch.arange(table.num_steps)
        sde = table.step_std > 0
        if self.cfg.sde_window is not None:
            sde &= (steps < self.cfg.sde_window) | torch.isin(steps, torch.tensor(pts))
        return sde

    def train_mask(self, iteration: int, table, pts: list[int]) -> torch.Tensor:
        """[T] bool: the SDE steps whose transitions train at `iteration` (after pruning)."""
        steps = torch.arange(table.num_steps)
        keep = self.sde_steps(table, pts) & (steps >= pts[0])  # before the first split: one node per depth
        base = sorted(self.cfg.prune_steps or [])
        if base and self.cfg.prune_slide_every:
            stop = self.cfg.prune_stop if self.cfg.prune_stop is not None else max(pts[-1] - 1, 0)
            shift = min(iteration // self.cfg.prune_slide_every, max(base[0] - stop, 0))
            base = [s - shift for s in base]
        keep &= ~torch.isin(steps, torch.tensor(base, dtype=torch.long))
        if self.cfg.width_pruning == "per_branch":
            after = (keep & (steps > pts[-1])).nonzero().flatten()
            keep[after[max(1, int(len(after) * self.cfg.width_ratio)) :]] = False
        return keep

    def plan(self, ctx: PlanContext) -> Plan:
        table, g, p = ctx.table, ctx.group_size, ctx.num_prompts
        pts = self.splits(table, g)
        # leaf b > 0 leaves leaf b - 2^h at split h, h its highest bit: each split doubles the leaves
        leaf = torch.arange(g)
        high = torch.tensor([max(b.bit_length() - 1, 0) for b in range(g)])
        parent = torch.where(leaf > 0, leaf - (1 << high), leaf).repeat(p) + torch.arange(p).repeat_interleave(g) * g
        branch_at = torch.where(leaf > 0, torch.tensor(pts)[high], 0).repeat(p)
        sde = self.empty(ctx)
        sde[:] = self.sde_steps(table, pts)
        owned = torch.arange(table.num_steps) >= branch_at[:, None]  # not the prefix shared with the parent
        train = owned & self.train_mask(ctx.iteration, table, pts)
        scale = torch.ones(sde.shape, dtype=torch.float64)
        scale[:, pts] = self.cfg.split_noise_scale
        return self.make_plan(
            ctx, sde, train, parent=parent, branch_at=branch_at, noise_scale=scale,
            score_prediction=self.cfg.score == "prediction",
        )  # fmt: skip

    def advantages(self, ctx: AdvantageContext, traj: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Each transition's node value (mean reward of the leaves below it, or the
        probability-weighted fusion), normalised among the nodes of its tree at its depth."""
        t = ctx.table.num_steps
        local = ctx.scores.flatten().double()
        _, owner = ctx.plan.sources()  # [B, T] the row whose transition each row takes at each step
        if self.cfg.prob_weighted:
            value = fused_values(owner, ctx.logp.double(), local)
        else:
            ones = torch.ones(owner.shape, dtype=torch.float64)
            total = torch.zeros_like(ones).scatter_add_(0, owner, local[:, None].expand_as(owner))
            value = total / torch.zeros_like(ones).scatter_add_(0, owner, ones).clamp_min(1)
        depth_group = traj // ctx.group_size * t + step
        return normalize_within(value[traj, step], depth_group, *ctx_norm(ctx))

    def keep(
        self, ctx: AdvantageContext, traj: torch.Tensor, step: torch.Tensor, adv: torch.Tensor
    ) -> torch.Tensor | None:
        """Width pruning `best_worst`: the best and worst transitions after the last split."""
        if self.cfg.width_pruning != "best_worst":
            return None
        late = step > self.splits(ctx.table, ctx.group_size)[-1]
        idx = late.nonzero().flatten()
        n = len(idx)
        k = max(2, int(n * self.cfg.width_ratio))
        order = idx[torch.argsort(adv[idx], descending=True, stable=True)]
        mask = ~late
        mask[order[: k // 2]] = True
        mask[order[max(n - (k - k // 2), 0) :]] = True
        return mask


def fused_values(owner: torch.Tensor, logp: torch.Tensor, leaf: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """[B, T] value of the node each row reaches after step j: the leaf's reward after the last
    step; above it, bottom-up, softmax(alpha * child edge log-probs) . child values (one child:
    its value). `owner` [B, T]: whose transition row b takes at j; `logp` [B, T]: its log-prob."""
    b, t = owner.shape
    value = torch.zeros(b, t, dtype=torch.float64)
    value[:, t - 1] = leaf[owner[:, t - 1]]
    for j in range(t - 2, -1, -1):
        for node in owner[:, j].unique().tolist():
            members = (owner[:, j] == node).nonzero().flatten()
            kids = owner[members, j + 1].unique()
            weights = torch.softmax(alpha * logp[kids, j + 1], 0) if len(kids) > 1 else torch.ones(1).double()
            value[members, j] = (weights * value[kids, j + 1]).sum()
    return value
