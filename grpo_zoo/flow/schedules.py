"""Sampling schedules: the sigmas diffusers' flow-matching schedulers use, reproduced exactly.

sigma = 1 is pure noise, sigma = 0 is data. N sampling steps give N + 1 sigmas
sigma_0 > ... > sigma_{N-1} > sigma_N = 0. The model is conditioned on the timestep
t_j = 1000 * sigma_j (num_train_timesteps = 1000 in both references).

- `wan`: Wan2.1's scheduler as diffusers runs it (UniPCMultistepScheduler with
  use_flow_sigmas=True and flow_shift=s): u = linspace(1, 1/1000, N + 1)[:-1], shifted,
  sigma_0 nudged below 1 by 1e-6, then a final 0.
- `flow_match`: FlowMatchEulerDiscreteScheduler(shift=s): u = linspace(1, sigma_min, N)
  with sigma_min the shifted 1/1000, shifted, then a final 0.

Shifting is sigma = s*u / (1 + (s - 1)*u). Both are computed in float64 and stored in
float32, as the references do, so the values agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_zoo.errors import ConfigError

SCHEDULES = ("wan", "flow_match")
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(u: np.ndarray, shift: float) -> np.ndarray:
    """The timestep shift that Wan and SD3 use: s*u / (1 + (s - 1)*u)."""
    return shift * u / (1 + (shift - 1) * u)


def make_sigmas(schedule: str, steps: int, shift: float) -> torch.Tensor:
    """The N + 1 sigmas (float32, last one 0) of `schedule` with `steps` steps and `shift`."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule: unknown schedule {schedule!r} (choose one of {', '.join(SCHEDULES)})")
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps: must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ConfigError(f"shift: must be positive, got {shift!r}")
    n = int(steps)
    if schedule == "wan":
        u = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, n + 1)[:-1]
        sig = shift_sigmas(u, shift)
        if abs(sig[0] - 1) < 1e-6:
            sig[0] -= 1e-6
    else:
        # diffusers shifts its training sigmas once at construction (sigma_min included),
        # then shifts the inference sigmas again: we follow it, double shift of sigma_min included.
        sigma_min = float(np.float32(shift_sigmas(np.float32(1 / NUM_TRAIN_TIMESTEPS), shift)))
        sigma_max = 1.0
        u = np.linspace(sigma_max * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, n) / NUM_TRAIN_TIMESTEPS
        sig = shift_sigmas(u, shift)
    sig = np.concatenate([sig.astype(np.float32), np.zeros(1, np.float32)])
    return torch.from_numpy(sig)


def timesteps_of(sigmas: torch.Tensor) -> torch.Tensor:
    """Model conditioning timesteps t_j = 1000 * sigma_j for the N steps (float32)."""
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS
