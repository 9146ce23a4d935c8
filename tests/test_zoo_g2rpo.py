"""G2RPO's plan: one SDE step per rollout, a group sharing its ODE prefix, the step cycling."""

import pytest
import torch

from grpo_zoo import algorithm
from grpo_zoo.algorithm import PlanContext
from grpo_zoo.config import build
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.rollout import rollout

from .helpers import CountingPolicy

P, G = 3, 4


def plan_for(cfg: dict, steps: int = 10, kind: str = "flow_sde", iteration: int = 0, seed: int = 0):
    table = step_table(make_sigmas("wan", steps, 3.0), kind)
    alg = algorithm.build({"name": "g2rpo", **cfg})
    alg.check(table, G)
    ctx = PlanContext.of(P, G, table, torch.Generator().manual_seed(seed), iteration=iteration)
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
    assert torch.equal(tr.aux.view(P, G, -1), tr.aux.view(P, G, -1)[:, :1].expand(P, G, -1))  # one velocity
    assert all(len({tuple(v.tolist()) for v in grp}) == G for grp in x_next)  # G noises
    assert not torch.equal(x[0, 0], x[1, 0])  # groups are independent


def test_advantages_are_the_groups_of_the_row_rewards():
    plan, _, ctx, alg = plan_for({}, 6, iteration=1)
    traj, step = plan.train.nonzero(as_tuple=True)
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    adv = alg.advantages(ctx, plan, traj, step, rewards).view(P, G)
    assert torch.allclose(adv[1], torch.tensor([-1.0, -1.0, 1.0, 1.0]), atol=1e-3)
    assert (adv[0].diff() > 0).all() and (adv[2] == 0).all()


@pytest.mark.parametrize(
    "cfg,kind,match",
    [
        ({"branch_steps": []}, "flow_sde", "branch_steps: expected distinct steps"),
        ({"branch_steps": [-1]}, "flow_sde", "branch_steps: expected distinct steps"),
        ({"branch_steps": [1, 1]}, "flow_sde", "branch_steps: expected distinct steps"),
        ({"branch_steps": [0, 6]}, "flow_sde", "branch_steps: step 6 lies outside the noisy steps 0..5"),
        ({"branch_steps": [5]}, "cps", "branch_steps: step 5 lies outside the noisy steps 0..4"),
    ],
)
def test_bad_branch_steps_fail_with_one_line(cfg, kind, match):
    table = step_table(make_sigmas("wan", 6, 3.0), kind)
    with pytest.raises(ConfigError, match=match) as err:
        algorithm.build(build(algorithm.AlgorithmConfig, {"name": "g2rpo", **cfg}, "algorithm")).check(table, G)
    assert "\n" not in str(err.value)
