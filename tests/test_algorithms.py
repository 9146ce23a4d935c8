"""Plans, weights, the registry and the shared loss pieces."""

import math

import pytest
import torch

from grpo_zoo.config.schema import build
from grpo_zoo.core import algorithm
from grpo_zoo.core.advantages import group_advantages, zero_std_ratio
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.loss import gaussian_kl, normalize_weights, ppo_clip
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from tests import golden

P, G = 6, 4


@pytest.fixture(scope="module")
def table():
    return step_table(make_sigmas("wan", 20, 3.0), "flow_sde")


def make_plan(cfg: dict, table, seed=0):
    alg = algorithm.build(cfg)
    alg.check(table, G)
    plan = alg.plan(PlanContext.of(P, G, table, torch.Generator().manual_seed(seed)))
    plan.check(table)
    return plan


def test_registry_lists_the_three_families():
    assert {"flow_grpo", "flow_grpo_fast", "flash_grpo"} <= set(algorithm.names())


@pytest.mark.parametrize("variant", list(golden.variants()))
@pytest.mark.parametrize("kind", ["flow_sde", "cps"])
def test_every_registered_algorithm_plans_within_the_invariants(variant, kind):
    """Whatever the algorithm (enumerated from the registry, with its ablation switches): the plan
    trains noisy SDE steps with positive weights, every trajectory's reward reaching a trained
    transition (one it trains, or one it shares with the row that trains it: G2RPO's coarse
    rows), or, for an objective on re-noised clean samples, none; and it is reproducible."""
    from grpo_zoo.core import objective as objectives

    tab = step_table(make_sigmas("wan", 10, 3.0), kind)
    alg = algorithm.build(golden.split(golden.variants()[variant])[0])
    alg.check(tab, G)
    plan = alg.plan(PlanContext.of(P, G, tab, torch.Generator().manual_seed(0)))
    plan.check(tab)
    assert plan.sde.shape == (P * G, 10) and plan.group_size == G and plan.num_prompts == P
    if objectives.get(alg.objective).needs_transitions:
        _, src_x = plan.sources()
        assert plan.train.gather(0, src_x).any(1).all()
        assert plan.train.any(1).view(P, G).any(1).all()
    else:  # its items are the clean samples re-noised at the trainable steps' noise levels
        assert not plan.train.any() and len(alg.trainable_steps(tab)) >= 1
    assert set(plan.train.nonzero()[:, 1].tolist()) <= set(alg.trainable_steps(tab))
    again = alg.plan(PlanContext.of(P, G, tab, torch.Generator().manual_seed(0)))
    assert torch.equal(again.train, plan.train) and torch.equal(again.weight, plan.weight)


def test_flow_grpo_trains_floor_fraction_of_every_trajectory(table):
    for frac in (0.05, 0.3, 0.6, 1.0):
        plan = make_plan({"name": "flow_grpo", "timestep_fraction": frac}, table)
        n = math.floor(20 * frac)
        assert plan.sde.all()
        assert (plan.train.sum(1) == n).all()
        assert plan.train[:, :n].all() and not plan.train[:, n:].any()
        assert (plan.weight[plan.train] == 1).all()


@pytest.mark.parametrize("w", [1, 2, 3])
def test_fast_windows_are_contiguous_and_inside_their_range(table, w):
    for seed in range(5):
        plan = make_plan({"name": "flow_grpo_fast", "window": w, "window_start_range": [2, 8]}, table, seed)
        assert torch.equal(plan.sde, plan.train)
        for row in plan.sde:
            idx = row.nonzero().flatten()
            assert len(idx) == w
            assert (idx.diff() == 1).all()
            assert 2 <= idx[0] <= 8
    starts = torch.cat(
        [make_plan({"name": "flow_grpo_fast", "window": 1}, table, s).sde.float().argmax(1) for s in range(20)]
    )
    assert starts.min() == 0 and starts.max() == 9  # the reference's range: a window in the first half


def test_iso_temporal_shares_one_k_per_group(table):
    ks = []
    for seed in range(10):
        plan = make_plan({"name": "flash_grpo", "k_range": [0, 9]}, table, seed)
        assert (plan.sde.sum(1) == 1).all() and torch.equal(plan.sde, plan.train)
        k = plan.sde.float().argmax(1).view(P, G)
        assert (k == k[:, :1]).all()  # every rollout of a prompt explores at the same step
        assert k.max() <= 9
        ks.append(k[:, 0])
    assert len(torch.cat(ks).unique()) > 3  # prompts draw k independently


def test_per_sample_draws_k_per_trajectory(table):
    plan = make_plan({"name": "flash_grpo", "grouping": "per_sample"}, table, 0)
    k = plan.sde.float().argmax(1).view(P, G)
    assert (plan.sde.sum(1) == 1).all()
    assert (k != k[:, :1]).any()


def test_rectified_weights_are_inverse_lambda(table):
    plan = make_plan({"name": "flash_grpo"}, table)
    k = plan.sde.float().argmax(1)
    torch.testing.assert_close(plan.weight[plan.train], table.inv_lam[k])
    plain = make_plan({"name": "flash_grpo", "rectify": False}, table)
    assert (plain.weight[plain.train] == 1).all()


