"""Rewards by name.

A reward is a callable `(videos [B, 3, F, H, W] in [-1, 1], prompts: list[str]) ->
dict[str, Tensor[B]]`: the entry under its own name is the training signal; other
entries (components) are logged beside it. Register with `@register("name")` on a
factory taking keyword options (and `entries=` the names it returns, so that a config
naming an entry is checked before any compute); `get(name, **options)` builds one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch

from grpo_zoo.errors import ConfigError

RewardFn = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]
_REGISTRY: dict[str, Callable[..., RewardFn]] = {}
_ENTRIES: dict[str, tuple[str, ...]] = {}


def register(name: str, entries: tuple[str, ...] | None = None):
    def deco(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        _REGISTRY[name] = factory
        if entries is not None:
            _ENTRIES[name] = (name, *[e for e in entries if e != name])
        return factory

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def entries(name: str) -> tuple[str, ...] | None:
    """The entries reward `name` returns (its own first), or None where it does not declare them."""
    return _ENTRIES.get(name)


def get(name: str, **options) -> RewardFn:
    """The reward registered as `name` (ConfigError naming the choices if unknown)."""
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"choose one of {', '.join(names())}"
        raise ConfigError(f"reward.name: unknown reward {name!r} ({fix})")
    return _REGISTRY[name](**options)


def check_options(name: str, options: dict, where: str = "reward.options") -> None:
    """ConfigError (one line) for an option reward `name`'s factory does not take; a factory
    taking **options checks its own (hpsv3 does)."""
    import inspect

    if name not in _REGISTRY:
        get(name)  # unknown name: its one line, with the choices
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping of {name}'s options, got {options!r}")
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = sorted(p.name for p in params)
    for key in options:
        if key not in known:
            raise ConfigError(
                f"{where}: {name} takes no option {key!r} "
                f"({'known: ' + ', '.join(known) if known else 'it takes none; remove ' + where})"
            )


def build(cfg) -> RewardFn:
    """The run's reward from its RewardConfig: one reward by name, or a WeightedReward over
    several (`reward.name: {entry: weight}`, each reward with `reward.options[its name]`)."""
    weights = cfg.weights
    if weights is None:
        return get(cfg.name, **cfg.options)
    from grpo_zoo.rewards.weighted import WeightedReward, resolve

    parts = {name: get(name, **cfg.options.get(name, {})) for name in resolve(weights)}
    return WeightedReward(weights, parts)


def _toy(name: str) -> Callable[..., RewardFn]:
    def factory() -> RewardFn:
        from grpo_zoo.rewards.toy import all_rewards

        def reward(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
            out = all_rewards(videos, prompts)
            return {name: out[name], **{k: v for k, v in out.items() if k != name}}

        return reward

    return factory


TOY_REWARDS = ("toy_motion", "toy_aesthetic", "toy_prompt", "toy_hps", "toy_still")
for _name in TOY_REWARDS:
    register(_name, entries=TOY_REWARDS)(_toy(_name))


def _service(class_name: str) -> Callable[..., RewardFn]:
    def factory(**options) -> RewardFn:
        import inspect

        from grpo_zoo.rewards import hpsv3

        cls = getattr(hpsv3, class_name)
        known = set(inspect.signature(cls).parameters)
        unknown = set(options) - known
        if unknown:
            raise ConfigError(
                f"reward.options: unknown {cls.NAME} option {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})"
            )
        return cls(**options)

    return factory


SERVICE_REWARDS = {"hpsv3": "HPSv3Reward", "pickscore": "PickScoreReward", "clip_score": "CLIPScoreReward"}
"""Rewards behind the reward service's protocol (grpo_zoo/rewards/hpsv3.py; server.py --scorer)."""
for _name, _cls in SERVICE_REWARDS.items():
    register(_name, entries=(_name, f"{_name}_frame_mean"))(_service(_cls))


@register("vlm_judge", entries=("vlm_judge",))
def _vlm_judge(**options) -> RewardFn:
    import inspect

    from grpo_zoo.rewards.vlm_judge import VLMJudgeReward

    known = set(inspect.signature(VLMJudgeReward).parameters)
    unknown = set(options) - known
    if unknown:
        raise ConfigError(
            f"reward.options: unknown vlm_judge option {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})"
        )
    return VLMJudgeReward(**options)


class Scoring:
    """The rewards of a rollout's videos, chunk by chunk as the rollout makes them.

    `add(latents, prompts)` takes the next rows. A reward with `submit` (a remote service)
    gets each `piece` rows decoded and sent at once (its submit returns at once: encoding and
    sending run on the reward's own threads), so it scores them while the trainer decodes the
    next piece and samples the next chunk, as both references score each sampling batch on a
    thread pool (Flash-GRPO scripts/train_wanx2_1_flash.py:615 and :752). Any other reward is
    called once, by `result()`, on all the videos."""

    def __init__(self, reward_fn: RewardFn, decode, piece: int):
        self.reward_fn, self.decode, self.piece = reward_fn, decode, piece
        self.remote = hasattr(reward_fn, "submit")
        self.futures: list = []
        self.latents: list[torch.Tensor] = []
        self.prompts: list[str] = []

    def add(self, latents: torch.Tensor, prompts: list[str]) -> None:
        if not self.remote:
            self.latents.append(latents)
            self.prompts.extend(prompts)
            return
        for s in range(0, len(latents), self.piece):
            videos = self.decode(latents[s : s + self.piece])
            self.futures.append(self.reward_fn.submit(videos, prompts[s : s + self.piece]))

    def result(self) -> dict[str, torch.Tensor]:
        """Every entry for every video added, in order (waits for a remote reward's answers)."""
        if not self.remote:
            return self.reward_fn(self.decode(torch.cat(self.latents)), self.prompts)
        parts = [f.result() for f in self.futures]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def score(reward_fn: RewardFn, decode, latents: torch.Tensor, prompts: list[str], chunk: int) -> dict:
    """Decode latents and score them (a remote reward `chunk` videos at a time, see Scoring)."""
    scoring = Scoring(reward_fn, decode, chunk)
    scoring.add(latents, prompts)
    return scoring.result()


def eval_metrics(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Table 1's eval metrics where this toolkit can compute them from pixels: the toy
    world's (for toy prompts); for real prompts VBench runs offline (see the report)."""
    from grpo_zoo.toy.world import Prompt

    try:
        for p in prompts:
            Prompt.parse(p)
    except ValueError:
        return {}
    from grpo_zoo.rewards.toy import eval_metrics as toy_metrics

    return toy_metrics(videos, prompts)
