"""The base of forward-process objectives: clean samples re-noised at the schedule's noise levels.

DiffusionNFT (algorithms/diffusion_nft.py) and Advantage Weighted Matching (algorithms/awm.py)
train on the rollout's clean samples x0, each re-noised at a few of the sampling schedule's
noise levels t = sigma_k: x_t = (1 - t) x0 + t eps (fresh eps per item). The rollout keeps
no transitions (the plan is ODE only); an item's `step` holds k, so per-step gradient sizes
are reported as for SDE objectives. Forwards use no CFG. Both may keep a trailing copy of
the weights (`trailing`: NFT's old policy, AWM's EMA policy), saved with every checkpoint.
"""

from __future__ import annotations

import torch

from grpo_zoo.core.contract import ReNoised, RolloutResult
from grpo_zoo.core.ema import Trailing
from grpo_zoo.core.objective import Objective
from grpo_zoo.flow.sde import StepTable


def renoise_steps(table: StepTable, t_range=(0.0, 1.0)) -> torch.Tensor:
    """Indices j of the sampling steps whose noise level sigma_j lies in [lo, hi]."""
    lo, hi = t_range
    return ((table.sigma >= lo) & (table.sigma <= hi)).nonzero().flatten()


class ForwardProcess(Objective):
    """Items are ReNoised clean samples; subclasses say how many per sample and at which steps."""

    needs_transitions = False
    trains_with_cfg = False

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.trailing = Trailing(self.trainable)  # empty until an objective advances it

    def state_dict(self) -> dict:
        return self.trailing.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trailing.load_state_dict(state)

    def optimizer_steps(self, calls: int) -> int:
        """Optimizer steps made before the `calls`-th iteration's items (1, 2, ...)."""
        return calls * self.optim.minibatches * self.optim.inner_epochs

    def steps_per_sample(self) -> int:
        raise NotImplementedError

    def draw_steps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """[b, n] step indices for b clean samples."""
        raise NotImplementedError

    def num_items(self, plan) -> int:
        return plan.sde.shape[0] * self.steps_per_sample()

    def item_forwards(self) -> int:
        return 1

    def renoise(self, ro: RolloutResult, gen: torch.Generator) -> tuple[ReNoised, torch.Tensor]:
        """The items (weights 1, nothing recorded yet) and the noise eps of each, drawn from
        `gen` in a fixed order: steps, then noise."""
        x0 = ro.latents.float().cpu()
        steps = self.draw_steps(len(x0), gen)
        traj = torch.arange(len(x0)).repeat_interleave(steps.shape[1])
        step = steps.flatten()
        t = self.table.sigma[step].double()
        eps = torch.randn(len(traj), *x0.shape[1:], generator=gen)
        tt = t.float().view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - tt) * x0[traj] + tt * eps
        weight = torch.ones(len(traj), dtype=torch.float64)
        return ReNoised(traj=traj, step=step, t=t, x_t=x_t, x0=x0[traj], weight=weight), eps

    @torch.no_grad()
    def forward_all(self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The policy's velocity at every item (no grad), in micro-batches of optim.micro_batch; on the CPU."""
        size = self.optim.micro_batch
        out = [
            self.velocity(x_t[i : i + size].to(self.device), t[i : i + size].float().to(self.device), emb[i : i + size])
            .float()
            .cpu()
            for i in range(0, len(x_t), size)
        ]
        return torch.cat(out) if out else x_t.new_zeros(0, *x_t.shape[1:])

    def kl_to_reference(self, v, x_t, t, emb) -> torch.Tensor | None:
        """mean((v - v_ref)^2) per item (the references' velocity-space KL), or None if beta = 0."""
        if self.beta <= 0:
            return None
        return (v - self.reference_velocity(x_t, t, emb)).pow(2).flatten(1).mean(1)
