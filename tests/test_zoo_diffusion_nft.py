"""DiffusionNFT: ODE-only plans, re-noised items from the sampling schedule, and a loss whose
gradient vanishes at the old policy with zero advantage and otherwise points the right way."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from grpo_zoo.algorithms.diffusion_nft import NFTObjective as NFT

from grpo_zoo.config.run import OptimConfig
from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import Batch
from grpo_zoo.core.objective import Runtime
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table

from .helpers import run_config, train


class Lin(torch.nn.Module):
    """v = w x + u sigma: a two-weight velocity field that records the guidance it was asked for."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.ParameterDict(
            {"w": torch.nn.Parameter(torch.tensor(0.7)), "u": torch.nn.Parameter(torch.tensor(-0.3))}
        )
        self.guidance = []

    def velocity(self, x, sigma, emb, null, guidance):
        self.guidance.append(guidance)
        return self.net["w"] * x + self.net["u"] * sigma.view(-1, *([1] * (x.dim() - 1)))


@pytest.fixture
def table():
    return step_table(make_sigmas("wan", 10, 3.0), "flow_sde")


def nft(table, policy, guidance=1.0, **fields):
    cfg = algorithm.build({"name": "diffusion_nft", **fields}).cfg
    optim = OptimConfig(beta=0.0, micro_batch=7)  # one optimizer step per iteration
    runtime = Runtime(policy, torch.zeros(1, 1, 1), torch.float32, "cpu")
    return NFT(cfg, optim, SimpleNamespace(guidance=guidance), table, runtime)


def make_items(obj, b=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 3, 2, 4, 4, generator=gen)
    return obj.items(SimpleNamespace(latents=x0), None, torch.zeros(b, 1, 1), gen)


def test_plan_is_ode_only_and_trains_no_transition(table):
    alg = algorithm.build({"name": "diffusion_nft"})
    plan = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0)))
    plan.check(table)
    assert not plan.sde.any() and not plan.train.any() and not plan.weight.any()
    alg.check(table, 4)
    with pytest.raises(ConfigError, match="initial_noise"):
        algorithm.build({"name": "diffusion_nft", "initial_noise": "shared"}).check(table, 4)
    with pytest.raises(ConfigError, match="t_range"):
        algorithm.build({"name": "diffusion_nft", "t_range": [0.0, 0.001]}).check(table, 4)
    with pytest.raises(ConfigError, match="nft_beta"):
        algorithm.build({"name": "diffusion_nft", "nft_beta": 0.0})


def test_items_are_clean_samples_renoised_at_distinct_schedule_levels(table):
    pol = Lin()
    obj = nft(table, pol, guidance=4.5)
    items, made = make_items(obj)
    n = math.floor(0.99 * table.num_steps)  # the reference's timestep_fraction 0.99: 9 of 10
    assert obj.steps_per_sample() == n and len(items) == 6 * n and made == len(items)
    assert obj.num_items(SimpleNamespace(sde=torch.zeros(6, 10, dtype=torch.bool))) == len(items)
    for b in range(6):
        steps = items.step[items.traj == b]
        assert len(set(steps.tolist())) == n  # without replacement
    assert torch.equal(items.t, table.sigma[items.step])
    # x_t lies on the straight path from x0 (x_next) to some noise: eps = (x_t - (1 - t) x0) / t is finite
    t = items.t.float().view(-1, 1, 1, 1, 1)
    eps = (items.x_t - (1 - t) * items.x0) / t
    assert torch.isfinite(eps).all() and abs(float(eps.std()) - 1) < 0.1
    assert torch.allclose(items.aux, pol.velocity(items.x_t, items.t.float(), None, None, 1.0))
    # no CFG: every forward asked for guidance 1, one pass per sample
    assert set(pol.guidance) == {1.0} and obj.cfg_mult == 1 and obj.item_forwards() == 1
    again, _ = make_items(nft(table, Lin(), guidance=4.5))
    assert torch.equal(again.x_t, items.x_t) and torch.equal(again.step, items.step)  # a function of the seed
    narrow, _ = make_items(nft(table, Lin(), timesteps=3, t_range=[0.2, 0.8]))
    assert len(narrow) == 18 and ((narrow.t >= 0.2) & (narrow.t <= 0.8)).all()


def grad_of(obj, items, adv):
    obj.policy.zero_grad()
    n = len(items)
    terms = obj.loss(Batch(items, adv, torch.ones(n), torch.zeros(n, 1, 1)))
    terms.per.sum().backward()
    return torch.stack([p.grad for p in obj.policy.net.values()])


@pytest.mark.parametrize("nft_beta", [1.0, 0.1])
def test_gradient_vanishes_at_the_old_policy_with_zero_advantage(table, nft_beta):
    obj = nft(table, Lin(), nft_beta=nft_beta)
    items, _ = make_items(obj)
    assert grad_of(obj, items, torch.zeros(len(items))).abs().max() < 1e-5
    assert grad_of(obj, items, torch.ones(len(items))).abs().max() > 1e-3


def x0_error(pol, items) -> float:
    """The policy's x0-prediction error on the items."""
    t = items.t.float().view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        v = pol.velocity(items.x_t, items.t.float(), None, None, 1.0)
        return float((items.x_t - t * v - items.x0).pow(2).mean())


