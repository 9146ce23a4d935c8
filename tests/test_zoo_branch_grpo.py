"""BranchGRPO: binary rollout trees with shared prefixes, depth-wise node advantages, pruning."""

import pytest
import torch

from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import AdvantageContext
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.training.rollout import rollout

from .helpers import CountingPolicy


def table(steps=20, kind="flow_sde"):
    return step_table(make_sigmas("wan", steps, 3.0), kind)


def plan_of(cfg: dict, tab, p: int, g: int, iteration: int = 0):
    alg = algorithm.build({"name": "branch_grpo", **cfg})
    alg.check(tab, g)
    ctx = PlanContext.of(p, g, tab, torch.Generator().manual_seed(0), iteration=iteration)
    plan = alg.plan(ctx)
    plan.check(tab)
    return alg, ctx, plan


def trained_steps(plan) -> list[int]:
    return sorted(set(plan.train.nonzero()[:, 1].tolist()))


def test_reference_tree_splits_at_0_3_6_9_into_16_leaves():
    tab = table(20)
    _, _, plan = plan_of({}, tab, 2, 16)
    # leaf b > 0 leaves leaf b - 2^h at the h-th split, h its highest bit
    parent = [0, 0, 0, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]
    at = [0, 0, 3, 3, 6, 6, 6, 6, 9, 9, 9, 9, 9, 9, 9, 9]
    assert plan.parent.tolist() == parent + [16 + x for x in parent]
    assert plan.branch_at[1:16].tolist() == at[1:] and plan.branch_at[17:].tolist() == at[1:]
    assert plan.sde.all()  # every step of every branch is stochastic (mix off)
    for b in range(16):  # a leaf trains the transitions it owns: from its split to the end
        assert plan.train[b].nonzero().flatten().tolist() == list(range(at[b], 20))
    # every tree transition trains once: 2 nodes per step after split 0, 4 after 3, 8 after 6, 16 after 9
    nodes = [2] * 3 + [4] * 3 + [8] * 3 + [16] * 11
    assert plan.train[:16].sum(0).tolist() == nodes
    # forwards: the root runs 20 steps, a branch leaving at s shares the velocity at s: 20 - s - 1
    hand = 20 + 19 + 2 * 16 + 4 * 13 + 8 * 10
    assert int(plan.forward_rows().sum()) == 2 * hand == 2 * 203 < 2 * 16 * 20


def test_rollout_shares_each_prefix_once():
    tab = table(6)
    _, _, plan = plan_of({}, tab, 2, 4)  # splits at 0 and 3
    policy = CountingPolicy()
    emb = torch.randn(2, 3, 5).repeat_interleave(4, 0)
    ro = rollout(policy, emb, None, plan, tab, 1.0, torch.Generator().manual_seed(1))
    assert ro.nfe == policy.rows == int(plan.forward_rows().sum()) == 2 * (6 + 5 + 2 + 2)
    tr = ro.transitions
    assert len(tr) == int(plan.train.sum()) == 2 * (2 * 3 + 4 * 3)
    at0 = tr.x[(tr.step == 0) & (tr.traj < 4)]
    assert torch.equal(at0[0], at0[1])  # both first-split branches leave the root's x_0
    at3 = {b: tr.x[(tr.step == 3) & (tr.traj == b)][0] for b in range(4)}
    assert torch.equal(at3[0], at3[2]) and torch.equal(at3[1], at3[3])  # second split: each branch's x_3
    assert not torch.equal(at3[0], at3[1])
    assert len({tuple(ro.latents[b].flatten()[:4].tolist()) for b in range(4)}) == 4  # four distinct leaves


def test_node_values_are_leaf_means_normalised_per_depth():
    tab = table(6)
    alg, ctx, plan = plan_of({}, tab, 2, 4)
    traj, step = plan.train.nonzero(as_tuple=True)
    rewards = torch.tensor([[1.0, 2.0, 3.0, 5.0], [0.0, 0.0, 1.0, 1.0]])
    adv = alg.advantages(AdvantageContext.of(ctx, plan, rewards), traj, step)
    got = {(int(b), int(j)): float(a) for b, j, a in zip(traj, step, adv)}
    # tree 0, steps 0-2: two nodes, leaves {0, 2} (mean 2) and {1, 3} (mean 3.5): -1 and +1
    for j in range(3):
        assert got[(0, j)] == pytest.approx(-1, abs=1e-3) and got[(1, j)] == pytest.approx(1, abs=1e-3)
    # steps 3-5: the leaves themselves, normalised among the four
    r = rewards[0].double()
    z = (r - r.mean()) / r.std(unbiased=False)
    for b in range(4):
        for j in range(3, 6):
            assert got[(b, j)] == pytest.approx(float(z[b]), abs=1e-3)
    # tree 1: both first-split nodes average 0.5 (no signal: 0), the leaves split -1 / +1
    assert all(got[(b, j)] == 0 for b in (4, 5) for j in range(3))
    assert [got[(b, 4)] for b in range(4, 8)] == pytest.approx([-1, -1, 1, 1], abs=1e-3)


