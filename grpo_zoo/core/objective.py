"""Training objectives, registered by name; an algorithm declares which one it trains with.

An objective turns a scored rollout into training items (`items`) and a micro-batch of
items into per-item losses (`loss`). The update loop (grpo_zoo/training/update.py) is the
same for all: it normalises weights over the optimizer batch, sums the per-item losses,
runs backward, and counts the passes each objective reports.

Only what every method shares lives here: the base class, the registry and `ppo_clip`
(Flow-GRPO's weighted PPO-clip on the recorded SDE transitions, log-probs recomputed under
the current policy, plus beta * KL to the reference), the default objective. A method's
own objective lives in its algorithm file (GRPO-Guard's `ratio_norm_clip` in
algorithms/grpo_guard.py, DiffusionNFT's `nft`, AWM's `awm`); the forward-process
objectives share grpo_zoo/core/forward_process.py.

What an objective declares, so that compute, memory and checks follow without running it:
- `Config`: the algorithm config class whose fields it reads (checked in preflight);
- `items` / `item_forwards`: the items and the forwards spent making them;
- `passes_per_item`: forwards with a backward per item in `loss` (a pairwise loss: 2);
- `extra_forwards`: forwards without a backward per item (a frozen reference);
- `needs_reference`: whether it needs the frozen base policy (a copy when training fully);
- `cfg_mult`: whether its own forwards run under CFG.
The cost methods read only the run's settings (`Objective(alg_cfg, optim, sampling, table)`
without a runtime), so `estimate` prices a run without building a model.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from grpo_zoo.core.contract import AdvantageContext, Batch, Items, Plan, RolloutResult, Terms
from grpo_zoo.core.loss import gaussian_kl, ppo_clip
from grpo_zoo.core.registry import discover
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import sde_step, transition_mean
from grpo_zoo.flow.sde import StepTable
from grpo_zoo.models.base import cfg_multiplier

_OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str):
    """Class decorator: register an Objective subclass under `name`, the value an algorithm's
    `objective` names. A name is registered once: a second class under the same name is
    refused (ValueError), so a plugin cannot silently replace a method's loss."""

    def deco(cls: type[Objective]) -> type[Objective]:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"objective {name!r}: {cls!r} is not a subclass of Objective")
        if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
            raise ValueError(
                f"objective {name!r} registered twice ({_OBJECTIVES[name].__qualname__} and {cls.__qualname__})"
            )
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return deco


