"""ODE and SDE steps of a rectified flow, their Gaussian log-prob, and lambda(t).

Step j goes from sigma = sigma_j to sigma' = sigma_{j+1}, dt = sigma' - sigma < 0, with
predicted velocity v (after CFG). Every stochastic step is Gaussian,
x' ~ N(mu(x, v), step_std^2), with step_std = std_t * sqrt(-dt). The noise kinds:

- `flow_sde` (Flow-GRPO): std_t = a * sqrt(sigma / (1 - sigma)); at sigma_0 ~ 1 the
  denominator is guarded by 1 - sigma_1, as Flow-GRPO does.
- `wan_linear`: std_t = a * (sigma_min + (sigma_max - sigma_min) * sigma) with
  sigma_max = sigma_1, sigma_min = sigma_N (a = 1 by default).
- `constant` (DanceGRPO): std_t = a at every step, so step_std = a * sqrt(-dt)
  (XueZeyue/DanceGRPO, fastvideo/train_grpo_flux.py `flux_step`, with a = eta = 0.3 as
  in its Flux and Wan scripts; its score-corrected mean is the mean below with std_t = a).
- all three use the marginal-preserving reverse SDE, Euler-Maruyama:
  mu = x + dt * [v + std_t^2 / (2 sigma) * (x + (1 - sigma) v)]
- `cps` (coefficients-preserving sampling): with x0 = x - sigma v, e = x + (1 - sigma) v,
  s = sigma' * sin(a * pi / 2): mu = (1 - sigma') x0 + sqrt(sigma'^2 - s^2) e,
  step_std = s (so std_t = s / sqrt(-dt)); zero noise at the final step (sigma' = 0).

lambda_t = |d mu / d v| / step_std is the factor by which the log-prob's gradient with
respect to the velocity scales at the sampled point: d log p / d v_d = -(lambda_t / D) eps_d.
It is computed analytically here from the schedule, for any step count and noise kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grpo_zoo.errors import ConfigError

NOISE_KINDS = ("flow_sde", "wan_linear", "cps", "constant")
DEFAULT_NOISE_LEVEL = {"flow_sde": 0.7, "wan_linear": 1.0, "cps": 0.7, "constant": 0.3}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class StepTable:
    """Per-step constants of a schedule under one noise kind (all float64, length N)."""

    kind: str
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    dt: torch.Tensor
    std_t: torch.Tensor
    step_std: torch.Tensor
    dmu_dv: torch.Tensor
    lam: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.sigma.numel())

    @property
    def last_noisy_step(self) -> int:
        """The last step whose transition has noise (cps has none at the final step)."""
        noisy = (self.step_std > 0).nonzero()
        return int(noisy[-1]) if len(noisy) else -1

    @property
    def inv_lam(self) -> torch.Tensor:
        """1 / lambda(t): the rectification coefficient c(t) (0 where a step has no noise)."""
        return torch.where(self.lam > 0, 1.0 / self.lam.clamp_min(1e-300), torch.zeros_like(self.lam))

    def rows(self) -> list[dict]:
        """One dict per step: step, sigma, dt, std, lambda, inv_lambda (plus step_std)."""
        return [
            {
                "step": j,
                "sigma": float(self.sigma[j]),
                "dt": float(self.dt[j]),
                "std": float(self.std_t[j]),
                "step_std": float(self.step_std[j]),
                "lambda": float(self.lam[j]),
                "inv_lambda": float(self.inv_lam[j]),
            }
            for j in range(self.num_steps)
        ]


def resolve_noise_level(kind: str, level: float | None) -> float:
    if kind not in NOISE_KINDS:
        raise ConfigError(f"noise: unknown noise kind {kind!r} (choose one of {', '.join(NOISE_KINDS)})")
    level = DEFAULT_NOISE_LEVEL[kind] if level is None else float(level)
    if not math.isfinite(level) or level < 0:
        raise ConfigError(f"noise_level: must be a finite number >= 0, got {level!r}")
    if kind == "cps" and level > 1:
        raise ConfigError(f"noise_level: cps takes a level in [0, 1] (sin(level*pi/2)), got {level!r}")
    return level


def step_table(sigmas: torch.Tensor, kind: str, level: float | None = None) -> StepTable:
    """Constants of every step of `sigmas` (N + 1 values) under noise `kind` at `level`."""
    level = resolve_noise_level(kind, level)
    s = sigmas.to(torch.float64)
    sigma, sigma_next = s[:-1], s[1:]
    dt = sigma_next - sigma
    sqrt_mdt = torch.sqrt(-dt)
    if kind == "cps":
        step_std = sigma_next * math.sin(level * math.pi / 2)
        std_t = step_std / sqrt_mdt
        dmu_dv = -(1 - sigma_next) * sigma + torch.sqrt((sigma_next**2 - step_std**2).clamp_min(0)) * (1 - sigma)
    else:
        if kind == "flow_sde":
            guard = 1 - s[1] if s.numel() > 2 else torch.tensor(1.0, dtype=torch.float64)
            std_t = level * torch.sqrt(sigma / torch.maximum(1 - sigma, guard))
        elif kind == "wan_linear":
            sig_max, sig_min = s[1] if s.numel() > 2 else s[0], s[-1]
            std_t = level * (sig_min + (sig_max - sig_min) * sigma)
        else:  # constant
            std_t = torch.full_like(sigma, level)
        step_std = std_t * sqrt_mdt
        dmu_dv = dt * (1 + std_t**2 * (1 - sigma) / (2 * sigma))
    lam = torch.where(step_std > 0, dmu_dv.abs() / step_std.clamp_min(1e-300), torch.zeros_like(dt))
    return StepTable(kind, sigma, sigma_next, dt, std_t, step_std, dmu_dv, lam)


def _bcast(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-sample scalar (shape [B] or scalar) broadcast against x (shape [B, ...])."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v


def transition_mean(
    kind: str,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    std_t: torch.Tensor | float,
) -> torch.Tensor:
    """mu(x, v) of one step (per-sample sigma, sigma_next, std_t of shape [B] or scalars)."""
    sigma, sigma_next, std_t = (_bcast(a, x) for a in (sigma, sigma_next, std_t))
    dt = sigma_next - sigma
    if kind == "cps":
        step_std = std_t * torch.sqrt(-dt)
        x0 = x - sigma * v
        eps_hat = x + (1 - sigma) * v
        return (1 - sigma_next) * x0 + torch.sqrt((sigma_next**2 - step_std**2).clamp_min(0)) * eps_hat
    return x + dt * (v + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v))


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x' = x + dt * v."""
    return x + (_bcast(sigma_next, x) - _bcast(sigma, x)) * v


def gaussian_logprob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x_next; mean, std^2), averaged over all non-batch elements, in float32."""
    x_next, mean = x_next.float(), mean.float()
    std = _bcast(torch.as_tensor(std, dtype=torch.float32, device=x_next.device), x_next)
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return lp.flatten(1).mean(1)


def sde_step(
    kind: str,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    std_t,
    noise: torch.Tensor | None = None,
    x_next: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step: returns (x_next, log_prob, mean).

    Pass `noise` (standard normal, shape of x) to sample, or `x_next` to score a stored
    transition. The mean is computed in float32; the log-prob is float32.
    """
    xf, vf = x.float(), v.float()
    mean = transition_mean(kind, xf, vf, sigma, sigma_next, std_t)
    dt = _bcast(sigma_next, xf) - _bcast(sigma, xf)
    std = _bcast(std_t, xf) * torch.sqrt(-dt)
    if x_next is None:
        if noise is None:
            raise ValueError("sde_step needs noise to sample or x_next to score")
        # a sample is data for the policy gradient, not a path to differentiate through
        x_next = (mean + std * noise.float()).detach()
    return x_next, gaussian_logprob(x_next, mean, std), mean