def test_node_value_is_the_mean_of_the_leaves_below_it():
    tab = table(20)
    alg, ctx, plan = plan_of({}, tab, 1, 16)
    rewards = torch.randn(1, 16, generator=torch.Generator().manual_seed(3)) ** 3
    traj, step = plan.train.nonzero(as_tuple=True)
    adv = alg.advantages(AdvantageContext.of(ctx, plan, rewards), traj, step)
    for j in (0, 4, 7, 12):
        k = sum(s <= j for s in (0, 3, 6, 9))  # splits so far: the branch is the leaves equal mod 2^k
        values = torch.stack([rewards[0, c :: 1 << k].double().mean() for c in range(1 << k)])
        want = (values - values.mean()) / (values.std(unbiased=False) + 1e-4)
        sel = step == j
        assert traj[sel].tolist() == list(range(1 << k))  # node c is owned by leaf c
        assert torch.allclose(adv[sel].double(), want, atol=1e-5)


def test_depth_pruning_drops_steps_and_slides_to_the_last_split():
    tab = table(20)
    cfg = {"prune_steps": [17, 18, 19], "prune_slide_every": 30}
    for it, pruned in [
        (0, [17, 18, 19]),
        (29, [17, 18, 19]),
        (30, [16, 17, 18]),
        (60, [15, 16, 17]),
        (10**6, [8, 9, 10]),
    ]:
        _, _, plan = plan_of(cfg, tab, 1, 16, iteration=it)
        assert trained_steps(plan) == [s for s in range(20) if s not in pruned]
    _, _, fixed = plan_of({"prune_steps": [17, 18, 19]}, tab, 1, 16, iteration=10**6)
    assert trained_steps(fixed) == list(range(17))
    _, _, full = plan_of({}, tab, 1, 16)
    assert torch.equal(fixed.forward_rows(), full.forward_rows())  # pruning leaves the rollout alone


def test_width_pruning_keeps_the_first_share_of_each_leafs_post_split_steps():
    tab = table(20)
    _, _, plan = plan_of({"width_pruning": "per_branch"}, tab, 1, 16)
    assert trained_steps(plan) == list(range(15))  # 10 steps after split 9, half kept: 10..14
    _, _, both = plan_of({"width_pruning": "per_branch", "prune_steps": [10, 11]}, tab, 1, 16)
    assert trained_steps(both) == list(range(10)) + [12, 13, 14, 15]  # 8 left after depth pruning: 4 kept


def test_mix_window_makes_the_rest_ode():
    tab = table(20)
    _, _, plan = plan_of({"sde_window": 4}, tab, 1, 16)
    assert plan.sde[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 6, 9]
    assert trained_steps(plan) == [0, 1, 2, 3, 6, 9]
    assert (plan.train.sum(1) >= 1).all()  # every leaf trains its own split step


def test_split_points_fit_short_and_noiseless_schedules():
    alg, _, plan = plan_of({}, table(4, "cps"), 1, 4)  # last noisy step 2: spacing narrowed to 2
    assert alg.splits(table(4, "cps"), 4) == [0, 2]
    _, _, late = plan_of({"split_points": [2, 5]}, table(6), 1, 4)
    assert trained_steps(late) == [2, 3, 4, 5]  # before the first split the tree has one node per step
    assert late.branch_at[1:4].tolist() == [2, 5, 5]