def test_positive_advantage_pulls_toward_the_sample_and_negative_pushes_away(table):
    """Oracle: one small step down the loss's gradient lowers the policy's own x0-prediction
    error on the re-noised samples when every advantage is +c, and raises it when -c."""
    change = {}
    for sign in (1.0, -1.0):
        pol = Lin()
        obj = nft(table, pol)
        items, _ = make_items(obj)
        before = x0_error(pol, items)
        g = grad_of(obj, items, torch.full((len(items),), 5.0 * sign))
        with torch.no_grad():
            for p, gp in zip(pol.net.values(), g):
                p -= 1e-3 * gp
        change[sign] = x0_error(pol, items) - before
    assert change[1.0] < 0 < change[-1.0]


def test_trainer_counts_cfg_free_forwards_once_and_the_estimator_agrees(tmp_path):
    """Rollouts under CFG cost two passes per sample; NFT's own forwards (v_old, the trained
    one, the reference's for optim.beta) one each."""
    from grpo_zoo.cost.counts import iteration_counts

    b, t = 2 * 4, 6
    cfg = run_config(tmp_path, "nft", {"name": "diffusion_nft", "timesteps": 2}, 1)
    cfg.sampling.guidance = 4.5
    cfg.optim.beta = 1e-4
    row = [r for r in train(cfg) if r["kind"] == "train"][0]
    items = b * 2
    assert row["stats/transitions"] == items and row["compute/backward"] == items
    assert row["compute/nfe"] == 2 * b * t + items + 2 * items
    c = iteration_counts(cfg, 0)
    assert c["rollout_nfe"] + c["update_nfe"] == row["compute/nfe"] and c["backward"] == items


def w(pol) -> float:
    return float(pol.net["w"].detach())


def test_old_policy_trails_the_weights_samples_the_rollout_and_gives_v_old(table):
    """The reference's old adapter: equal to the weights at first, then moved once per
    iteration with d = min(max(0, steps - flat) * rate, max) (its `return_decay`); the
    rollout samples with it and v_old is its velocity; the policy keeps its own weights."""
    pol = Lin()
    obj = nft(table, pol, old_decay_rate=0.1, old_decay_max=0.25, old_decay_flat=1)
    with obj.sampling_weights():  # iteration 0: a copy of the weights
        assert w(pol) == pytest.approx(0.7)
    with torch.no_grad():
        pol.net["w"].fill_(1.7)  # what the first update left
    with obj.sampling_weights():  # iteration 1: 1 optimizer step so far, inside the flat part: d = 0
        assert w(pol) == pytest.approx(1.7)
    with torch.no_grad():
        pol.net["w"].fill_(2.7)
    old = 0.1 * 1.7 + 0.9 * 2.7  # iteration 2: d = min((2 - 1) * 0.1, 0.25)
    with obj.sampling_weights():
        assert w(pol) == pytest.approx(old)
    assert w(pol) == pytest.approx(2.7)  # its own weights back after the rollout
    items, _ = make_items(obj)
    want = old * items.x_t - 0.3 * items.t.float().view(-1, 1, 1, 1, 1)
    assert torch.allclose(items.aux, want, atol=1e-6)  # v_old is the old policy's
    assert obj.old_decay(10) == pytest.approx(0.25)  # capped
    fresh = nft(table, pol, old_decay_rate=0.1, old_decay_max=0.25, old_decay_flat=1)
    fresh.load_state_dict(obj.state_dict())  # a resume moves it on from the saved copy
    with fresh.sampling_weights():
        moved = w(pol)
    with obj.sampling_weights():
        assert moved == pytest.approx(w(pol))


def test_without_decay_the_old_policy_is_the_current_one_and_no_copy_is_kept(table):
    pol = Lin()
    obj = nft(table, pol, old_decay_max=0.0)
    with obj.sampling_weights():
        pass
    assert obj.trailing.ema is None and obj.state_dict() == {}
    with torch.no_grad():
        pol.net["w"].fill_(1.7)
    items, _ = make_items(obj)
    assert torch.allclose(items.aux, 1.7 * items.x_t - 0.3 * items.t.float().view(-1, 1, 1, 1, 1), atol=1e-6)
    for bad in ({"old_decay_max": 1.0}, {"old_decay_max": -0.1}, {"old_decay_rate": -1e-3}, {"old_decay_flat": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            algorithm.build({"name": "diffusion_nft", **bad})


def test_the_trainer_rolls_out_with_the_old_policy(tmp_path):
    """Iteration 0 samples with a copy of the initial weights either way; from iteration 1 a
    slow old policy (d = 0.9) samples other videos than the current weights do (d = 0)."""
    rows = {}
    for name, alg in {"current": {"old_decay_max": 0.0}, "old": {"old_decay_rate": 1.0, "old_decay_max": 0.9}}.items():
        cfg = run_config(tmp_path, name, {"name": "diffusion_nft", "timesteps": 2, **alg}, 2)
        cfg.optim.lr = 1e-2  # a visible first update
        rows[name] = [r for r in train(cfg) if r["kind"] == "train"]
    assert rows["old"][0]["reward/mean"] == rows["current"][0]["reward/mean"]
    assert rows["old"][1]["reward/mean"] != rows["current"][1]["reward/mean"]
