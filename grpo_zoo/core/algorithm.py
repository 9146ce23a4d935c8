"""The algorithm seam: a config, a rollout plan and per-transition weights.

An algorithm is a class in `algorithms/` (installed as `grpo_zoo.algorithms`) or in any
distribution's entry-point group "grpo_zoo.algorithms", registered by name with `@register`. Given a
batch of P prompts x G rollouts, it returns a `Plan`: which step of which trajectory is
stochastic (SDE), which transitions are trained, and each trained transition's raw
weight. Everything else (rollout, reward, advantages, the PPO-clip loss, the engine) is
shared and never looks at the algorithm's name.

Weights are normalised by the shared loss to mean 1 over the trained transitions of the
whole optimizer batch (all ranks), so an algorithm with weight 1 everywhere is unweighted
and Flash-GRPO's rectified weight c(k) = 1/lambda(t_k) becomes c(k) / mean(c).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from grpo_zoo.config.schema import build as build_config
from grpo_zoo.core import objective as objectives
from grpo_zoo.core.advantages import ctx_norm, normalize_within, rank_group_advantages
from grpo_zoo.core.contract import AdvantageContext, Plan, PlanContext
from grpo_zoo.core.registry import discover, in_tree
from grpo_zoo.core.settings import Setting
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow.sde import StepTable

__all__ = [
    "AdvantageContext",
    "Algorithm",
    "AlgorithmConfig",
    "Plan",
    "PlanContext",
    "Setting",
    "build",
    "get",
    "names",
    "register",
]

_REGISTRY: dict[str, type[Algorithm]] = {}


@dataclass
class AlgorithmConfig:
    """Fields every algorithm has; an algorithm's own config subclasses this."""

    name: str = "flash_grpo"
    """Registered algorithm name (see `python -m grpo_zoo.train --help`)."""
    initial_noise: Literal["independent", "shared"] = "independent"
    """independent: each rollout starts from its own noise; shared: a group's G rollouts
    start from one noise and share the ODE prefix before their first SDE step."""

    @classmethod
    def resolve_type(cls, data: dict, where: str = "") -> type[AlgorithmConfig]:
        name = data.get("name", cls.name)
        return get(str(name), where=f"{where}.name" if where else "name").Config

    def validate(self) -> None:
        pass


