"""Advantage Weighted Matching: the surrogate's ratio is 1 on-policy, its gradient vanishes at the
old policy with zero advantage, the strata and the EMA policy follow the reference, and the
trainer counts (and the estimator predicts) every forward; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from grpo_zoo.algorithms.awm import AWMObjective as AWM
from grpo_zoo.algorithms.awm import matching_logp

from grpo_zoo.config.run import OptimConfig
from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import Batch
from grpo_zoo.core.objective import Runtime
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table

from .helpers import run_config, train


class Lin(torch.nn.Module):
    """v = w x + u sigma: a two-weight velocity field."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.ParameterDict(
            {"w": torch.nn.Parameter(torch.tensor(0.7)), "u": torch.nn.Parameter(torch.tensor(-0.3))}
        )

    def velocity(self, x, sigma, emb, null, guidance):
        return self.net["w"] * x + self.net["u"] * sigma.view(-1, *([1] * (x.dim() - 1)))


@pytest.fixture
def table():
    return step_table(make_sigmas("wan", 14, 3.0), "flow_sde")


def awm(table, policy, minibatches=1, **fields):
    cfg = algorithm.build({"name": "awm", **fields}).cfg
    optim = OptimConfig(beta=0.0, micro_batch=5, minibatches=minibatches, inner_epochs=1)
    return AWM(cfg, optim, SimpleNamespace(guidance=1.0), table, Runtime(policy, None, torch.float32, "cpu"))


def make_items(obj, b=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 3, 2, 4, 4, generator=gen)
    return obj.items(SimpleNamespace(latents=x0), None, torch.zeros(b, 1, 1), gen)


def loss(obj, items, adv):
    n = len(items)
    return obj.loss(Batch(items, adv, torch.ones(n), torch.zeros(n, 1, 1)))


def test_plan_is_ode_only_and_the_config_is_checked(table):
    alg = algorithm.build({"name": "awm"})
    plan = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0)))
    plan.check(table)
    assert not plan.sde.any() and not plan.train.any()
    assert alg.trainable_steps(table) == range(1, 12)  # floor(14 * 0.9) = 12, step 0 left out
    with pytest.raises(ConfigError, match="initial_noise"):
        algorithm.build({"name": "awm", "initial_noise": "shared"}).check(table, 4)
    with pytest.raises(ConfigError, match="kl_ema_decay"):
        algorithm.build({"name": "awm", "kl_ema_decay": 1.0})


@pytest.mark.parametrize("time_type,first", [("discrete_wo_init", 1), ("discrete", 0)])
def test_one_step_per_stratum_of_the_first_ninety_percent(table, time_type, first):
    obj = awm(table, Lin(), time_type=time_type)
    steps = obj.draw_steps(2000, torch.Generator().manual_seed(0))
    assert steps.shape == (2000, 6)
    bounds = torch.linspace(first, 12, 7).long()  # the reference's strata of steps first..11
    for i in range(6):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        assert set(steps[:, i].tolist()) == set(range(lo, max(hi, lo + 1)))
    short = awm(step_table(make_sigmas("wan", 2, 3.0), "flow_sde"), Lin())  # clamps on short schedules
    assert set(short.draw_steps(50, torch.Generator().manual_seed(0)).flatten().tolist()) == {1}


def test_surrogate_is_the_weighted_flow_matching_error():
    v, target = torch.randn(3, 5), torch.randn(3, 5)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    mse = (v.double() - target.double()).pow(2).mean(1)
    assert torch.allclose(matching_logp(v, target, t, "uniform", 0.25), -mse.float())
    ghuber = -((mse + 1e-10) ** 0.25 - 1e-10**0.25) * t / 0.25
    assert torch.allclose(matching_logp(v, target, t, "ghuber", 0.25), ghuber.float())