@pytest.mark.parametrize(
    ("cfg", "g", "steps", "match"),
    [
        ({}, 6, 20, "group_size: branch_grpo's binary tree has 2\\^splits leaves"),
        ({}, 64, 4, "group_size: 64 leaves need 6 split steps"),
        ({"split_points": [0, 3, 6]}, 4, 20, "split_points: 3 splits make 8 leaves"),
        ({"split_points": [0, 3]}, 4, 4, "split_points: step 3 has no noise"),
        ({"split_points": [3, 0]}, 4, 20, "split_points: expected increasing"),
        ({"split_every": 0}, 4, 20, "split_every"),
        ({"width_ratio": 0}, 4, 20, "width_ratio"),
        ({"initial_noise": "independent"}, 4, 20, "initial_noise: .*use shared"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_fix(cfg, g, steps, match):
    with pytest.raises(ConfigError, match=match) as err:
        plan_of(cfg, table(steps, "cps"), 1, g)
    assert "\n" not in str(err.value)


def test_probability_weighted_fusion_weights_each_split_by_its_child_edges():
    """--tree_prob_weighted: a node's value is softmax(child edge log-probs) . child values."""
    tab = table(6)  # splits at steps 0 and 3: node A = leaves {0, 2}, node B = {1, 3} before step 3
    alg, ctx, plan = plan_of({"prob_weighted": True}, tab, 1, 4)
    traj, step = plan.train.nonzero(as_tuple=True)
    rewards = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    logp = torch.zeros(4, 6)
    logp[:, 3] = torch.tensor([0.0, -1.0, 2.0, 0.5])  # the four edges of the split at step 3
    scored = AdvantageContext.of(ctx, plan, rewards, logp=logp)
    from grpo_zoo.algorithms.branch_grpo import fused_values

    value = fused_values(plan.sources()[1], logp.double(), rewards[0].double())
    w_a = torch.softmax(torch.tensor([0.0, 2.0]).double(), 0)
    w_b = torch.softmax(torch.tensor([-1.0, 0.5]).double(), 0)
    a, b = float(w_a @ torch.tensor([1.0, 3.0]).double()), float(w_b @ torch.tensor([2.0, 5.0]).double())
    assert value[:, 3:].tolist() == [[r] * 3 for r in rewards[0].double().tolist()]  # leaves below the last split
    for j in range(3):
        assert value[0, j] == pytest.approx(a) and value[2, j] == pytest.approx(a)
        assert value[1, j] == pytest.approx(b) and value[3, j] == pytest.approx(b)
    adv = alg.advantages(scored, traj, step)
    mean_adv = algorithm.build({"name": "branch_grpo"}).advantages(scored, traj, step)
    early = step < 3
    assert torch.allclose(adv[early].abs(), torch.ones(int(early.sum())), atol=1e-3)  # two nodes: -1 / +1
    assert (adv[early & (traj == 0)] < 0).all() == (a < b)
    logp.zero_()  # equal edges: the fusion is the mean of the leaves (a balanced tree)
    assert torch.allclose(alg.advantages(scored, traj, step), mean_adv)


def test_best_worst_width_pruning_trains_the_extremes_after_the_last_split():
    """The reference's mode 2: after the last split, keep max(2, int(n * ratio)) transitions, the
    best half and the worst half by advantage; everything before the last split trains."""
    tab = table(10)
    alg, ctx, plan = plan_of({"width_pruning": "best_worst", "width_ratio": 0.25}, tab, 2, 4)
    last = alg.splits(tab, 4)[-1]
    traj, step = plan.train.nonzero(as_tuple=True)
    adv = torch.randn(len(traj), generator=torch.Generator().manual_seed(0))
    keep = alg.keep(AdvantageContext.of(ctx, plan, torch.zeros(ctx.num_prompts, ctx.group_size)), traj, step, adv)
    late = step > last
    assert keep[~late].all()
    n, k = int(late.sum()), max(2, int(int(late.sum()) * 0.25))
    kept = adv[keep & late]
    assert len(kept) == k and n > k
    dropped = adv[~keep & late]
    assert kept.max() >= dropped.max() and kept.min() <= dropped.min()
    assert (kept >= dropped.max()).sum() == k // 2 and (kept <= dropped.min()).sum() == k - k // 2
    assert (
        algorithm.build({"name": "branch_grpo"}).keep(
            AdvantageContext.of(ctx, plan, torch.zeros(ctx.num_prompts, ctx.group_size)), traj, step, adv
        )
        is None
    )


def test_split_steps_draw_wider_noise_than_the_law_they_are_scored_under():
    """The reference's split noise (4x at splits, log-probs under the unscaled Gaussian): at the
    first split the centred log-likelihood of the sample is 16 times the unscaled draw's."""
    from grpo_zoo.flow.sde import LOG_SQRT_2PI

    tab = table(6)
    emb = torch.randn(1, 3, 5).repeat_interleave(4, 0)
    logp = {}
    for scale in (1.0, 4.0):
        _, _, plan = plan_of({"split_noise_scale": scale}, tab, 1, 4)
        assert plan.noise_scale[:, [0, 3]].eq(scale).all() and plan.noise_scale[:, [1, 2, 4, 5]].eq(1).all()
        ro = rollout(CountingPolicy(), emb, None, plan, tab, 1.0, torch.Generator().manual_seed(1))
        logp[scale] = ro.logp[:2, 0]  # the two children of the root at split 0
    c = -torch.log(torch.tensor(float(tab.step_std[0]))) - LOG_SQRT_2PI
    assert torch.allclose(logp[4.0] - c, 16 * (logp[1.0] - c), rtol=1e-4)


def test_a_leaf_is_scored_by_its_last_steps_clean_prediction():
    """score: prediction gives each leaf x - sigma v of the last step, which (sigma_next = 0) is
    the Euler step the same leaf would take with that step deterministic."""
    tab = table(6)
    emb = torch.randn(1, 3, 5).repeat_interleave(4, 0)
    _, _, plan = plan_of({}, tab, 1, 4)
    assert plan.score_prediction and plan.sde[:, -1].all() and plan.train[:, -1].all()
    pred = rollout(CountingPolicy(), emb, None, plan, tab, 1.0, torch.Generator().manual_seed(1))
    plan.score_prediction = False
    noisy = rollout(CountingPolicy(), emb, None, plan, tab, 1.0, torch.Generator().manual_seed(1))
    plan.sde[:, -1] = plan.train[:, -1] = False
    plan.weight[:, -1] = 0
    ode = rollout(CountingPolicy(), emb, None, plan, tab, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(pred.latents, ode.latents, atol=1e-6)
    assert not torch.allclose(pred.latents, noisy.latents, atol=1e-3)
    assert torch.equal(pred.transitions.x_next, noisy.transitions.x_next)  # the same samples, trained alike