def group_prefix(sde: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """parent and branch_at for groups whose G rollouts share one initial noise: each row
    follows its group's first row up to the group's first SDE step."""
    b, t = sde.shape
    first = torch.where(sde.any(1), sde.float().argmax(1), torch.full((b,), t - 1))
    branch = first.view(-1, group_size).min(1).values.repeat_interleave(group_size)
    leader = torch.arange(b) - torch.arange(b) % group_size
    return leader, branch


class Algorithm:
    """Base class: subclasses set `Config` and implement `trainable_steps` and `plan`.

    `plan(ctx)` returns `self.make_plan(ctx, sde, train, weight)`; the base class fills
    the defaults, honours `initial_noise`, and computes advantages (`advantages`). An
    algorithm with state across iterations keeps it in `state_dict()` (saved with every
    checkpoint and restored on resume); one whose plan is a function of `ctx` needs none.
    `objective` names the loss it trains with (grpo_zoo.core.objective; default PPO-clip on
    the SDE transitions; a method's own objective lives in its algorithm file).
    """

    name: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    objective: ClassVar[str] = "ppo_clip"
    paper: ClassVar[str] = ""
    """The method's paper (authors, year, venue or arXiv id), for the README's table."""
    reference: ClassVar[str] = ""
    """The reference repository and file its settings come from (owner/repo: path)."""
    repository: ClassVar[str] = ""
    """The reference repository at the commit its settings were read from (owner/repo@commit)."""
    settings: ClassVar[dict[str, Setting]] = {}
    """The settings the reference fixes, by dotted config key: defaults of every run of this
    algorithm, under the run's own values (grpo_zoo/core/settings.py)."""

    def __init__(self, cfg: AlgorithmConfig):
        self.cfg = cfg

    def trainable_steps(self, table: StepTable) -> range:
        """The steps this algorithm may train under `table` (ConfigError if impossible)."""
        raise NotImplementedError

    def plan(self, ctx: PlanContext) -> Plan:
        """The rollout plan for ctx.num_prompts prompts x ctx.group_size rollouts."""
        raise NotImplementedError

    def make_plan(
        self,
        ctx: PlanContext,
        sde: torch.Tensor,
        train: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        *,
        parent: torch.Tensor | None = None,
        branch_at: torch.Tensor | None = None,
        group: torch.Tensor | None = None,
        stride: torch.Tensor | None = None,
        **options,
    ) -> Plan:
        """A Plan from masks: `train` defaults to `sde`, `weight` to 1 on trained transitions,
        `stride` to the run's `sampling.ode_stride`; with `initial_noise: shared` and no
        explicit tree, a group shares its prefix. `options`: the Plan's other fields
        (noise_scale, score_prediction, tail_from, tail)."""
        train = sde.clone() if train is None else train
        weight = train.double() if weight is None else weight.double() * train
        if parent is None and self.cfg.initial_noise == "shared":
            parent, branch_at = group_prefix(sde, ctx.group_size)
        return Plan(
            sde=sde,
            train=train,
            weight=weight,
            group_size=ctx.group_size,
            parent=parent,
            branch_at=branch_at,
            group=group,
            stride=torch.full((ctx.batch_size,), ctx.ode_stride, dtype=torch.long) if stride is None else stride,
            **options,
        )

    def empty(self, ctx: PlanContext) -> torch.Tensor:
        """A [B, T] bool mask of zeros (to set the SDE or trained steps in)."""
        return torch.zeros(ctx.batch_size, ctx.table.num_steps, dtype=torch.bool)

    def observe(self, ctx: AdvantageContext) -> None:
        """Called once per iteration after scoring, before `advantages`: an algorithm with
        state that follows the rewards (a curriculum, a running baseline) updates it here and
        keeps it in `state_dict` (a resume restores it; the context is never written to)."""

    def advantages(self, ctx: AdvantageContext, traj: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Advantages [N] of the trained items (traj, step) of this rank.

        Default: GRPO's group-relative advantage of each row's reward (std of the group, or of
        the whole batch with `global_std`); with `ctx.plan.group`, each trained transition is
        normalised within its group instead."""
        if ctx.plan.group is None:
            return rank_group_advantages(ctx).flatten()[traj]
        local = ctx.scores.flatten()
        return normalize_within(local[traj], ctx.plan.group[traj, step], *ctx_norm(ctx))

    def keep(
        self, ctx: AdvantageContext, traj: torch.Tensor, step: torch.Tensor, adv: torch.Tensor
    ) -> torch.Tensor | None:
        """[N] bool: the items (traj, step) to train, decided once the advantages `adv` exist
        (pruning by advantage); the others run no forward or backward. None (default): all."""
        return None

    def reward_entries(self) -> list[str]:
        """Entries of the run's reward (besides the training reward) that `advantages` reads
        from `ctx.rewards`; checked against the reward before any compute."""
        return []

    def state_dict(self) -> dict:
        """State that must survive a resume (none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def check(self, table: StepTable, group_size: int) -> None:
        """Fail with one clear line if this config cannot run on `table` with groups of G."""
        if group_size < 2:
            raise ConfigError(f"group_size: GRPO needs groups of at least 2 rollouts, got {group_size}")
        steps = self.trainable_steps(table)
        objective = objectives.get(self.objective, where=f"{self.name}.objective")
        if not isinstance(self.cfg, objective.Config):
            raise ConfigError(
                f"name: objective {self.objective!r} reads the fields of {objective.Config.__name__}, "
                f"which {self.name}'s config ({type(self.cfg).__name__}) does not have"
            )
        if self.reward_entries() and not objective.per_reward_advantages:
            raise ConfigError(f"rewards: objective {self.objective!r} trains on one reward; remove the per-reward list")
        if not objective.needs_transitions:  # trains on re-noised ODE samples
            if self.cfg.initial_noise == "shared":
                raise ConfigError("initial_noise: shared makes a group's ODE rollouts identical; use independent")
            return
        silent = [j for j in steps if table.step_std[j] <= 0]
        if silent:
            raise ConfigError(
                f"algorithm: step {silent[0]} has no noise under noise kind {table.kind!r}; "
                "train only steps before the final one or pick another noise kind"
            )


def register(name: str):
    """Class decorator: register an Algorithm under `name` (its Config declares the same name)."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"algorithm {name!r} registered twice")
        cls.name = name
        if not dataclasses.is_dataclass(cls.Config) or not issubclass(cls.Config, AlgorithmConfig):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass subclassing AlgorithmConfig")
        if cls.Config().name != name:
            raise TypeError(f"{cls.__name__}.Config must declare `name: str = {name!r}`")
        _REGISTRY[name] = cls
        return cls

    return deco


def names(plugins: bool = True) -> list[str]:
    """Every registered algorithm name (`plugins=False`: only this repository's)."""
    discover()
    return sorted(n for n, cls in _REGISTRY.items() if plugins or in_tree(cls))


def get(name: str, where: str = "algorithm.name") -> type[Algorithm]:
    """The Algorithm class registered as `name` (ConfigError naming the choices if unknown)."""
    discover()
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"choose one of {', '.join(sorted(_REGISTRY))}"
        raise ConfigError(f"{where}: unknown algorithm {name!r} ({fix})")
    return _REGISTRY[name]


def build(cfg: AlgorithmConfig | dict) -> Algorithm:
    """An Algorithm instance from its config (or a dict with `name` and fields)."""
    if isinstance(cfg, dict):
        cfg = build_config(AlgorithmConfig, cfg, "algorithm")
    return get(cfg.name)(cfg)
