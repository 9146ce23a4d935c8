"""GRPO-Guard: RatioNorm is 1 on-policy and unbiased off it; the plan reweights steps by 1/dt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from grpo_zoo.algorithms.grpo_guard import RatioNormClip

from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import Transitions
from grpo_zoo.core.objective import Runtime
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, sde_step, step_table


class Lin(torch.nn.Module):
    """v = w x: a one-weight velocity field."""

    def __init__(self, w: float = 0.7):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def velocity(self, x, sigma, emb, null, guidance):
        return self.w * x


def objective(table, policy=None):
    sampling, optim = SimpleNamespace(guidance=1.0), SimpleNamespace(clip_range=0.2, beta=0.0)
    return RatioNormClip(None, optim, sampling, table, Runtime(policy or Lin(), None, torch.float32, "cpu"))


@pytest.fixture(params=["flow_sde", "wan_linear", "cps"])
def table(request):
    return step_table(make_sigmas("wan", 10, 3.0), request.param)


def sampled(table, k: torch.Tensor, x: torch.Tensor, v_old: torch.Tensor, gen: torch.Generator) -> Transitions:
    """Transitions x -> x' drawn under v_old at steps k, as the rollout records them."""
    step = (table.sigma[k], table.sigma_next[k], table.std_t[k])
    x_next, logp, _ = sde_step(table.kind, x, v_old, *step, noise=torch.randn(x.shape, generator=gen))
    n = len(k)
    return Transitions(
        traj=torch.arange(n), step=k, x=x, x_next=x_next, logp_old=logp,
        weight=torch.ones(n, dtype=torch.float64), v_sample=v_old,
    )  # fmt: skip


def test_normalised_ratio_is_exactly_one_on_policy(table):
    gen = torch.Generator().manual_seed(0)
    k = torch.arange(table.last_noisy_step + 1)
    x = torch.randn(len(k), 3, 2, 4, 4, generator=gen)
    tr = sampled(table, k, x, 0.7 * x, gen)
    terms = objective(table).loss(
        SimpleNamespace(items=tr, adv=torch.ones(len(k)), weight=torch.ones(len(k)), emb=torch.zeros(len(k), 1, 1))
    )
    assert torch.allclose(terms.stats["ratio"], torch.ones(len(k)), rtol=0, atol=1e-6)


def test_ratio_norm_removes_the_mean_bias_of_a_fixed_velocity_change(table):
    """Oracle: the policy moved by a fixed dv; over many x' drawn from the old policy the plain
    log-ratio averages -|dmu|^2 / (2 s^2) < 0, the normalised one averages 0, and it equals
    mean(eps * dmu) exactly, whatever the step's noise."""
    gen = torch.Generator().manual_seed(1)
    obj = objective(table)
    n = 4000
    for j in range(table.last_noisy_step + 1):
        k = torch.full((n,), j)
        x = torch.randn(1, 3, 2, 4, 4, generator=gen).expand(n, -1, -1, -1, -1).clone()
        v_old = 0.7 * x
        tr = sampled(table, k, x, v_old, gen)
        s = float(table.step_std[j])
        dv = 0.5 * s / abs(float(table.dmu_dv[j])) * torch.randn(1, 3, 2, 4, 4, generator=gen)  # |dmu| ~ s / 2
        v = v_old + dv
        step = (table.sigma[k], table.sigma_next[k], table.std_t[k])
        _, logp, _ = sde_step(table.kind, x, v, *step, x_next=tr.x_next)
        plain = logp - tr.logp_old
        normed = obj.log_ratio(logp, tr.logp_old, v, tr, k)
        dmu = float(table.dmu_dv[j]) * dv
        bias = float(dmu.pow(2).mean()) / (2 * s**2)
        se_plain, se_norm = float(plain.std()) / n**0.5, float(normed.std()) / n**0.5
        assert abs(float(plain.mean()) + bias) < 4 * se_plain + 1e-4 * bias  # plain: E = -bias
        assert float(plain.mean()) < -10 * se_plain  # ... clearly below 0
        assert abs(float(normed.mean())) < 4 * se_norm  # normalised: E = 0
        eps = (tr.x_next - transition_mean_of(table, x, v_old, j)) / s
        assert torch.allclose(normed, (eps * dmu).flatten(1).mean(1), atol=1e-5)


def transition_mean_of(table, x, v, j):
    from grpo_zoo.flow import transition_mean

    return transition_mean(table.kind, x, v, table.sigma[j], table.sigma_next[j], table.std_t[j])


def test_plan_is_flow_grpo_with_steps_reweighted_by_one_over_dt():
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    ctx = PlanContext.of(2, 4, table, torch.Generator().manual_seed(0))
    plan = algorithm.build({"name": "grpo_guard", "timestep_fraction": 0.6}).plan(ctx)
    plan.check(table)
    flow = algorithm.build({"name": "flow_grpo", "timestep_fraction": 0.6}).plan(ctx)
    assert torch.equal(plan.sde, flow.sde) and torch.equal(plan.train, flow.train)
    assert plan.train[:, :6].all() and not plan.train[:, 6:].any()  # floor(10 * 0.6) steps
    w = plan.weight[0, :6]
    assert torch.allclose(w * table.dt[:6].abs(), torch.ones(6, dtype=torch.float64))
    gain = (
        algorithm.build({"name": "grpo_guard", "grad_reweight": "mean_gain", "timestep_fraction": 0.6})
        .plan(ctx)
        .weight[0, :6]
    )
    assert torch.allclose(gain * table.dmu_dv[:6].abs(), torch.ones(6, dtype=torch.float64))
    # under Flow-GRPO's noise the two differ by the constant 1 + a^2 / 2 after the guarded first step
    assert torch.allclose(w[1:] / gain[1:], torch.full((5,), 1 + 0.7**2 / 2, dtype=torch.float64))
    none = algorithm.build({"name": "grpo_guard", "grad_reweight": "none", "timestep_fraction": 0.6}).plan(ctx)
    assert torch.equal(none.weight, flow.weight)


def test_mean_gain_weights_give_every_step_the_same_gradient_size(table):
    """After RatioNorm d(log r)/dv = dmu_dv eps / D: weighting by 1/|dmu_dv| equalises steps."""
    alg = algorithm.build({"name": "grpo_guard", "grad_reweight": "mean_gain", "timestep_fraction": 1.0})
    steps = list(range(table.last_noisy_step + 1))
    w = alg.step_weights(table)
    obj, gen = objective(table), torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 2, 4, 4, generator=gen)
    sizes = []
    for j in steps:
        k = torch.tensor([j])
        tr = sampled(table, k, x, 0.7 * x, torch.Generator().manual_seed(3))
        v = (0.7 * x).requires_grad_()
        step = (table.sigma[k], table.sigma_next[k], table.std_t[k])
        _, logp, _ = sde_step(table.kind, x, v, *step, x_next=tr.x_next)
        (float(w[j]) * obj.log_ratio(logp, tr.logp_old, v, tr, k)).sum().backward()
        sizes.append(float(v.grad.norm()))
    assert max(sizes) / min(sizes) < 1 + 1e-3


def test_bad_reweighting_config_is_refused():
    with pytest.raises(ConfigError):
        algorithm.build({"name": "grpo_guard", "grad_reweight": "dtt"})
