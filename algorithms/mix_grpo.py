"""MixGRPO: SDE inside a sliding window of w steps, ODE elsewhere; only the window trains.

The window starts at step 0 and moves `shift` steps later every `shift_every` training
iterations ("progressive" strategy with roll-back), as the reference's GRPOTrainingStates does
(fastvideo/utils/grpo_states.py at e5cdd6a): its domain is max_timesteps = T - 2
(fastvideo/train_grpo_flux.py:919), the window at start c is steps c .. min(c + w, T - 2) - 1
(grpo_states.py:148), so it shrinks at the end, is empty (an all-ODE iteration that trains
nothing) at c = T - 2, and rolls back to 0 once c would pass T - 2 (grpo_states.py:95-97):
starts 0, s, 2s, ... <= T - 2, each for `shift_every` iterations. Step T - 2 itself is never
trained, as in the reference. `timestep_fraction` (a number) keeps the window inside the first
floor(T * fraction) steps instead and wraps it whole: the toolkit's rule before 2026-12-07,
which the published leaderboard ran with 0.6. The plan is a function of the iteration, so a
resumed run plans exactly as an uninterrupted one.

MixGRPO-Flash (`post_compress_ratio`, with sampling.ode_solver dpm2: experiments/toy/
mix_grpo_flash.yaml) runs the ODE after the window on a coarser grid of its own: int((T - last)
* r) sigma nodes from the step after the window's last step to 0, evenly spaced in unshifted
time and shifted as the schedule (fastvideo/utils/sampling_utils.py:44-54), solved by
DPM-Solver++(2M) continuing the window's history; Flash* keeps the window at steps 0-3
(`shift: 0`) with r = 0.2.

Settings from Tencent-Hunyuan/MixGRPO, scripts/finetune/finetune_flux_grpo_MixGRPO.sh
(group_size=4 steps in the window, iters_per_group=25, prog_overlap_step=1, roll_back,
init_same_noise; its timestep_fraction is not read by the "part" strategy) and the paper
(Li et al., 2025, arXiv 2507.21802).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from grpo_zoo.config.schema import num
from grpo_zoo.core.algorithm import (
    Algorithm,
    AlgorithmConfig,
    Plan,
    PlanContext,
    Setting,
    register,
)
from grpo_zoo.errors import ConfigError


@dataclass
class MixGRPOConfig(AlgorithmConfig):
    name: str = "mix_grpo"
    """MixGRPO (Li et al., 2025)."""
    initial_noise: Literal["independent", "shared"] = "shared"
    """The reference starts a group's rollouts from one noise (init_same_noise)."""
    window: int = num(4, ge=1)
    """w: consecutive SDE (and trained) steps (cut at the end of the window's domain)."""
    shift_every: int = num(25, ge=1)
    """Training iterations between two moves of the window."""
    shift: int = num(1, ge=0)
    """Steps the window moves each time (0: it stays at steps 0 .. w - 1, MixGRPO-Flash*'s
    prog_overlap_step=0)."""
    post_compress_ratio: float | None = num(None, gt=0, le=1)
    """MixGRPO-Flash: null: the ODE after the window runs on the table's steps; r: it runs on
    max(int((T - last) * r), 2) nodes from the step after the window's last step (`last`) to 0,
    evenly spaced in unshifted time and shifted as the schedule is (the reference's
    dpm_post_compress_ratio: 0.4 for Flash, 0.2 for Flash*; pair it with sampling.ode_solver
    dpm2). The reference's formula floors at one node, an image decoded before sigma 0, only
    where its window never goes in its 300 iterations (start 15 of 23): here a tail is one
    step to 0 at least."""
    timestep_fraction: float | None = num(None, gt=0, le=1)
    """null: the reference's domain (starts 0..T-2, the window cut at T - 2, rolled back after
    it); a number in (0, 1]: the window stays whole inside the first floor(T * fraction) steps
    and wraps (the toolkit's earlier rule)."""


