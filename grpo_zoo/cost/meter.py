"""Compute accounting: NFE, backward passes, FLOPs and device-seconds, and the budget.

- NFE: transformer forward passes per sample (a CFG forward counts twice), rollouts,
  training forwards, reference forwards and evaluation alike.
- backward: per-sample transformer backward passes (a CFG backward counts twice).
- FLOPs: measured with torch.utils.flop_counter once per input shape, for one sample's
  forward and its backward, on the module as it trains (LoRA included), then multiplied: a
  wan model on the meta device from its shapes (grpo_zoo/cost/flops.py), the toy's tiny
  transformer through the loaded policy.
- device-seconds: wall time x devices (on GPUs, device-hours are GPU-hours), iterations and
  evaluations alike (a GPU-hour budget is what the cluster bills); checkpoint writing is not.

Counters are global (summed over ranks) and saved in checkpoints, so a resumed run goes
on counting where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class Counters:
    nfe: float = 0.0
    backward: float = 0.0
    flops: float = 0.0
    device_seconds: float = 0.0
    eval_nfe: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "compute/nfe": self.nfe,
            "compute/backward": self.backward,
            "compute/flops": self.flops,
            "compute/device_seconds": self.device_seconds,
            "compute/device_hours": self.device_seconds / 3600.0,
            "compute/eval_nfe": self.eval_nfe,
        }


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting the CPU attention kernel (which it misses: the
    CPU would otherwise report fewer FLOPs than a GPU or the meta device for the same model)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward
    return FlopCounterMode(display=False, custom_mapping=mapping)


def measure_flops(fn: Callable[[], torch.Tensor], backward: bool) -> tuple[int, int]:
    """FLOPs of fn() (a forward) and, if asked, of the backward of its output's sum."""
    with _counter() as fwd:
        out = fn()
    if not backward:
        return fwd.get_total_flops(), 0
    with _counter() as bwd:
        out.float().sum().backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


class Meter:
    """Counts compute; the trainer reports what it ran, per sample."""

    def __init__(self, world_size: int, flops_per_sample: tuple[float, float]):
        self.world_size = world_size
        self.fwd_flops, self.bwd_flops = flops_per_sample
        self.total = Counters()
        self._last = time.perf_counter()

    def forward(self, samples: float, cfg_mult: int = 1, eval: bool = False) -> None:
        """`samples` forwards over all ranks (times 2 under CFG)."""
        n = samples * cfg_mult
        if eval:
            self.total.eval_nfe += n
        else:
            self.total.nfe += n
            self.total.flops += n * self.fwd_flops

    def backward(self, samples: float, cfg_mult: int = 1) -> None:
        n = samples * cfg_mult
        self.total.backward += n
        self.total.flops += n * self.bwd_flops

    def tick(self, wall_seconds: float | None = None) -> None:
        """Add the wall time since the last tick (or the given seconds) x devices."""
        now = time.perf_counter()
        dt = (now - self._last) if wall_seconds is None else wall_seconds
        self._last = now
        self.total.device_seconds += dt * self.world_size

    def pause(self) -> None:
        """Do not count the time until the next tick (checkpoint writing)."""
        self._last = time.perf_counter()

    def state_dict(self) -> dict:
        return asdict(self.total)

    def load_state_dict(self, state: dict) -> None:
        self.total = Counters(**state)
        self._last = time.perf_counter()

    def fraction(self, budget, step: int) -> float:
        """The share of the budget spent: the largest over the budgets that are set."""
        parts = []
        if budget.steps is not None:
            parts.append(step / budget.steps)
        if budget.device_hours is not None:
            parts.append(self.total.device_seconds / 3600 / budget.device_hours)
        if budget.flops is not None:
            parts.append(self.total.flops / budget.flops)
        return max(parts)

    def exhausted(self, budget, step: int) -> str | None:
        """Why the run must stop now, or None."""
        if budget.steps is not None and step >= budget.steps:
            return f"steps budget {budget.steps} reached"
        if budget.device_hours is not None and self.total.device_seconds / 3600 >= budget.device_hours:
            return f"device-hours budget {budget.device_hours} reached"
        if budget.flops is not None and self.total.flops >= budget.flops:
            return f"FLOPs budget {budget.flops:.3g} reached"
        return None
