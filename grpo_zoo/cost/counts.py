"""Forwards and backward passes per iteration, from the same plans the trainer draws, and
their price in FLOPs and GPU-hours."""

from __future__ import annotations

import torch

from grpo_zoo.core import algorithm as algorithms
from grpo_zoo.core import objective as objectives
from grpo_zoo.core.contract import AdvantageContext, PlanContext
from grpo_zoo.cost.flops import GPUS, flops_per_nfe
from grpo_zoo.models.base import cfg_multiplier
from grpo_zoo.training.preflight import sampling_tables
from grpo_zoo.training.seeding import generator


def iteration_counts(cfg, step: int, world: int = 1) -> dict[str, float]:
    """Forwards and backward passes of iteration `step`, from the same plans the trainer draws."""
    s = cfg.sampling
    alg = algorithms.build(cfg.algorithm)
    objective = objectives.get(alg.objective)
    table, _ = sampling_tables(s)
    obj = objective(cfg.algorithm, cfg.optim, s, table)  # priced from the settings, no runtime
    cfg_mult = cfg_multiplier(s.guidance)
    local = cfg.data.prompts_per_step // world
    rollout = trained = made = 0
    split = cfg.model.backend == "wan2.2-a14b"  # two experts: what each serves and trains
    if split:
        from grpo_zoo.models.wan22 import configured_boundary, is_high, trained_steps

        high_step = is_high(table.sigma, configured_boundary(cfg.model))
        serves = trained_steps(cfg.model, table.sigma)
        rollout_high = trained_high = 0
    for rank in range(world):
        ctx = PlanContext.of(
            local,
            cfg.data.group_size,
            table,
            generator(cfg.seed, step, rank, "plan"),
            step,
            ode_stride=s.ode_stride,
            shift=s.shift,
        )
        plan = alg.plan(ctx)
        rollout += int(plan.forward_rows().sum()) * cfg_mult
        items = obj.num_items(plan)
        if objective.needs_transitions:  # pruning by advantage: its count, with advantages not known yet
            traj, st = plan.train.nonzero(as_tuple=True)
            if split:  # an item its frozen expert serves does not train (Policy.trains_at)
                traj, st = traj[serves[st]], st[serves[st]]
                items = len(traj)
                rollout_high += int(plan.forward_rows()[:, high_step].sum()) * cfg_mult
                trained_high += int(high_step[st].sum())
            zeros = {cfg.reward.entry: torch.zeros(local, cfg.data.group_size)}
            scored = AdvantageContext(
                iteration=step, prompts=ctx.prompts, group_size=ctx.group_size, table=table, plan=plan,
                reward=cfg.reward.entry, rewards=zeros, batch_rewards=zeros, rank=rank, world=world,
            )  # fmt: skip
            keep = alg.keep(scored, traj, st, torch.zeros(len(traj)))
            items = items if keep is None else int(keep.sum())
        trained += items
        made += obj.num_items(plan) * obj.item_forwards() * obj.cfg_mult
    passes = trained * cfg.optim.inner_epochs * obj.passes_per_item() * obj.cfg_mult
    extra = trained * cfg.optim.inner_epochs * obj.extra_forwards() * obj.cfg_mult
    out = {"rollout_nfe": rollout, "update_nfe": passes + extra + made, "backward": passes}
    if split and objective.needs_transitions:
        out.update(rollout_nfe_high=rollout_high, trained_high=trained_high, trained_low=trained - trained_high)
    return out


def estimate(cfg, gpus: int, gpu: str, mfu: float, budget_gpu_hours: float, plans: int) -> dict:
    fwd, bwd = flops_per_nfe(cfg.model)
    counts = [iteration_counts(cfg, step, gpus) for step in range(plans)]
    mean = {k: sum(c[k] for c in counts) / len(counts) for k in counts[0]}
    flops = (mean["rollout_nfe"] + mean["update_nfe"]) * fwd + mean["backward"] * bwd
    gpu_hours = flops / (GPUS[gpu] * mfu) / 3600
    eval_nfe = cfg.data.eval_samples * cfg.sampling.eval_steps * cfg_multiplier(cfg.sampling.guidance)
    return {
        "algorithm": cfg.algorithm.name,
        "fwd_flops_per_nfe": fwd,
        "bwd_flops_per_nfe": bwd,
        **mean,
        "flops_per_iteration": flops,
        "gpu_hours_per_iteration": gpu_hours,
        "wall_minutes_per_iteration": gpu_hours / gpus * 60,
        "iterations_in_budget": budget_gpu_hours / gpu_hours,
        "eval_gpu_hours": eval_nfe * fwd / (GPUS[gpu] * mfu) / 3600,
    }
