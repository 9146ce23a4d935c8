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
import importlib
import pkgutil
from dataclasses import dataclass
from importlib.util import module_from_spec, spec_from_file_location
from typing import ClassVar, Literal

import torch

from grpo_zoo.errors import ConfigError
from grpo_zoo.flow.sde import StepTable

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


@dataclass(kw_only=True)
class PlanContext:
    """What an algorithm knows when it plans one iteration on one rank."""

    iteration: int
    """The training iteration (0-based) this plan is for; a resumed run passes the same."""
    prompts: list[str]
    """This rank's P prompts; row b = p * G + g of the plan belongs to prompts[b // G]."""
    group_size: int
    """G: rollouts per prompt."""
    table: StepTable
    """The sampling schedule's per-step constants (sigma, noise std, lambda, ...)."""
    gen: torch.Generator
    """Seeded from (seed, iteration, rank): draw every random choice of the plan from it."""
    global_std: bool = False
    """Advantages divide by the whole batch's reward std instead of the group's."""
    adv_clip: float = 5.0
    """Advantages are clipped to +-adv_clip."""
    rank: int = 0
    world: int = 1
    ode_stride: int = 1
    """sampling.ode_stride: the stride `make_plan` gives every row's ODE tail (Plan.stride)."""
    scores: dict[str, torch.Tensor] | None = None
    """Set by the trainer after the rollout, before `advantages`: every entry the reward
    returned (the training reward and its components), [P_all, G] each, all ranks."""
    logp: torch.Tensor | None = None
    """Set by the trainer after the rollout: [B, T] float32, this rank's log-prob of each
    row's transition at each SDE step under the sampling policy (0 at ODE steps; a step a
    row shares with its parent carries the parent's)."""

    @classmethod
    def of(
        cls, num_prompts: int, group_size: int, table: StepTable, gen: torch.Generator, iteration: int = 0, **kw
    ) -> PlanContext:
        """A context for P anonymous prompts (tools and tests that need no prompt text)."""
        prompts = [f"prompt {i}" for i in range(num_prompts)]
        return cls(iteration=iteration, prompts=prompts, group_size=group_size, table=table, gen=gen, **kw)

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def batch_size(self) -> int:
        """B = P * G trajectories."""
        return len(self.prompts) * self.group_size


@dataclass(kw_only=True)
class Plan:
    """What a rollout of B = P * G trajectories over T steps does; row b = p * G + g.

    Trajectories may share a prefix: row b follows row `parent[b]` (an earlier row) up to
    step `branch_at[b]`: it has the same initial noise and the same transitions before
    that step, and the same velocity at it, computed once; from that step on it draws its
    own noise. Several depths of branching (a tree) are parents that branch themselves.
    """

    sde: torch.Tensor
    """[B, T] bool: step j of trajectory b is stochastic (SDE); ODE otherwise."""
    train: torch.Tensor
    """[B, T] bool: transition (b, j) is trained; always a subset of `sde`, and only where b
    computes the step itself (not inside a prefix it shares)."""
    weight: torch.Tensor
    """[B, T] float64: raw weight of each trained transition (0 elsewhere)."""
    group_size: int
    """G: consecutive rows form one prompt's group."""
    parent: torch.Tensor | None = None
    """[B] long: the row whose prefix row b shares (b itself: a root with its own initial noise)."""
    branch_at: torch.Tensor | None = None
    """[B] long: the step at which row b leaves its parent (ignored for roots)."""
    group: torch.Tensor | None = None
    """[B, T] long: the advantage group of each trained transition (None: the prompt's group)."""
    stride: torch.Tensor | None = None
    """[B] long >= 1: after its last SDE step, row b runs the model only at every stride-th
    step and holds its data prediction in between: an ODE on a coarser grid of the same
    sigmas (grpo_zoo/flow/multistep.py), fewer forwards. 1 (default): every step."""

    def __post_init__(self) -> None:
        b = self.sde.shape[0]
        if self.parent is None:
            self.parent = torch.arange(b)
        if self.branch_at is None:
            self.branch_at = torch.zeros(b, dtype=torch.long)
        if self.stride is None:
            self.stride = torch.ones(b, dtype=torch.long)

    @property
    def num_prompts(self) -> int:
        return self.sde.shape[0] // self.group_size

    @property
    def shared_noise(self) -> bool:
        """Some rows share their initial noise (and a prefix) with another row."""
        return bool((self.parent != torch.arange(len(self.parent))).any())

    def trained_steps(self) -> list[tuple[int, int]]:
        """(trajectory, step) of every trained transition, in row-major order."""
        return [tuple(ix) for ix in self.train.nonzero().tolist()]

    def sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] long each: the row whose velocity row b uses at step j, and the row whose
        transition (x_j -> x_{j+1}) it takes. A row owns step j when both are itself."""
        b, t = self.sde.shape
        steps = torch.arange(t)
        src_v = torch.empty(b, t, dtype=torch.long)
        src_x = torch.empty(b, t, dtype=torch.long)
        for r, (p, at) in enumerate(zip(self.parent.tolist(), self.branch_at.tolist())):
            if p == r:
                src_v[r] = src_x[r] = r
            else:
                src_v[r] = torch.where(steps > at, r, src_v[p])
                src_x[r] = torch.where(steps >= at, r, src_x[p])
        return src_v, src_x

    def last_sde(self) -> torch.Tensor:
        """[B] long: each row's last SDE step (-1 for an ODE-only row)."""
        t = self.sde.shape[1]
        return torch.where(self.sde.any(1), t - 1 - self.sde.flip(1).float().argmax(1), -1)

    def skips(self) -> torch.Tensor:
        """[B, T] bool: row b holds its data prediction at step j instead of running the
        model. A row's ODE tail starts after its last SDE step (and, for a branch, where it
        leaves its parent) on the grid start, start + stride, ... of the table's steps: it
        calls the model at the grid nodes a whole stride from the end or more, and holds
        elsewhere (so a grid that misses sigma = 0 ends with its last called node's data
        prediction, as G2RPO's `sigma_schedule[s + 2::g]` does). A row whose velocity other
        rows take at j (a shared prefix) skips only where every one of them would."""
        b, t = self.sde.shape
        rows = torch.arange(b)
        start = torch.maximum(self.last_sde() + 1, torch.where(self.parent != rows, self.branch_at, 0))
        steps = torch.arange(t)[None]
        off = steps - start[:, None]
        stride = self.stride[:, None]
        own = (off > 0) & ((off % stride != 0) | (steps + stride > t))
        src_v, _ = self.sources()
        needed = torch.zeros(b, t).scatter_add_(0, src_v, (~own).float()) > 0
        return own & ~needed & (src_v == rows[:, None])

    def forward_rows(self) -> torch.Tensor:
        """[B, T] bool: which rows run a transformer forward at each step."""
        src_v, _ = self.sources()
        return (src_v == torch.arange(len(src_v))[:, None]) & ~self.skips()

    def check(self, table: StepTable) -> None:
        """Invariants every plan satisfies, whatever the algorithm."""
        b, t = self.sde.shape
        if t != table.num_steps or b % self.group_size:
            raise ValueError(
                f"plan shape {tuple(self.sde.shape)} does not fit {table.num_steps} steps, G={self.group_size}"
            )
        if (self.train & ~self.sde).any():
            raise ValueError("plan trains a transition that is not stochastic")
        if (self.weight[~self.train] != 0).any() or (self.weight[self.train] <= 0).any():
            raise ValueError("plan weights must be positive exactly on trained transitions")
        zero = self.sde & (table.step_std <= 0).unsqueeze(0)
        if zero.any():
            raise ValueError(f"plan makes a step with zero noise stochastic (step {int(zero.nonzero()[0, 1])})")
        rows = torch.arange(b)
        if self.parent.shape != (b,) or self.branch_at.shape != (b,):
            raise ValueError(f"plan parent and branch_at must have shape ({b},)")
        if (self.parent > rows).any() or (self.parent < 0).any():
            raise ValueError("plan rows must branch from an earlier row (parent[b] <= b)")
        child = self.parent != rows
        if ((self.branch_at[child] < 0) | (self.branch_at[child] >= t)).any():
            raise ValueError(f"plan branches outside the {t}-step schedule")
        _, src_x = self.sources()
        shared = src_x != rows[:, None]
        if (self.train & shared).any():
            raise ValueError("plan trains a transition inside a prefix the row shares with its parent")
        if (self.sde != self.sde.gather(0, src_x)).any():
            raise ValueError("plan gives a shared prefix steps of another kind (SDE/ODE) than its owner's")
        if self.group is not None and self.group.shape != self.sde.shape:
            raise ValueError(f"plan group must have shape {tuple(self.sde.shape)}")
        if self.stride.shape != (b,) or (self.stride < 1).any():
            raise ValueError(f"plan stride must have shape ({b},) and values >= 1")


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
    `objective` names the loss it trains with (grpo_zoo.objectives; default PPO-clip on
    the SDE transitions).
    """

    name: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    objective: ClassVar[str] = "ppo_clip"
    paper: ClassVar[str] = ""
    """The method's paper (authors, year, venue or arXiv id), for the README's table."""
    reference: ClassVar[str] = ""
    """The reference repository and file its settings come from (owner/repo: path)."""

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
    ) -> Plan:
        """A Plan from masks: `train` defaults to `sde`, `weight` to 1 on trained transitions,
        `stride` to the run's `sampling.ode_stride`; with `initial_noise: shared` and no
        explicit tree, a group shares its prefix."""
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
        )

    def empty(self, ctx: PlanContext) -> torch.Tensor:
        """A [B, T] bool mask of zeros (to set the SDE or trained steps in)."""
        return torch.zeros(ctx.batch_size, ctx.table.num_steps, dtype=torch.bool)

    def advantages(
        self, ctx: PlanContext, plan: Plan, traj: torch.Tensor, step: torch.Tensor, rewards: torch.Tensor
    ) -> torch.Tensor:
        """Advantages [N] of the trained items (traj, step), from `rewards` [P_all, G] of the
        whole batch (all ranks; this rank holds prompts rank * P .. (rank + 1) * P - 1).

        Default: GRPO's group-relative advantage of each row's reward; with `plan.group`,
        each trained transition is normalised within its group instead."""
        from grpo_zoo.advantages import group_advantages, normalize_within

        p = ctx.num_prompts
        if plan.group is None:
            adv = group_advantages(rewards, ctx.global_std, ctx.adv_clip)
            return adv[ctx.rank * p : (ctx.rank + 1) * p].flatten()[traj]
        local = rewards[ctx.rank * p : (ctx.rank + 1) * p].flatten()
        return normalize_within(local[traj], plan.group[traj, step], ctx.global_std, ctx.adv_clip)

    def keep(
        self, ctx: PlanContext, plan: Plan, traj: torch.Tensor, step: torch.Tensor, adv: torch.Tensor
    ) -> torch.Tensor | None:
        """[N] bool: the items (traj, step) to train, decided once the advantages `adv` exist
        (pruning by advantage); the others run no forward or backward. None (default): all."""
        return None

    def reward_entries(self) -> list[str]:
        """Entries of the run's reward (besides the training reward) that `advantages` reads
        from `ctx.scores`; checked against the reward before any compute."""
        return []

    def state_dict(self) -> dict:
        """State that must survive a resume (none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def check(self, table: StepTable, group_size: int) -> None:
        """Fail with one clear line if this config cannot run on `table` with groups of G."""
        from grpo_zoo import objectives

        if group_size < 2:
            raise ConfigError(f"group_size: GRPO needs groups of at least 2 rollouts, got {group_size}")
        steps = self.trainable_steps(table)
        if self.reward_entries() and not objectives.get(self.objective).per_reward_advantages:
            raise ConfigError(f"rewards: objective {self.objective!r} trains on one reward; remove the per-reward list")
        if not objectives.get(self.objective).needs_transitions:  # trains on re-noised ODE samples
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


ENTRY_POINT_GROUP = "grpo_zoo.algorithms"
"""Distributions outside this repository register algorithms under this entry-point group
(`[project.entry-points."grpo_zoo.algorithms"] my_algo = "my_package.my_algo"`): the module
(or a class in it) is imported, and its `@register` runs."""

_discovered = False


def _in_tree_package():
    """`grpo_zoo.algorithms`: in a source checkout, the algorithms/ folder beside this grpo_zoo
    package (so a worktree runs its own files); in an installed wheel, the installed package
    (pyproject's package-dir puts algorithms/ there under that name)."""
    import sys
    from pathlib import Path

    if "grpo_zoo.algorithms" in sys.modules:
        return sys.modules["grpo_zoo.algorithms"]
    folder = Path(__file__).resolve().parent.parent / "algorithms"
    if not (folder / "__init__.py").is_file():
        return importlib.import_module("grpo_zoo.algorithms")
    spec = spec_from_file_location(
        "grpo_zoo.algorithms", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = module_from_spec(spec)
    sys.modules["grpo_zoo.algorithms"] = module
    spec.loader.exec_module(module)
    return module


def _discover() -> None:
    """Import every in-tree algorithm file and every entry-point plugin (once per process)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = _in_tree_package()
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"grpo_zoo.algorithms.{mod.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin is named, not fatal to every other algorithm
            from grpo_zoo.runs import say

            say(f"warning: algorithm plugin {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}: {err}")


def names() -> list[str]:
    """Every registered algorithm name."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str, where: str = "algorithm.name") -> type[Algorithm]:
    """The Algorithm class registered as `name` (ConfigError naming the choices if unknown)."""
    _discover()
    if name not in _REGISTRY:
        import difflib

        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"choose one of {', '.join(sorted(_REGISTRY))}"
        raise ConfigError(f"{where}: unknown algorithm {name!r} ({fix})")
    return _REGISTRY[name]


def build(cfg: AlgorithmConfig | dict) -> Algorithm:
    """An Algorithm instance from its config (or a dict with `name` and fields)."""
    from grpo_zoo.config import build as build_config

    if isinstance(cfg, dict):
        cfg = build_config(AlgorithmConfig, cfg, "algorithm")
    return get(cfg.name)(cfg)