def test_fast1_and_flash_per_sample_unrectified_make_the_same_kind_of_plan(table):
    """Flow-GRPO-Fast1 is Flash-GRPO with per-sample k and no rectification: one trained SDE
    step per trajectory, weight 1, k drawn per trajectory over the same steps."""
    fast_k, flash_k = [], []
    for seed in range(30):
        fast = make_plan({"name": "flow_grpo_fast", "window": 1}, table, seed)
        flash = make_plan({"name": "flash_grpo", "grouping": "per_sample", "rectify": False}, table, seed)
        for plan, ks in ((fast, fast_k), (flash, flash_k)):
            assert (plan.train.sum(1) == 1).all() and torch.equal(plan.sde, plan.train)
            assert (plan.weight[plan.train] == 1).all()
            ks.append(plan.train.float().argmax(1))
    fast_k, flash_k = torch.cat(fast_k), torch.cat(flash_k)
    assert set(fast_k.tolist()) == set(flash_k.tolist()) == set(range(10))  # both: the first half of 20 steps
    # both uniform over those 10 steps: 720 draws each, every step near 72
    for ks in (fast_k, flash_k):
        assert torch.bincount(ks, minlength=10).min() > 40 and torch.bincount(ks, minlength=10).max() < 110


def test_shared_initial_noise_is_a_plan_flag(table):
    assert make_plan({"name": "flash_grpo", "initial_noise": "shared"}, table).shared_noise
    assert not make_plan({"name": "flow_grpo"}, table).shared_noise


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "flash_grpoo"}, "did you mean 'flash_grpo'"),
        ({"name": "flash_grpo", "grouping": "per_group"}, "grouping"),
        ({"name": "flash_grpo", "k_range": [3, 25]}, "k_range: step 25 lies outside"),
        ({"name": "flash_grpo", "k_range": [5, 2]}, "k_range"),
        ({"name": "flow_grpo_fast", "window": 30}, "window: 30 steps is longer"),
        ({"name": "flow_grpo_fast", "window": 0}, "window"),
        ({"name": "flow_grpo_fast", "window": 4, "window_start_range": [0, 18]}, "window_start_range"),
        ({"name": "flow_grpo", "timestep_fraction": 0.0}, "timestep_fraction"),
        ({"name": "flow_grpo", "timestep_fraction": 0.01}, "trains no step"),
        ({"name": "flow_grpo", "windoww": 2}, "unknown field"),
        ({"name": "flash_grpo", "rectify": "yes"}, "rectify"),
    ],
)
def test_impossible_configs_fail_with_one_clear_line(table, cfg, match):
    with pytest.raises(ConfigError, match=match) as err:
        alg = algorithm.build(build(algorithm.AlgorithmConfig, cfg, "algorithm"))
        alg.check(table, G)
    assert "\n" not in str(err.value)


def test_groups_of_one_fail(table):
    with pytest.raises(ConfigError, match="group_size"):
        algorithm.build({"name": "flash_grpo"}).check(table, 1)


def test_training_a_silent_step_fails():
    cps = step_table(make_sigmas("wan", 10, 3.0), "cps")
    with pytest.raises(ConfigError, match="no noise"):
        algorithm.build({"name": "flow_grpo", "timestep_fraction": 1.0}).check(cps, G)
    plan = make_plan({"name": "flash_grpo"}, cps)  # the default k range skips it
    assert not plan.sde[:, 9].any()


def test_group_advantages():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
    a = group_advantages(r)
    torch.testing.assert_close(a[0], (r[0] - 2.5) / (r[0].std(unbiased=False) + 1e-4))
    assert (a[1] == 0).all()
    g = group_advantages(r, global_std=True)
    torch.testing.assert_close(g[0], (r[0] - 2.5) / (r.std(unbiased=False) + 1e-4))
    big = group_advantages(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), clip=1.5)
    assert big.max() == 1.5
    assert zero_std_ratio(r) == 0.5


def test_on_policy_ratio_is_exactly_one_and_loss_is_minus_advantage():
    logp = torch.randn(8, requires_grad=True)
    adv = torch.randn(8)
    per, stats = ppo_clip(logp, logp.detach(), adv, torch.ones(8), clip_range=1e-3)
    assert torch.equal(stats["ratio"], torch.ones(8))
    torch.testing.assert_close(per, -adv)
    assert stats["clipfrac"].sum() == 0 and stats["approx_kl"].abs().max() == 0
    (grad,) = torch.autograd.grad(per.sum(), logp)
    torch.testing.assert_close(grad, -adv)  # d ratio / d logp = 1 on-policy


def test_ppo_clip_stops_gradient_outside_the_trust_region():
    logp_old = torch.zeros(2)
    logp = torch.tensor([0.5, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    per, stats = ppo_clip(logp, logp_old, adv, torch.ones(2), clip_range=0.2)
    (grad,) = torch.autograd.grad(per.sum(), logp)
    assert (grad == 0).all() and stats["clipfrac"].sum() == 2


def test_weights_normalise_to_batch_mean_one():
    raw = torch.tensor([1.0, 3.0, 4.0, 8.0])
    w = torch.cat([normalize_weights(raw[:2], raw.sum().item(), 4), normalize_weights(raw[2:], raw.sum().item(), 4)])
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))


def test_gaussian_kl_matches_torch():
    m, mr = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    s = torch.tensor([0.3, 0.5, 1.0])
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m, s.view(3, 1, 1)), torch.distributions.Normal(mr, s.view(3, 1, 1))
    )
    torch.testing.assert_close(gaussian_kl(m, mr, s), ref.flatten(1).mean(1))
