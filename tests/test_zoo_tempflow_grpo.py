"""TempFlow-GRPO: one ODE backbone per group, K SDE children per branch step, per-step groups."""

import pytest
import torch

from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import AdvantageContext
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.training.rollout import rollout

from .helpers import CountingPolicy


def table(steps=6, kind="flow_sde"):
    return step_table(make_sigmas("wan", steps, 3.0), kind)


def plan_of(cfg: dict, tab, p: int, g: int):
    alg = algorithm.build({"name": "tempflow_grpo", **cfg})
    alg.check(tab, g)
    ctx = PlanContext.of(p, g, tab, torch.Generator().manual_seed(0))
    plan = alg.plan(ctx)
    plan.check(tab)
    return alg, ctx, plan


def hand_nfe(t: int, k: int, steps: list[int]) -> int:
    """Forwards of one group: the backbone runs all T steps; a child leaving it at s shares the
    velocity at s and runs T - s - 1; the backbone is one of the last step's K children."""
    return t + (k - 1) * (t - steps[-1] - 1) + k * sum(t - s - 1 for s in steps[:-1])


@pytest.mark.parametrize(
    ("steps", "g", "cfg", "k", "branch"),
    [
        (6, 4, {}, 2, [0, 1]),  # the trainer test's setting: K derived from G
        (10, 54, {}, 6, list(range(9))),  # the reference: K = 6 on 9 of 10 steps
        (10, 54, {"children": 6}, 6, list(range(9))),
        (10, 12, {"children": 3}, 3, [0, 1, 2, 3]),
        (10, 12, {"branch_steps": 2}, 6, [0, 1]),
        (6, 7, {}, 7, [0]),  # a prime group: one branch step
    ],
)
def test_plan_branches_k_children_off_one_backbone(steps, g, cfg, k, branch):
    tab = table(steps)
    p, n = 2, len(branch)
    _, _, plan = plan_of(cfg, tab, p, g)
    at = [branch[-1]] * k + [s for s in branch[:-1] for _ in range(k)]  # rows 0..K-1: the last step
    for q in range(p):
        rows = range(q * g, (q + 1) * g)
        assert plan.parent[rows].tolist() == [q * g] * g  # every row leaves the group's backbone
        assert plan.branch_at[list(rows)[1:]].tolist() == at[1:]
        for r, s in zip(rows, at):
            # one SDE step per row, the one it trains; ODE before (the backbone's path) and after
            assert plan.sde[r].nonzero().flatten().tolist() == [s]
            assert torch.equal(plan.train[r], plan.sde[r])
    assert int(plan.train.sum()) == p * g
    # each (prompt, branch step) is one advantage group of K children
    ids = plan.group[plan.train]
    assert len(ids.unique()) == p * n and (ids.bincount() == k).all()
    assert int(plan.forward_rows().sum()) == p * hand_nfe(steps, k, branch) < p * g * steps


@pytest.mark.parametrize(("weighting", "expect"), [("step_std", "step_std"), ("std_t", "std_t"), ("none", None)])
def test_noise_aware_weight_is_the_branch_steps_noise(weighting, expect):
    tab = table(10)
    _, _, plan = plan_of({"weighting": weighting}, tab, 2, 12)
    traj, step = plan.train.nonzero(as_tuple=True)
    want = torch.ones(len(step), dtype=torch.float64) if expect is None else getattr(tab, expect)[step]
    assert torch.equal(plan.weight[traj, step], want)
    assert (plan.weight[~plan.train] == 0).all()


def test_rollout_children_start_from_the_backbone_state_and_count_forwards():
    tab = table(6)
    _, _, plan = plan_of({}, tab, 2, 4)  # steps 0 and 1, K = 2
    policy = CountingPolicy()
    emb = torch.randn(2, 3, 5).repeat_interleave(4, 0)
    ro = rollout(policy, emb, None, plan, tab, 1.0, torch.Generator().manual_seed(1))
    assert ro.nfe == policy.rows == int(plan.forward_rows().sum()) == 2 * hand_nfe(6, 2, [0, 1])
    tr = ro.transitions
    assert tr.traj.tolist() == list(range(8)) and tr.step.tolist() == [1, 1, 0, 0] * 2
    for q in range(2):
        sib = tr.x[q * 4 : q * 4 + 4]
        assert torch.equal(sib[0], sib[1]) and torch.equal(sib[2], sib[3])  # siblings leave one state
        assert not torch.equal(tr.x_next[q * 4], tr.x_next[q * 4 + 1])  # with their own noise
    # the step-1 children leave the backbone's ODE state: x_1 = x_0 + dt * v(x_0) of the step-0 siblings' start
    x0 = tr.x[2]
    v0 = policy.velocity(x0[None], tab.sigma[0].float().view(1), emb[:1], None, 1.0)[0]
    assert torch.allclose(tr.x[0], x0 + (tab.sigma_next[0] - tab.sigma[0]).float() * v0, atol=1e-6)


def test_advantages_are_normalised_per_branch_step_group():
    tab = table(6)
    alg, ctx, plan = plan_of({}, tab, 2, 4)  # rows 0, 1 branch at step 1; rows 2, 3 at step 0
    traj, step = plan.train.nonzero(as_tuple=True)
    rewards = torch.tensor([[1.0, 3.0, 10.0, 20.0], [5.0, 5.0, 0.0, 2.0]])
    adv = alg.advantages(AdvantageContext.of(ctx, plan, rewards), traj, step)
    # within each pair: -1, +1 whatever the scale; equal rewards give 0
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0, 0.0, -1.0, 1.0]), atol=1e-3)


def test_short_and_noiseless_schedules_clamp_the_branch_steps():
    tab = table(4, "cps")  # the last step has no noise
    alg, _, plan = plan_of({"timestep_fraction": 1.0}, tab, 1, 6)
    assert list(alg.trainable_steps(tab)) == [0, 1, 2]
    assert sorted(set(plan.train.nonzero()[:, 1].tolist())) == [0, 1, 2]  # n = 3, K = 2


@pytest.mark.parametrize(
    ("cfg", "g", "match"),
    [
        ({"children": 6}, 4, "group_size: tempflow_grpo needs G = children"),
        ({"children": 2, "branch_steps": 2}, 6, "group_size"),
        ({"branch_steps": 9}, 18, "n <= 5"),  # 6 steps at 0.99: 5 candidates
        ({"children": 1}, 4, "children: must be >= 2, got 1"),
        ({"branch_steps": 0}, 4, "branch_steps: must be >= 1, got 0"),
        ({"timestep_fraction": 0}, 4, "timestep_fraction"),
        ({"initial_noise": "independent"}, 4, "initial_noise: .*use shared"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_fix(cfg, g, match):
    with pytest.raises(ConfigError, match=match) as err:
        plan_of(cfg, table(6), 1, g)
    assert "\n" not in str(err.value)
