"""Preflight: everything a run needs that costs no model weights and no compute, built
once and checked before anything starts (ConfigError, one line, on failure)."""

from __future__ import annotations

from dataclasses import dataclass

from grpo_zoo import rewards
from grpo_zoo.config.run import RunConfig
from grpo_zoo.core import algorithm as algorithms
from grpo_zoo.core import objective as objectives
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.flow.sde import StepTable
from grpo_zoo.models import accel
from grpo_zoo.models.checks import check_model
from grpo_zoo.training.prompts import load_prompts
from grpo_zoo.training.seeding import world_size_from_env


def sampling_tables(s) -> tuple[StepTable, StepTable]:
    """The training and evaluation step tables of a `sampling` config."""
    return (
        step_table(make_sigmas(s.schedule, s.steps, s.shift), s.noise, s.noise_level),
        step_table(make_sigmas(s.schedule, s.eval_steps, s.shift), s.noise, s.noise_level),
    )


@dataclass
class Preflight:
    algorithm: algorithms.Algorithm
    table: StepTable
    eval_table: StepTable
    reward_fn: object
    train_prompts: list[str]
    eval_prompts: list[str]


def preflight(cfg: RunConfig) -> Preflight:
    """Build the algorithm, tables, reward and prompts, and check they fit together."""
    world = world_size_from_env()
    alg = algorithms.build(cfg.algorithm)
    table, eval_table = sampling_tables(cfg.sampling)
    try:
        alg.check(table, cfg.data.group_size)  # the algorithm x objective pairing included
    except ConfigError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith("group_size") else f"algorithm.{msg}") from None
    objectives.get(alg.objective).preflight(cfg)
    reward = rewards.build(cfg.reward)
    check_reward(cfg, alg)
    if cfg.data.prompts_per_step % world:
        raise ConfigError(
            f"data.prompts_per_step: {cfg.data.prompts_per_step} prompt groups do not split over {world} ranks; "
            f"use a multiple of {world}"
        )
    check_plan(cfg, alg, table, world)
    check_experts(cfg, alg, table)
    check_chunks(cfg, table, world)
    if cfg.data.eval_samples % world:
        raise ConfigError(f"data.eval_samples: {cfg.data.eval_samples} does not split over {world} ranks")
    check_model(cfg.model)  # its files, and the LoRA targets on the meta device
    accel.check(cfg.model, cfg.engine)
    train_prompts = load_prompts(cfg.data.prompts, "data.prompts")
    eval_prompts = load_prompts(cfg.data.eval_prompts, "data.eval_prompts")
    if hasattr(reward, "check"):  # a reward service: reachable, checked last (it waits on the network)
        reward.check()
    return Preflight(alg, table, eval_table, reward, train_prompts, eval_prompts)


def check_reward(cfg: RunConfig, alg) -> None:
    """The entries the algorithm reads are among the reward's, and reward.aggregate fits the objective."""
    r = cfg.reward
    if r.weights is None:
        known = rewards.entries(r.name)
    else:
        from grpo_zoo.rewards.weighted import WEIGHTED, resolve

        declared = [rewards.entries(n) for n in resolve(r.weights)]
        known = None if None in declared else (WEIGHTED, *dict.fromkeys(e for d in declared for e in d))
    for entry in alg.reward_entries():
        if known is not None and entry not in known:
            raise ConfigError(
                f"algorithm: {alg.name} reads reward entry {entry!r}, which the run's reward does not give "
                f"(it gives {', '.join(known)})"
            )
    objective = objectives.get(alg.objective)
    if r.weights is not None and r.aggregate == "losses" and not objective.per_reward_advantages:
        raise ConfigError(
            f"reward.aggregate: {alg.name}'s objective {alg.objective!r} trains one loss; use sum or advantages"
        )


def check_experts(cfg: RunConfig, alg, table: StepTable) -> None:
    """A two-expert model (wan2.2-a14b) training some of its experts: at least one step the algorithm
    trains is served by one of them (an item its frozen expert serves is dropped, so otherwise
    nothing would ever train)."""
    model = cfg.model
    if model.backend != "wan2.2-a14b" or set(model.experts) == set(model.EXPERT_NAMES):
        return
    from grpo_zoo.models.wan22 import configured_boundary, trained_steps

    steps = alg.trainable_steps(table)
    if len(steps) and not trained_steps(model, table.sigma[steps.start : steps.stop]).any():
        frozen = ({"high", "low"} - set(model.experts)).pop()
        raise ConfigError(
            f"model.experts: {alg.name} trains steps {steps.start}..{steps.stop - 1} (sigma "
            f"{float(table.sigma[steps.start]):.3f} to {float(table.sigma[steps.stop - 1]):.3f}), all served by the "
            f"frozen {frozen}-noise expert at boundary {configured_boundary(model):g}; train {frozen} too, or move "
            "the trained steps (e.g. algorithm.k_range)"
        )


def check_plan(cfg: RunConfig, alg, table: StepTable, world: int) -> None:
    """The algorithm's plan of iteration 0 keeps every plan invariant under these sampling
    settings (e.g. a re-gridded ODE tail with a strided one): one line now, not a failed
    iteration later. Plans are cheap and made by an instance of their own."""
    from grpo_zoo.core.contract import PlanContext
    from grpo_zoo.training.seeding import generator

    g = cfg.data.group_size
    ctx = PlanContext.of(
        max(cfg.data.prompts_per_step // world, 1), g, table, generator(cfg.seed, 0, "plan check"),
        world=world, ode_stride=cfg.sampling.ode_stride, shift=cfg.sampling.shift,
    )  # fmt: skip
    try:
        algorithms.build(cfg.algorithm).plan(ctx).check(table)
    except ValueError as err:
        raise ConfigError(
            f"algorithm: {cfg.algorithm.name}'s plan does not fit these sampling settings: {err}"
        ) from None


def check_chunks(cfg: RunConfig, table: StepTable, world: int) -> None:
    """sampling.rollout_chunks splits every rank's rows evenly and never a shared prefix (the
    algorithm's plan of iteration 0, made by an instance of its own: plans are cheap)."""
    from grpo_zoo.core.contract import PlanContext
    from grpo_zoo.training.seeding import generator

    chunks, g = cfg.sampling.rollout_chunks, cfg.data.group_size
    rows = cfg.data.prompts_per_step // world * g
    if chunks == 1:
        return
    if rows % chunks:
        raise ConfigError(
            f"sampling.rollout_chunks: {chunks} chunks do not split a rank's {rows} trajectories "
            f"(prompts_per_step / world x group_size) evenly"
        )
    gen = generator(cfg.seed, 0, "chunk check")
    ctx = PlanContext.of(
        rows // g, g, table, gen, world=world, ode_stride=cfg.sampling.ode_stride, shift=cfg.sampling.shift
    )
    plan = algorithms.build(cfg.algorithm).plan(ctx)
    size = rows // chunks
    for lo in range(0, rows, size):
        try:
            plan.rows(lo, lo + size)
        except ValueError as err:
            raise ConfigError(
                f"sampling.rollout_chunks: {chunks} chunks of {size} trajectories split {cfg.algorithm.name}'s plan: {err}"
            ) from None


def check(cfg: RunConfig) -> None:
    """Every check that needs no model weights and no compute (ConfigError on failure)."""
    preflight(cfg)
