"""What the pieces mean, checked against small exact or oracle computations.

Shape tests pass for a loss without its weight or advantages of the wrong sign; these do
not. Each test names the meaning it guards: a group's advantages are centred on its own
mean and point to its better rollouts; the loss gradient of a transition is proportional
to its weight; a Flash-GRPO group explores at one shared step; lambda(t) is the analytic
DESIGN formula and the size of the log-prob gradient; a rollout records exactly the
transitions its plan marks.
"""

import math

import pytest
import torch

from grpo_zoo.core import algorithm
from grpo_zoo.core.advantages import STD_EPS, group_advantages
from grpo_zoo.core.algorithm import Plan, PlanContext
from grpo_zoo.core.loss import normalize_weights, ppo_clip
from grpo_zoo.flow import make_sigmas, sde_step, step_table
from grpo_zoo.flow.sde import transition_mean
from tests import golden

REWARDS = torch.tensor(
    [
        [0.10, 0.40, 0.20, 0.30],  # low rewards
        [10.0, 13.0, 11.0, 10.5],  # another level entirely: its mean would swamp any other group
        [-2.0, -2.0, -1.0, -3.0],
    ]
)


def oracle_advantages(rewards: list[list[float]]) -> list[list[float]]:
    """DESIGN section 2 by hand, in Python floats: (r - group mean) / (group std + 1e-4)."""
    out = []
    for group in rewards:
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out.append([(r - mean) / (std + STD_EPS) for r in group])
    return out


# -- advantages --------------------------------------------------------------------------------
def test_advantages_equal_the_hand_computed_oracle():
    expected = torch.tensor(oracle_advantages(REWARDS.tolist()))
    torch.testing.assert_close(group_advantages(REWARDS, clip=100.0), expected, rtol=1e-6, atol=1e-6)


def test_advantages_point_to_the_better_rollouts_of_each_group():
    adv = group_advantages(REWARDS, clip=100.0)
    centred = REWARDS - REWARDS.mean(1, keepdim=True)
    assert torch.equal(torch.sign(adv), torch.sign(centred))
    assert torch.equal(adv.argmax(1), REWARDS.argmax(1)) and torch.equal(adv.argmin(1), REWARDS.argmin(1))


def test_each_group_is_centred_on_its_own_mean():
    adv = group_advantages(REWARDS, clip=100.0)
    torch.testing.assert_close(adv.sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    # a group's advantages do not depend on the other groups' rewards
    moved = REWARDS.clone()
    moved[1] += 100.0
    moved[2] *= -7.0
    torch.testing.assert_close(group_advantages(moved, clip=100.0)[0], adv[0], rtol=0, atol=0)
    for g in range(len(REWARDS)):  # nor on the order of the groups
        perm = torch.roll(torch.arange(len(REWARDS)), g)
        torch.testing.assert_close(group_advantages(REWARDS[perm], clip=100.0), adv[perm], rtol=0, atol=0)


def test_global_std_still_centres_each_group_on_its_own_mean():
    adv = group_advantages(REWARDS, global_std=True, clip=100.0)
    std = REWARDS.double().std(unbiased=False)
    expected = (REWARDS.double() - REWARDS.double().mean(1, keepdim=True)) / (std + STD_EPS)
    torch.testing.assert_close(adv, expected.float(), rtol=1e-6, atol=1e-6)


# -- the loss ------------------------------------------------------------------------------------
def test_loss_gradient_is_proportional_to_the_weight():
    """On-policy, d policy_i / d logp_i = -A_i * w_i: a transition counts as much as its weight."""
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7])
    weight = torch.tensor([0.1, 0.5, 1.0, 3.0, 7.0])
    logp = torch.randn(5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    per, _ = ppo_clip(logp, logp.detach(), adv, weight, clip_range=0.2)
    torch.testing.assert_close(per, -adv * weight)
    (grad,) = torch.autograd.grad(per.sum(), logp)
    torch.testing.assert_close(grad, -adv * weight)
    # doubling one weight doubles that transition's gradient and leaves the others alone
    w2 = weight.clone()
    w2[3] *= 2
    per2, _ = ppo_clip(logp, logp.detach(), adv, w2, clip_range=0.2)
    (grad2,) = torch.autograd.grad(per2.sum(), logp)
    torch.testing.assert_close(grad2 / grad, torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0]))


def test_loss_gradient_inside_the_trust_region_is_weight_times_ratio():
    adv = torch.tensor([1.0, -1.0, 0.5])
    weight = torch.tensor([0.25, 4.0, 2.0])
    logp_old = torch.zeros(3)
    logp = torch.tensor([0.05, -0.1, 0.02], requires_grad=True)
    per, _ = ppo_clip(logp, logp_old, adv, weight, clip_range=0.2)
    (grad,) = torch.autograd.grad(per.sum(), logp)
    torch.testing.assert_close(grad, -adv * weight * torch.exp(logp.detach()))


