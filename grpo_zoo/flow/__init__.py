"""Pure flow-matching math: schedules, ODE/SDE steps, log-prob and lambda(t)."""

from grpo_zoo.flow.schedules import SCHEDULES, make_sigmas, timesteps_of
from grpo_zoo.flow.sde import (
    NOISE_KINDS,
    StepTable,
    gaussian_logprob,
    ode_step,
    sde_step,
    step_table,
    transition_mean,
)

__all__ = [
    "NOISE_KINDS",
    "SCHEDULES",
    "StepTable",
    "gaussian_logprob",
    "make_sigmas",
    "ode_step",
    "sde_step",
    "step_table",
    "timesteps_of",
    "transition_mean",
]
