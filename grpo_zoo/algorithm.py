"""The algorithm seam: a config, a rollout plan and per-transition weights.

An algorithm is a class in `algorithms/` registered by name with `@register`. Given a
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


@dataclass
class Plan:
    """What a rollout of B = P * G trajectories over T steps does; row b = p * G + g."""

    sde: torch.Tensor
    """[B, T] bool: step j of trajectory b is stochastic (SDE); ODE otherwise."""
    train: torch.Tensor
    """[B, T] bool: transition (b, j) is trained; always a subset of `sde`."""
    weight: torch.Tensor
    """[B, T] float64: raw weight of each trained transition (0 elsewhere)."""
    group_size: int
    """G: consecutive rows form one prompt's group."""
    shared_noise: bool = False
    """A group's rollouts start from the same initial noise."""

    @property
    def num_prompts(self) -> int:
        return self.sde.shape[0] // self.group_size

    def trained_steps(self) -> list[tuple[int, int]]:
        """(trajectory, step) of every trained transition, in row-major order."""
        return [tuple(ix) for ix in self.train.nonzero().tolist()]

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


class Algorithm:
    """Base class: subclasses set `Config` and implement `trainable_steps` and `plan`."""

    name: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig

    def __init__(self, cfg: AlgorithmConfig):
        self.cfg = cfg

    def trainable_steps(self, table: StepTable) -> range:
        """The steps this algorithm may train under `table` (ConfigError if impossible)."""
        raise NotImplementedError

    def plan(self, num_prompts: int, group_size: int, table: StepTable, gen: torch.Generator) -> Plan:
        """The rollout plan for P prompts x G rollouts under `table`."""
        raise NotImplementedError

    def check(self, table: StepTable, group_size: int) -> None:
        """Fail with one clear line if this config cannot run on `table` with groups of G."""
        if group_size < 2:
            raise ConfigError(f"group_size: GRPO needs groups of at least 2 rollouts, got {group_size}")
        steps = self.trainable_steps(table)
        silent = [j for j in steps if table.step_std[j] <= 0]
        if silent:
            raise ConfigError(
                f"algorithm: step {silent[0]} has no noise under noise kind {table.kind!r}; "
                "train only steps before the final one or pick another noise kind"
            )

    def _empty(self, b: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.zeros(b, t, dtype=torch.bool),
            torch.zeros(b, t, dtype=torch.bool),
            torch.zeros(b, t, dtype=torch.float64),
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


def _discover() -> None:
    import algorithms

    for mod in pkgutil.iter_modules(algorithms.__path__):
        importlib.import_module(f"algorithms.{mod.name}")


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