def test_rectified_weights_give_every_timestep_the_same_gradient_size():
    """Through weights, normalisation and the log-prob: with Flash-GRPO's raw weights c(k)
    the size of d loss / d v is the same at every k (d log p / d v = -(lambda / D) eps)."""
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    alg = algorithm.build({"name": "flash_grpo", "grouping": "per_sample", "k_range": [0, 9]})
    plan = alg.plan(PlanContext.of(16, 4, table, torch.Generator().manual_seed(0)))
    b, k = plan.train.nonzero().unbind(1)
    raw = plan.weight[b, k]
    w = normalize_weights(raw, float(raw.sum()), len(raw))
    gen = torch.Generator().manual_seed(1)
    shape = (len(k), 3, 2, 4, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = eps / eps.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)  # unit noise: sizes are exact
    with torch.no_grad():
        mean = transition_mean("flow_sde", x, v, table.sigma[k], table.sigma_next[k], table.std_t[k])
        x_next = mean + table.step_std[k].view(-1, 1, 1, 1, 1) * eps
    _, logp, _ = sde_step("flow_sde", x, v, table.sigma[k], table.sigma_next[k], table.std_t[k], x_next=x_next)
    per, _ = ppo_clip(logp, logp.detach(), torch.ones(len(k)), w.float(), clip_range=0.2)
    (grad,) = torch.autograd.grad(per.sum(), v)
    size = grad.flatten(1).norm(dim=1).double()
    assert len(k.unique()) > 5
    torch.testing.assert_close(size, torch.full_like(size, size.mean().item()), rtol=1e-4, atol=0)
    # and the common size is 1 / (D * mean_batch(1/lambda)), the normalisation's constant
    dims = math.prod(shape[1:])
    torch.testing.assert_close(size.mean(), 1 / (dims * raw.mean()), rtol=1e-4, atol=0)


# -- lambda(t) -----------------------------------------------------------------------------------
def design_lambda(sigma: float, sigma_next: float, std_t: float) -> float:
    """DESIGN section 2: lambda_t = sqrt(-dt)/std_t + std_t sqrt(-dt) (1 - sigma) / (2 sigma)."""
    sq = math.sqrt(sigma - sigma_next)
    return sq / std_t + std_t * sq * (1 - sigma) / (2 * sigma)


def design_std(kind: str, j: int, sig: list[float], level: float) -> float:
    """std_t of DESIGN section 2 (flow_sde guards sigma = 1 with 1 - sigma_1, as Flow-GRPO)."""
    if kind == "flow_sde":
        return level * math.sqrt(sig[j] / max(1 - sig[j], 1 - sig[1]))
    return level * (sig[-1] + (sig[1] - sig[-1]) * sig[j])


@pytest.mark.parametrize("kind,level", [("flow_sde", 0.7), ("flow_sde", 0.3), ("wan_linear", 1.0)])
@pytest.mark.parametrize("schedule,steps,shift", [("wan", 10, 3.0), ("flow_match", 20, 5.0), ("wan", 6, 1.0)])
def test_lambda_is_the_design_formula(kind, level, schedule, steps, shift):
    sigmas = make_sigmas(schedule, steps, shift)
    table = step_table(sigmas, kind, level)
    sig = sigmas.double().tolist()
    for j in range(steps):
        std = design_std(kind, j, sig, level)
        assert table.std_t[j].item() == pytest.approx(std, rel=1e-9)
        assert table.lam[j].item() == pytest.approx(design_lambda(sig[j], sig[j + 1], std), rel=1e-9)
        assert table.inv_lam[j].item() == pytest.approx(1 / design_lambda(sig[j], sig[j + 1], std), rel=1e-9)
        row = table.rows()[j]
        assert row["lambda"] * row["inv_lambda"] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("kind", ["flow_sde", "wan_linear", "cps"])
def test_lambda_is_the_log_prob_gradient_size_in_float64(kind):
    """lambda_t = |d mu / d v| / step_std, read off autograd: d log p / d v = -(lambda / D) eps."""
    table = step_table(make_sigmas("wan", 8, 3.0), kind)
    shape = (1, 3, 2, 2, 2)
    dims = math.prod(shape)
    gen = torch.Generator().manual_seed(0)
    for j in range(table.last_noisy_step + 1):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        v = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        # d mu / d v by autograd of the transition mean, against the table's analytic value
        mean = transition_mean(kind, x, v, table.sigma[j], table.sigma_next[j], table.std_t[j])
        (dmu,) = torch.autograd.grad(mean.sum(), v)
        torch.testing.assert_close(dmu, torch.full_like(dmu, table.dmu_dv[j].item()), rtol=1e-10, atol=1e-12)
        lam = abs(table.dmu_dv[j].item()) / table.step_std[j].item()
        assert table.lam[j].item() == pytest.approx(lam, rel=1e-9)
        # the log-prob's gradient at a sampled point: one unit of noise in one element
        eps = torch.zeros(shape, dtype=torch.float64)
        eps.view(-1)[5] = 1.0
        x_next = mean.detach() + table.step_std[j] * eps
        _, logp, _ = sde_step(kind, x, v, table.sigma[j], table.sigma_next[j], table.std_t[j], x_next=x_next)
        (g,) = torch.autograd.grad(logp.sum(), v)
        assert g.view(-1)[5].item() == pytest.approx(-table.lam[j].item() / dims, rel=1e-4)