@register("mix_grpo")
class MixGRPO(Algorithm):
    Config = MixGRPOConfig
    paper = 'Li et al., 2025, "MixGRPO" (arXiv 2507.21802)'
    reference = "Tencent-Hunyuan/MixGRPO: scripts/finetune/finetune_flux_grpo_MixGRPO.sh"
    repository = "Tencent-Hunyuan/MixGRPO@e5cdd6a"
    settings = {
        "sampling.noise": Setting(
            "flow_sde",
            "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:196 (--flow_grpo_sampling); fastvideo/utils/sampling_utils.py:177",
        ),
        "sampling.noise_level": Setting(
            0.7, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:55,145 (eta=0.7; --eta $eta)"
        ),
        "algorithm.post_compress_ratio": Setting(
            None,
            "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:75 (dpm_algorithm_type null: the table's steps; "
            "MixGRPO-Flash 0.4 and Flash* 0.2: _Flash.sh:77, _Flash*.sh:77)",
        ),
        "optim.clip_range": Setting(1e-4, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:156"),
        "optim.beta": Setting(0.0, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:56 (kl_coeff 0)"),
        "optim.minibatches": Setting(
            4, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:68,150 (12 samples a rank, 3 per step)"
        ),
        "optim.global_std": Setting(False, "fastvideo/train_grpo_flux.py:448 (per group)"),
        "optim.adv_std": Setting("unbiased", "fastvideo/train_grpo_flux.py:448 (torch .std() + 1e-8)"),
        "optim.adv_eps": Setting(1e-8, "fastvideo/train_grpo_flux.py:448"),
        "optim.weight_decay": Setting(
            1e-4, "scripts/finetune/finetune_flux_grpo_MixGRPO.sh:149 (--weight_decay 0.0001)"
        ),
        "reward.aggregate": Setting(
            "advantages",
            "fastvideo/train_grpo_flux.py:448-455,567,767 (advantage_aggr: weighted advantages summed, clipped once)",
        ),
    }

    def span(self, table) -> int:
        """Steps the window moves in: the reference's T - 2, or the first floor(T * fraction);
        never past the last step with noise."""
        frac = self.cfg.timestep_fraction
        n = table.num_steps - 2 if frac is None else math.floor(table.num_steps * frac)
        n = min(n, table.last_noisy_step + 1)
        if n < 1:
            what = f"timestep_fraction: {frac} of" if frac is not None else "the window's domain (T - 2) of"
            raise ConfigError(f"{what} {table.num_steps} steps is no step")
        return n

    def width(self, table) -> int:
        """The whole window, cut to the span on schedules too short for it."""
        return min(self.cfg.window, self.span(table))

    def trainable_steps(self, table) -> range:
        return range(self.span(table))

    def start(self, iteration: int, table) -> int:
        """The window's first step at `iteration`."""
        move = iteration // self.cfg.shift_every
        if self.cfg.shift == 0:
            return 0
        if self.cfg.timestep_fraction is None:  # 0, s, 2s, ... <= T - 2, then back to 0
            return move % (self.span(table) // self.cfg.shift + 1) * self.cfg.shift
        positions = self.span(table) - self.width(table) + 1
        return move * self.cfg.shift % positions

    def steps(self, iteration: int, table) -> range:
        """The window's steps at `iteration` (the reference's: cut at the domain's end, maybe empty)."""
        s = self.start(iteration, table)
        return range(s, min(s + self.width(table), self.span(table)))

    def tail(self, window: range, table, shift: float) -> tuple[int, tuple[float, ...]] | None:
        """MixGRPO-Flash's re-gridded ODE tail after `window` (fastvideo/utils/sampling_utils.py:44-54):
        (first step of the tail, its sigma nodes), or None (no ratio, or an all-ODE iteration)."""
        r = self.cfg.post_compress_ratio
        if r is None or not len(window):
            return None
        t, k = table.num_steps, window[-1] + 1
        n = max(int((t - window[-1]) * r), 2)
        sig = float(table.sigma[k])
        u0 = sig / (shift - (shift - 1) * sig)  # the unshifted time of the tail's first node
        u = torch.linspace(u0, 0, n, dtype=torch.float64)
        nodes = shift * u / (1 + (shift - 1) * u)
        nodes[0] = sig
        return k, tuple(nodes.tolist())

    def plan(self, ctx: PlanContext) -> Plan:
        sde = self.empty(ctx)
        window = self.steps(ctx.iteration, ctx.table)
        sde[:, window] = True
        tail = self.tail(window, ctx.table, ctx.shift)
        if tail is None:
            return self.make_plan(ctx, sde)
        return self.make_plan(ctx, sde, tail_from=tail[0], tail=tail[1])
