"""G2RPO's plan: one SDE step per rollout, a group sharing its ODE prefix, the step cycling;
its multi-granularity advantage (the rest denoised at several strides, advantages summed)."""

import pytest
import torch

from grpo_zoo.config.schema import build
from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import AdvantageContext
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.training.rollout import rollout

from .helpers import CountingPolicy

P, G = 3, 4


def plan_for(cfg: dict, steps: int = 10, kind: str = "flow_sde", iteration: int = 0, seed: int = 0, group: int = G):
    table = step_table(make_sigmas("wan", steps, 3.0), kind)
    alg = algorithm.build({"name": "g2rpo", "granularities": [1], **cfg})
    alg.check(table, group)
    ctx = PlanContext.of(P, group, table, torch.Generator().manual_seed(seed), iteration=iteration)
    plan = alg.plan(ctx)
    plan.check(table)
    return plan, table, ctx, alg


@pytest.mark.parametrize(
    "steps,kind,expected",
    [
        (16, "flow_sde", list(range(8))),
        (10, "flow_sde", list(range(5))),
        (6, "cps", [0, 1, 2]),
        (4, "flow_sde", [0, 1]),
    ],
)
def test_one_sde_step_per_row_cycling_through_the_first_half(steps, kind, expected):
    """The reference's eta_step_list 0..7 of 16 steps; here one of them per iteration, in turn."""
    seen = []
    for it in range(2 * len(expected)):
        plan, *_ = plan_for({}, steps, kind, iteration=it, seed=it)
        assert (plan.sde.sum(1) == 1).all() and torch.equal(plan.train, plan.sde)
        assert (plan.weight[plan.train] == 1).all()
        s = plan.sde.float().argmax(1)
        assert (s == s[0]).all()  # every prompt (and rank: a function of the iteration) at one step
        seen.append(int(s[0]))
    assert seen == expected * 2


def test_explicit_branch_steps_are_taken_in_their_order():
    seen = [int(plan_for({"branch_steps": [3, 1, 6]}, iteration=it)[0].sde[0].float().argmax()) for it in range(6)]
    assert seen == [3, 1, 6, 3, 1, 6]


def test_group_shares_the_prefix_and_the_velocity_and_differs_only_in_the_noise_at_s():
    plan, table, *_ = plan_for({}, 10, iteration=3)  # s = 3
    s = 3
    rows = torch.arange(P * G)
    leaders = rows - rows % G
    assert torch.equal(plan.parent, leaders) and (plan.branch_at == s).all()
    src_v, src_x = plan.sources()
    steps = torch.arange(table.num_steps)
    # before s: the leader's transitions; at s: the leader's velocity but the row's own noise
    assert torch.equal(src_x, torch.where(steps < s, leaders[:, None], rows[:, None]))
    assert torch.equal(src_v, torch.where(steps <= s, leaders[:, None], rows[:, None]))
    indep, *_ = plan_for({"initial_noise": "independent"}, 10, iteration=3)
    assert not indep.shared_noise and torch.equal(indep.sde, plan.sde)


def test_rollout_branches_from_one_state_and_computes_the_prefix_once():
    plan, table, *_ = plan_for({}, 6, iteration=2)  # s = 2
    s, t = 2, 6
    policy = CountingPolicy()
    emb = torch.randn(P, 3, 5).repeat_interleave(G, 0)
    ro = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(0), keep_velocity=True)
    assert ro.nfe == policy.rows == P * (t + (G - 1) * (t - s - 1))
    tr = ro.transitions
    assert len(tr) == P * G and (tr.step == s).all()
    x, x_next = tr.x.view(P, G, -1), tr.x_next.view(P, G, -1)
    assert (x == x[:, :1]).all()  # one x_s per group (the anchor's)
    assert torch.equal(tr.v_sample.view(P, G, -1), tr.v_sample.view(P, G, -1)[:, :1].expand(P, G, -1))  # one velocity
    assert all(len({tuple(v.tolist()) for v in grp}) == G for grp in x_next)  # G noises
    assert not torch.equal(x[0, 0], x[1, 0])  # groups are independent