# -- plans: Flash-GRPO's grouping ------------------------------------------------------------
@pytest.fixture(scope="module")
def table():
    return step_table(make_sigmas("wan", 10, 3.0), "flow_sde")


def flash_steps(table, grouping: str, seed: int, p: int = 8, g: int = 4) -> torch.Tensor:
    plan = algorithm.build({"name": "flash_grpo", "grouping": grouping}).plan(
        PlanContext.of(p, g, table, torch.Generator().manual_seed(seed))
    )
    plan.check(table)
    assert (plan.train.sum(1) == 1).all()
    return plan.train.float().argmax(1).view(p, g)


def test_iso_temporal_group_explores_at_one_step_and_prompts_draw_their_own(table):
    ks = torch.stack([flash_steps(table, "iso_temporal", seed) for seed in range(10)])  # [seed, P, G]
    assert (ks == ks[..., :1]).all(), "a group's rollouts explore at different steps"
    per_prompt = ks[..., 0]
    assert all(len(row.unique()) > 1 for row in per_prompt), "the prompts of an iteration share one k"
    assert per_prompt.unique().tolist() == list(range(5))  # every step of the first half (the reference's rule)


def test_per_sample_ablation_draws_k_per_trajectory(table):
    ks = torch.stack([flash_steps(table, "per_sample", seed) for seed in range(10)])
    spread = (ks != ks[..., :1]).any(-1).double().mean()
    assert spread > 0.8  # with 10 steps, 4 rollouts share one k with probability 1e-3


# -- rollouts record exactly the marked transitions ----------------------------------------------
@pytest.fixture(scope="module")
def policy():
    from grpo_zoo.config.run import ModelConfig
    from grpo_zoo.models import load_policy

    torch.manual_seed(0)
    return load_policy(ModelConfig(backend="toy", path="toy-base", lora_rank=0)).eval()


def test_rollout_records_only_the_transitions_the_plan_marks(policy):
    """Every step is stochastic, a random subset is trained: exactly that subset is recorded,
    with the plan's weights and the log-prob of the recorded step under the sampling policy."""
    from grpo_zoo.training.rollout import rollout

    table = step_table(make_sigmas("wan", 5, 3.0), "flow_sde")
    b, t, g = 4, table.num_steps, 2
    gen = torch.Generator().manual_seed(3)
    sde = torch.ones(b, t, dtype=torch.bool)
    train = torch.rand(b, t, generator=gen) < 0.4
    train[0, :] = False  # a trajectory with no trained step
    train[1, 2] = True
    weight = torch.where(train, torch.rand(b, t, generator=gen, dtype=torch.float64) + 0.5, 0.0)
    plan = Plan(sde=sde, train=train, weight=weight, group_size=g)
    plan.check(table)
    emb = policy.encode(["a red circle moving left", "a blue square moving up"]).repeat_interleave(g, 0)
    ro = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(0))
    tr = ro.transitions
    recorded = list(zip(tr.traj.tolist(), tr.step.tolist()))
    assert recorded == plan.trained_steps()
    torch.testing.assert_close(tr.weight, plan.weight[plan.train])
    with torch.no_grad():
        sigma = table.sigma[tr.step].float()
        v = policy.velocity(tr.x, sigma, emb[tr.traj], None, 1.0).float()
        _, logp, _ = sde_step(
            table.kind, tr.x, v, table.sigma[tr.step], table.sigma_next[tr.step], table.std_t[tr.step], x_next=tr.x_next
        )
    torch.testing.assert_close(logp, tr.logp_old, rtol=1e-5, atol=1e-5)


def test_flow_grpo_rollout_trains_its_fraction_although_every_step_explores(policy):
    from grpo_zoo.training.rollout import rollout

    table = step_table(make_sigmas("wan", 6, 3.0), "flow_sde")
    plan = algorithm.build({"name": "flow_grpo", "timestep_fraction": 0.5}).plan(
        PlanContext.of(1, 2, table, torch.Generator().manual_seed(0))
    )
    assert plan.sde.all()
    emb = policy.encode(["a green triangle moving right"]).repeat_interleave(2, 0)
    ro = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(0))
    assert sorted(set(ro.transitions.step.tolist())) == [0, 1, 2]
    assert len(ro.transitions) == 2 * 3


@pytest.mark.parametrize("variant", list(golden.variants()))
def test_every_registered_algorithm_trains_only_what_its_plan_marks(policy, variant):
    from grpo_zoo.training.rollout import rollout

    table = step_table(make_sigmas("wan", 4, 3.0), "flow_sde")
    plan = algorithm.build(golden.split(golden.variants()[variant])[0]).plan(
        PlanContext.of(2, 2, table, torch.Generator().manual_seed(1))
    )
    emb = policy.encode(["a red circle moving left", "a yellow star moving down"]).repeat_interleave(2, 0)
    tr = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(0)).transitions
    assert list(zip(tr.traj.tolist(), tr.step.tolist())) == plan.trained_steps()
    torch.testing.assert_close(tr.weight, plan.weight[plan.train])
