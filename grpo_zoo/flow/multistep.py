"""ODE solvers of a rollout's deterministic steps: Euler and DPM-Solver++(2M), on any grid.

A rectified flow x = (1 - sigma) x0 + sigma * noise has alpha = 1 - sigma and the
half log-SNR lambda = log(alpha / sigma). With the data prediction D = x - sigma * v, the
first-order DPM-Solver++ step from sigma to sigma' (Lu et al., 2022, "DPM-Solver++",
arXiv 2211.01095, eq. 9) is

    x' = (sigma' / sigma) x + (alpha' - alpha sigma' / sigma) D,

which for a flow is exactly the Euler step x' = x + (sigma' - sigma) v. Two such steps with
the same D compose into one, so a coarse step over several of the table's intervals is the
table's Euler steps with D held fixed, v = (x - D) / sigma at each of them: a row that
skips the model at a step (`Plan.stride`) reuses the data prediction of its last forward.

The second-order multistep solver (DPM-Solver++(2M), Algorithm 2 of the paper; the
"midpoint" form diffusers and MixGRPO's `multistep_dpm_solver_second_order_update` use)
corrects the data prediction with the previous node's:

    D_eff = D + (D - D_prev) / (2 r),  r = h_prev / h,

with h = lambda(next node) - lambda(this node) and h_prev = lambda(this node) -
lambda(previous node), and takes the first-order step with D_eff. As in MixGRPO-Flash
(Tencent-Hunyuan/MixGRPO, fastvideo/utils/sampling_utils.py, `dpm_apply_strategy`
"post"), it applies to the ODE steps after a row's last SDE step; every model call before
(Euler ODE steps and SDE steps alike, before the SDE noise) records the history. It is
first order with no previous node, from sigma = 1 (lambda = -inf) and into sigma = 0
(`lower_order_final`).
"""

from __future__ import annotations

import torch

ODE_SOLVERS = ("euler", "dpm2")


def log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log((1 - sigma) / sigma) in float64: -inf at sigma = 1, +inf at sigma = 0."""
    s = sigma.double()
    return torch.log1p(-s.clamp(max=1)) - torch.log(s.clamp(min=0))


def dpm2_ratio(sigma_prev: torch.Tensor, sigma: float, sigma_next: torch.Tensor) -> torch.Tensor:
    """1 / (2 r) of DPM-Solver++(2M) per row, for nodes sigma_prev > sigma > sigma_next;
    0 (a first-order step) where a log-SNR step is infinite or there is no previous node (NaN)."""
    l0 = log_snr(torch.tensor(float(sigma)))
    h_prev, h = l0 - log_snr(sigma_prev), log_snr(sigma_next) - l0
    ratio = h / (2 * h_prev)
    return torch.where(torch.isfinite(ratio) & (h_prev > 0), ratio, torch.zeros_like(ratio))


def velocity_of(x: torch.Tensor, d: torch.Tensor, sigma: float) -> torch.Tensor:
    """The velocity whose Euler step from x at sigma is the DPM-Solver++ step with data prediction d."""
    return (x - d) / sigma