def test_advantages_are_the_groups_of_the_row_rewards():
    plan, _, ctx, alg = plan_for({}, 6, iteration=1)
    traj, step = plan.train.nonzero(as_tuple=True)
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    adv = alg.advantages(AdvantageContext.of(ctx, plan, rewards), traj, step).view(P, G)
    assert torch.allclose(adv[1], torch.tensor([-1.0, -1.0, 1.0, 1.0]), atol=1e-3)
    assert (adv[0].diff() > 0).all() and (adv[2] == 0).all()


@pytest.mark.parametrize(
    "cfg,kind,match",
    [
        ({"branch_steps": []}, "flow_sde", "branch_steps: expected distinct steps"),
        ({"branch_steps": [-1]}, "flow_sde", "branch_steps\\[0\\]: must be >= 0, got -1"),
        ({"branch_steps": [1, 1]}, "flow_sde", "branch_steps: expected distinct steps"),
        ({"branch_steps": [0, 6]}, "flow_sde", "branch_steps: step 6 lies outside the noisy steps 0..5"),
        ({"branch_steps": [5]}, "cps", "branch_steps: step 5 lies outside the noisy steps 0..4"),
        ({"granularities": [2, 3]}, "flow_sde", "granularities: expected distinct step strides >= 1 including 1"),
        ({"granularities": [1, 1]}, "flow_sde", "granularities: expected distinct"),
        ({"granularities": [1, 0]}, "flow_sde", "granularities\\[1\\]: must be >= 1, got 0"),
        ({"granularities": [1, 2, 3]}, "flow_sde", "group_size: g2rpo's 3 granularities need at least 2 noise draws"),
        ({"branch_steps": [5]}, "flow_sde", "branch_steps: at the last step \\(5\\) no step is left"),
    ],
)
def test_bad_branch_steps_fail_with_one_line(cfg, kind, match):
    table = step_table(make_sigmas("wan", 6, 3.0), kind)
    with pytest.raises(ConfigError, match=match) as err:
        algorithm.build(build(algorithm.AlgorithmConfig, {"name": "g2rpo", **cfg}, "algorithm")).check(table, G)
    assert "\n" not in str(err.value)


def test_default_granularities_are_the_references_one_and_two():
    assert algorithm.build({"name": "g2rpo"}).cfg.granularities == [1, 2]


def test_each_draw_is_denoised_at_every_granularity_after_s_plus_two():
    """G = 3 draws x granularities [1, 2]: draw i's granularity-1 row takes and trains the SDE
    step at s; its granularity-2 row shares it and the ODE step s + 1, then runs the model at
    s + 2, s + 4, ... (the reference's sigma_schedule[:s + 2] + sigma_schedule[s + 2::2])."""
    t, s, group = 10, 3, 6
    plan, table, *_ = plan_for({"granularities": [1, 2]}, t, iteration=s, group=group)
    rows = torch.arange(P * group)
    level = rows % 2
    assert torch.equal(plan.train.any(1), level == 0) and (plan.train.sum(1) == 1 - level).all()
    assert torch.equal(plan.stride, 1 + level)
    assert torch.equal(plan.parent[level == 1], rows[level == 1] - 1) and (plan.branch_at[level == 1] == s + 2).all()
    carriers = rows[level == 0]
    assert torch.equal(plan.parent[carriers], carriers - carriers % group) and (plan.branch_at[carriers] == s).all()
    fwd = plan.forward_rows()
    child = fwd[1]
    # s + 1, s + 2 shared; the grid s + 2, s + 4, s + 6 misses sigma = 0 (T = 10): the model at s + 4
    # only, and the clean prediction made there is the result (the reference's last `pred_original`)
    assert child.nonzero().flatten().tolist() == [s + 4]
    # hand count per prompt: the anchor T forwards, 2 more draws from s + 1 on, 3 coarse children after s + 2
    assert int(fwd.sum()) == P * (t + 2 * (t - s - 1) + 3 * 1)
    even, *_ = plan_for({"granularities": [1, 2]}, t, iteration=2, group=group)  # grid 4, 6, 8, 10 reaches 0
    assert even.forward_rows()[1].nonzero().flatten().tolist() == [6, 8]