def get(name: str, where: str = "objective") -> type[Objective]:
    """The Objective class registered as `name` (ConfigError naming the choices if unknown)."""
    if name not in _OBJECTIVES:
        discover()  # objectives defined in algorithm files and plugins
    if name not in _OBJECTIVES:
        hint = difflib.get_close_matches(name, list(_OBJECTIVES), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"choose one of {', '.join(sorted(_OBJECTIVES))}"
        raise ConfigError(f"{where}: unknown objective {name!r} ({fix})")
    return _OBJECTIVES[name]


def names() -> list[str]:
    discover()
    return sorted(_OBJECTIVES)


@dataclass
class Runtime:
    """What an objective needs to compute (not to price): the policy and where it runs."""

    policy: Any
    """grpo_zoo.models.base.Policy (its net wrapped by the engine)."""
    null_emb: torch.Tensor | None
    """The empty prompt's embedding (CFG), or None without guidance."""
    dtype: torch.dtype
    device: torch.device


class Objective:
    """Base class of every objective; subclasses implement `loss` (and `items` if they train
    on anything but the plan's SDE transitions)."""

    name: ClassVar[str]
    Config: ClassVar[type] = object
    """The algorithm config class whose fields the objective reads (object: none)."""
    needs_transitions: ClassVar[bool] = True
    """True: items are the plan's trained SDE transitions with their log-probs."""
    needs_sampling_velocity: ClassVar[bool] = False
    """True: the rollout keeps the sampling policy's velocity of every trained transition (`v_sample`)."""
    per_reward_advantages: ClassVar[bool] = False
    """True: the loss takes advantages [N, K], one column per reward (an algorithm's several rewards)."""
    trains_with_cfg: ClassVar[bool] = True
    """True: the objective's forwards use the sampling guidance; False: the conditional
    velocity alone (one transformer pass per sample) whatever `sampling.guidance`."""
    trailing_field: ClassVar[str | None] = None
    """An algorithm field that, when > 0, makes the objective keep a trailing copy of the
    weights (needs whole parameters on each rank: ZeRO-3 is refused)."""

    def __init__(self, algorithm_cfg, optim, sampling, table: StepTable, runtime: Runtime | None = None):
        self.alg_cfg, self.optim, self.sampling, self.table = algorithm_cfg, optim, sampling, table
        self.runtime = runtime

    # -- what runs, priced from the settings alone ------------------------------------------
    @classmethod
    def preflight(cls, cfg) -> None:
        """Raise ConfigError if this objective cannot run under the run config (no compute)."""
        field = cls.trailing_field
        if field and float(getattr(cfg.algorithm, field)) > 0 and cfg.engine.zero_stage == 3:
            raise ConfigError(
                f"algorithm.{field}: {cls.name}'s trailing copy of the weights needs whole parameters on "
                f"each rank; use engine.zero_stage <= 2 or {field}: 0"
            )

    @classmethod
    def needs_reference(cls, cfg) -> bool:
        """The objective's loss reads the frozen base policy (default: a KL weight optim.beta > 0).
        Under LoRA the reference is the base with the adapters off; training fully, a copy."""
        return cfg.optim.beta > 0

    @property
    def guidance(self) -> float:
        """The CFG scale of the objective's own forwards."""
        return float(self.sampling.guidance) if self.trains_with_cfg else 1.0

    @property
    def cfg_mult(self) -> int:
        """Transformer passes per sample of the objective's forwards (2 under CFG)."""
        return cfg_multiplier(self.guidance)

    @property
    def beta(self) -> float:
        """Weight of the KL to the reference policy (optim.beta; 0 skips its forward)."""
        return float(self.optim.beta)

    def num_items(self, plan: Plan) -> int:
        """How many items a plan yields (for estimates, without running it)."""
        return int(plan.train.sum())

    def item_forwards(self) -> int:
        """Forwards `items` runs per item (for estimates)."""
        return 0

    def passes_per_item(self) -> int:
        """Forwards with a backward that `loss` runs per item (a pairwise loss: 2)."""
        return 1

    def extra_forwards(self) -> int:
        """Forwards without a backward that `loss` runs per item (for estimates)."""
        return 1 if self.beta > 0 else 0

    # -- running -------------------------------------------------------------------------
    @property
    def policy(self):
        if self.runtime is None:
            raise RuntimeError(f"objective {self.name!r} was built for pricing only (no runtime)")
        return self.runtime.policy

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runtime.dtype

    def items(self, ro: RolloutResult, ctx: AdvantageContext, emb: torch.Tensor, gen: torch.Generator):
        """The training items of a scored rollout and the forwards spent making them (samples).
        `ctx` carries this rank's rewards and group structure; advantages come after, for the
        items returned (Algorithm.advantages)."""
        return ro.transitions, 0

    def state_dict(self) -> dict:
        """State that must survive a resume (saved with every checkpoint; none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """Entered around the training rollout: the weights it samples with (default: the
        policy's own; DiffusionNFT's old policy swaps its trailing copy in)."""
        return contextlib.nullcontext()

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.policy.net.named_parameters() if p.requires_grad}

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        null = self.runtime.null_emb if cfg_multiplier(self.guidance) > 1 else None
        v = self.policy.velocity(x.to(self.dtype), sigma, emb, null, self.guidance)
        return v.float()

    @torch.no_grad()
    def reference_velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        with self.policy.reference():
            return self.velocity(x, sigma, emb)

    def loss(self, b: Batch) -> Terms:
        raise NotImplementedError


@register("ppo_clip")
class PPOClip(Objective):
    """Weighted PPO-clip on SDE transitions (+ beta * KL to the reference)."""

    per_reward_advantages = True

    def log_ratio(self, logp, logp_old, v, tr: Items, k) -> torch.Tensor:
        """log pi(x'|x) - log pi_old(x'|x) per item (the plain PPO ratio)."""
        return logp - logp_old

    def loss(self, b: Batch) -> Terms:
        tr, table, k = b.items, self.table, b.items.step
        x = tr.x.to(self.device)
        sigma = table.sigma[k].float().to(self.device)
        v = self.velocity(x, sigma, b.emb)
        v.retain_grad()
        step = (table.sigma[k], table.sigma_next[k], table.std_t[k])
        _, logp, mean = sde_step(table.kind, x, v, *step, x_next=tr.x_next.to(self.device))
        logp_old = tr.logp_old.to(self.device)
        shifted = self.log_ratio(logp, logp_old, v, tr, k)
        per, st = ppo_clip(
            shifted + logp_old, logp_old, b.adv.to(self.device), b.weight.to(self.device), self.optim.clip_range
        )
        stats = {"policy": per.detach(), **st}
        extra = 0
        if self.beta > 0:
            v_ref = self.reference_velocity(x, sigma, b.emb)
            mean_ref = transition_mean(table.kind, x, v_ref, *step)
            kl = gaussian_kl(mean, mean_ref, table.step_std[k])
            per = per + self.beta * kl
            stats["kl"] = kl.detach()
            extra = len(k)
        return Terms(per, stats, v, extra)
