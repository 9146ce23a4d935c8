"""Exponential moving average of the trainable weights (evaluated instead of the raw ones)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, after every optimizer step."""

    def __init__(self, trainable: Callable[[], dict[str, torch.nn.Parameter]], decay: float):
        self.trainable, self.decay = trainable, decay
        self.shadow = self.copy()

    def copy(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable().items()}

    def load(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.trainable().items():
                p.copy_(values[name])

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.trainable().items():
            self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside this block, its own weights after."""
        backup = self.copy()
        self.load(self.shadow)
        try:
            yield
        finally:
            self.load(backup)