@pytest.mark.parametrize("weighting", ["ghuber", "uniform"])
def test_ratio_is_one_on_policy_and_the_gradient_vanishes_with_zero_advantage(table, weighting):
    obj = awm(table, Lin(), weighting=weighting)
    items, made = make_items(obj)
    assert len(items) == 4 * 6 and made == 2 * len(items)  # the old policy's forward and the EMA's
    terms = loss(obj, items, torch.zeros(len(items)))
    assert torch.allclose(terms.stats["ratio"], torch.ones(len(items)), rtol=0, atol=1e-6)
    terms.per.sum().backward()  # first iteration: the EMA policy is the policy, so its KL is flat too
    assert max(float(p.grad.abs()) for p in obj.policy.net.values()) < 1e-6
    obj.policy.zero_grad()
    loss(obj, items, torch.ones(len(items))).per.sum().backward()
    assert max(float(p.grad.abs()) for p in obj.policy.net.values()) > 1e-3


def test_positive_advantage_lowers_the_matching_error(table):
    pol = Lin()
    obj = awm(table, pol, ema_kl_beta=0.0)
    items, _ = make_items(obj)
    eps = items.aux[:, 0]

    def error() -> float:
        with torch.no_grad():
            return float((pol.velocity(items.x_t, items.t.float(), None, None, 1.0) - (eps - items.x0)).pow(2).mean())

    before = error()
    loss(obj, items, torch.ones(len(items))).per.sum().backward()
    with torch.no_grad():
        for p in pol.net.values():
            p -= 1e-3 * p.grad
    assert error() < before


def test_ema_policy_steps_once_per_iteration_with_the_reference_decay(table):
    pol = Lin()
    obj = awm(table, pol, minibatches=2, kl_ema_decay=0.3, kl_ema_ramp=0.1)
    make_items(obj)  # iteration 0: the EMA starts as a copy of the weights
    assert float(obj.trailing.ema.shadow["w"]) == pytest.approx(0.7)
    with torch.no_grad():
        pol.net["w"].fill_(1.7)  # what the update left
    items, _ = make_items(obj, seed=1)  # iteration 1: decay min(0.3, 0.1 * 2 optimizer steps) = 0.2
    assert float(obj.trailing.ema.shadow["w"]) == pytest.approx(0.2 * 0.7 + 0.8 * 1.7)
    assert float(pol.net["w"].detach()) == pytest.approx(1.7)  # the policy got its own weights back
    v_ema = items.aux[:, 1]
    want = (0.2 * 0.7 + 0.8 * 1.7) * items.x_t + -0.3 * items.t.float().view(-1, 1, 1, 1, 1)
    assert torch.allclose(v_ema, want, atol=1e-6)
    assert obj.ema_decay(5) == pytest.approx(0.3)  # capped at kl_ema_decay
    state = obj.state_dict()
    fresh = awm(table, pol, minibatches=2, kl_ema_decay=0.3, kl_ema_ramp=0.1)
    fresh.load_state_dict(state)
    with torch.no_grad():
        pol.net["w"].fill_(2.7)
    make_items(fresh, seed=2)
    make_items(obj, seed=2)
    assert float(fresh.trailing.ema.shadow["w"]) == pytest.approx(float(obj.trailing.ema.shadow["w"]))


def test_trainer_counts_every_forward_and_the_estimator_predicts_them(tmp_path):
    from grpo_zoo.cost.counts import iteration_counts

    b, t = 2 * 4, 6
    cfg = run_config(tmp_path, "awm", {"name": "awm", "timesteps": 3}, 1)
    cfg.optim.beta = 0.01
    cfg.model.lora_rank = 4
    row = [r for r in train(cfg) if r["kind"] == "train"][0]
    items = b * 3
    # rollout, then the old policy's and the EMA's forward per item, one trained + one reference forward
    assert row["stats/transitions"] == items
    assert row["compute/nfe"] == b * t + 2 * items + 2 * items and row["compute/backward"] == items
    c = iteration_counts(cfg, 0)
    assert c["rollout_nfe"] + c["update_nfe"] == row["compute/nfe"] and c["backward"] == items
    assert row["stats/ratio_dev_first_minibatch"] < 1e-5 and math.isfinite(row["loss/kl"])


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """The EMA policy is objective state: saved with the checkpoint, restored on resume."""
    alg = {"name": "awm", "kl_ema_ramp": 0.05}
    ref = train(run_config(tmp_path, "ref", alg, 4))
    train(run_config(tmp_path, "split", alg, 2))
    assert train(run_config(tmp_path, "split", alg, 4)) == ref
