"""Exponential moving average of the trainable weights (evaluated instead of the raw ones)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


def whole(params: list[torch.nn.Parameter], modify: bool = False) -> contextlib.AbstractContextManager:
    """No-op: the parameters are whole on each rank (ZeRO 0-2)."""
    return contextlib.nullcontext()


class EMA:
    """shadow <- d * shadow + (1 - d) * weights at every `every`-th optimizer step, with the
    references' warm-up d = min((1 + s) / (10 + s), decay) at optimizer step s (Flow-GRPO's and
    Flash-GRPO's flow_grpo/ema.py `get_current_decay` and `step`: s counts the steps taken, and
    the average takes the weights when (s + 1) is a multiple of the interval).

    `gather(params, modify)`: a context in which the parameters are whole on this rank (ZeRO-3
    partitions them: the engine's `gathered`, DeepSpeed's GatheredParameters); with `modify`,
    what is written inside goes back into every rank's partition."""

    def __init__(
        self, trainable: Callable[[], dict[str, torch.nn.Parameter]], decay: float, gather=whole, every: int = 1
    ):
        self.trainable, self.decay, self.gather, self.every = trainable, decay, gather, every
        self.steps = 0
        self.shadow = self.copy()

    def copy(self) -> dict[str, torch.Tensor]:
        params = self.trainable()
        with self.gather(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}

    def load(self, values: dict[str, torch.Tensor]) -> None:
        params = self.trainable()
        with torch.no_grad(), self.gather(list(params.values()), modify=True):
            for name, p in params.items():
                p.copy_(values[name])

    def state_dict(self) -> dict:
        """The averaged weights and the optimizer steps seen (a checkpoint's "ema" entry)."""
        return {"shadow": self.shadow, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if "shadow" not in state:  # a checkpoint of before the interval: the shadow alone
            state = {"shadow": state, "steps": 0}
        self.shadow, self.steps = state["shadow"], int(state["steps"])

    def current_decay(self) -> float:
        return min((1 + self.steps) / (10 + self.steps), self.decay)

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step."""
        self.steps += 1
        if (self.steps + 1) % self.every == 0:
            self.blend(self.current_decay())

    @torch.no_grad()
    def blend(self, d: float) -> None:
        """shadow <- d * shadow + (1 - d) * weights, now."""
        params = self.trainable()
        with self.gather(list(params.values())):
            for name, p in params.items():
                self.shadow[name].mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside this block, its own weights after."""
        backup = self.copy()
        self.load(self.shadow)
        try:
            yield
        finally:
            self.load(backup)


class Trailing:
    """A copy of the trainable weights that trails them by one update and a decay: equal to
    them at the first iteration, then moved once per iteration, before it is used,
    copy <- d copy + (1 - d) weights, with d = decay(optimizer steps so far). DiffusionNFT's
    "old" policy (it samples the rollouts and gives v_old) and AWM's EMA policy (its KL).
    `state_dict` / `load_state_dict` carry it through a checkpoint."""

    def __init__(self, trainable: Callable[[], dict[str, torch.nn.Parameter]]):
        self.trainable = trainable
        self.ema: EMA | None = None
        self.calls = 0
        """Iterations that used it (it moved at each but the first)."""
        self._restored: dict[str, torch.Tensor] | None = None

    def advance(self, decay: Callable[[int], float]) -> EMA:
        """The copy for this iteration: created, or moved with decay(calls so far)."""
        if self.ema is None:
            self.ema = EMA(self.trainable, 0.0)
            if self._restored is not None:
                params = self.trainable()
                self.ema.shadow = {n: self._restored[n].to(p.device, p.dtype, copy=True) for n, p in params.items()}
                self._restored = None
        if self.calls > 0:
            self.ema.blend(decay(self.calls))
        self.calls += 1
        return self.ema

    def state_dict(self) -> dict:
        return {} if self.ema is None else {"ema": self.ema.shadow, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        if state.get("ema") is not None:
            self._restored, self.calls = state["ema"], int(state["calls"])