def test_a_coarse_child_is_the_euler_ode_on_every_other_sigma_from_its_draws_state():
    t, s, group = 10, 2, 4
    plan, table, *_ = plan_for({"granularities": [1, 2]}, t, iteration=s, group=group)
    policy = CountingPolicy()
    emb = torch.randn(P, 3, 5).repeat_interleave(group, 0)
    gen = torch.Generator().manual_seed(0)
    ro = rollout(policy, emb, None, plan, table, 1.0, gen)
    assert ro.nfe == policy.rows == int(plan.forward_rows().sum())
    # replay row 1 (draw 0 at granularity 2) from the fine row 0: same x_{s+2}, then coarse Euler
    fine = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(0), keep_velocity=False)
    assert torch.equal(fine.latents, ro.latents)
    sig = torch.cat([table.sigma, table.sigma_next[-1:]]).float()
    x = _state_at(plan, table, emb, s + 2)
    nodes = list(range(s + 2, t, 2)) + [t]
    for a, b in zip(nodes, nodes[1:]):
        v = CountingPolicy().velocity(x, sig[a].expand(len(x)), emb, None, 1.0)
        x = x + (sig[b] - sig[a]) * v
    assert torch.allclose(ro.latents[1::2], x[1::2], atol=1e-5)
    assert not torch.allclose(ro.latents[0::2], ro.latents[1::2])  # the fine and the coarse rows differ


def _state_at(plan, table, emb, j):
    """x_j of every row, from a rollout of the first j steps (the same noise draws)."""
    from grpo_zoo.core.algorithm import Plan

    cut = Plan(
        sde=plan.sde[:, :j],
        train=plan.train[:, :j],
        weight=plan.weight[:, :j],
        group_size=plan.group_size,
        parent=plan.parent,
        branch_at=plan.branch_at.clamp(max=j - 1),
        stride=torch.ones_like(plan.stride),
    )
    short = step_table(torch.cat([table.sigma[:j], table.sigma[j : j + 1]]), table.kind)
    return rollout(CountingPolicy(), emb, None, cut, short, 1.0, torch.Generator().manual_seed(0)).latents


def test_advantage_is_the_sum_over_granularities_of_the_per_granularity_group_advantages():
    plan, _, ctx, alg = plan_for({"granularities": [1, 2]}, 6, iteration=1, group=6)
    traj, step = plan.train.nonzero(as_tuple=True)
    assert traj.tolist() == [r for r in range(P * 6) if r % 2 == 0]
    # rewards per prompt: 3 draws x (fine, coarse), row order draw-major
    fine = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, 1.0, 1.0]])
    coarse = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [4.0, 1.0, 1.0]])
    rewards = torch.stack([fine, coarse], -1).reshape(P, 6)
    adv = alg.advantages(AdvantageContext.of(ctx, plan, rewards), traj, step).view(P, 3)

    def z(r):
        return (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + 1e-4)

    assert torch.allclose(adv, (z(fine) + z(coarse)).clamp(-5, 5), atol=1e-5)
    assert torch.allclose(adv[0], torch.zeros(3), atol=1e-4)  # the granularities disagree: no signal
    assert torch.allclose(adv[2], 2 * z(fine)[2], atol=1e-5)  # they agree: twice the signal


def test_the_runs_ode_stride_coarsens_every_granularity_alike():
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    alg = algorithm.build({"name": "g2rpo"})
    ctx = PlanContext.of(P, 4, table, torch.Generator().manual_seed(0), iteration=1, ode_stride=2)
    assert alg.plan(ctx).stride.tolist() == [2, 4] * (2 * P)
