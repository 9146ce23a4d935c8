"""DanceGRPO's plan: which steps are SDE, which train, the shared initial noise, its noise kind."""

import math

import pytest
import torch

from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import build, load_config_file
from grpo_zoo.core import algorithm
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.training.rollout import rollout

from .helpers import ROOT

P, G = 3, 4


def plan_for(cfg: dict, steps: int = 10, kind: str = "flow_sde", seed: int = 0, iteration: int = 0):
    table = step_table(make_sigmas("wan", steps, 3.0), kind)
    alg = algorithm.build({"name": "dance_grpo", **cfg})
    alg.check(table, G)
    plan = alg.plan(PlanContext.of(P, G, table, torch.Generator().manual_seed(seed), iteration=iteration))
    plan.check(table)
    return plan, table


@pytest.mark.parametrize("kind", ["flow_sde", "constant", "cps"])
@pytest.mark.parametrize("steps", [4, 6, 10, 16])
def test_every_step_but_the_last_is_sde_and_each_row_trains_its_own_fraction(kind, steps):
    plan, _ = plan_for({}, steps, kind)
    assert plan.sde[:, : steps - 1].all() and not plan.sde[:, -1].any()
    n = math.floor((steps - 1) * 0.6)  # the reference: int(len(steps without the last) * fraction)
    assert (plan.train.sum(1) == n).all()
    assert not plan.train[:, -1].any()
    assert (plan.weight[plan.train] == 1).all() and (plan.weight[~plan.train] == 0).all()


def test_subsets_are_drawn_per_trajectory_and_per_iteration():
    """The reference draws one permutation per sample: rows of one group train different steps."""
    plans = [plan_for({}, 16, seed=s)[0] for s in range(20)]
    first = plans[0].train
    assert len({tuple(r) for r in first.int().tolist()}) > P * G // 2  # rows differ, within groups too
    assert any(len({tuple(r) for r in grp.int().tolist()}) > 1 for grp in first.view(P, G, -1))
    assert not all(torch.equal(p.train, first) for p in plans[1:])  # a fresh draw every iteration
    again = plan_for({}, 16, seed=0)[0]
    assert torch.equal(again.train, first)  # ... from the iteration's generator only
    # uniform over steps 0..14: each trained with probability floor(15 * 0.6) / 15 = 0.6
    share = torch.stack([p.train for p in plans]).double().mean((0, 1))
    assert (share[:15] - 0.6).abs().max() < 0.12 and share[15] == 0


def test_group_shares_its_initial_noise_by_default():
    plan, _ = plan_for({})
    leaders = torch.arange(P * G) - torch.arange(P * G) % G
    assert torch.equal(plan.parent, leaders) and (plan.branch_at == 0).all() and plan.shared_noise
    indep, _ = plan_for({"initial_noise": "independent"})
    assert not indep.shared_noise


class ToyPolicy(torch.nn.Module):
    latent_shape = (3, 2, 4, 4)

    def velocity(self, x, sigma, emb, null_emb, guidance):
        return torch.tanh(x * 0.5 + emb.mean((1, 2)).view(-1, 1, 1, 1, 1) + sigma.view(-1, 1, 1, 1, 1))


def test_rollout_shares_x0_and_the_first_velocity_then_every_row_explores():
    plan, table = plan_for({}, 6, "constant")
    emb = torch.randn(P, 3, 5).repeat_interleave(G, 0)
    ro = rollout(ToyPolicy(), emb, None, plan, table, 1.0, torch.Generator().manual_seed(0))
    t = table.num_steps
    assert ro.nfe == P * G * t - P * (G - 1)  # the group's velocity at step 0 runs once
    tr = ro.transitions
    assert len(tr) == P * G * 3 and torch.equal(plan.train.nonzero()[:, 0], tr.traj)
    at0 = tr.step == 0
    for p in range(P):  # rows of a group that train step 0 start it from one x_0
        xs = tr.x[at0 & (tr.traj // G == p)]
        assert all(torch.equal(x, xs[0]) for x in xs)
    finals = ro.latents.view(P, G, -1)
    assert all(len({tuple(f.tolist()) for f in grp}) == G for grp in finals)  # each row ends elsewhere


def test_constant_noise_is_dance_grpos_and_the_experiment_selects_it():
    table = step_table(make_sigmas("wan", 16, 3.0), "constant")
    torch.testing.assert_close(table.step_std, 0.3 * (-table.dt).sqrt())  # eta * sqrt(delta_t), eta 0.3
    data = load_config_file(str(ROOT / "experiments/toy/dance_grpo.yaml"))
    cfg = build(RunConfig, data)
    assert cfg.algorithm.name == "dance_grpo" and cfg.sampling.noise == "constant"
    assert cfg.sampling.noise_level in (None, 0.3)


def test_short_schedules_and_bad_values():
    plan, _ = plan_for({}, 2)  # one trainable step: floor(1 * 0.6) = 0 is clamped to one
    assert plan.train[:, 0].all() and plan.train.sum() == P * G
    table = step_table(make_sigmas("wan", 1, 3.0), "flow_sde")
    with pytest.raises(ConfigError, match="timestep_fraction: DanceGRPO trains noisy steps before the last"):
        algorithm.build({"name": "dance_grpo"}).check(table, G)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="timestep_fraction"):
            build(algorithm.AlgorithmConfig, {"name": "dance_grpo", "timestep_fraction": bad}, "algorithm")


def test_per_reward_losses_are_clipped_each_and_then_summed():
    """sum_k max(-A_k r, -A_k clip(r)) is not max(-(sum_k A_k) r, ...): the reference's form."""
    from grpo_zoo.core.loss import ppo_clip

    logp_old = torch.zeros(3)
    logp = torch.log(torch.tensor([1.5, 0.6, 1.0]))  # outside, outside, inside a 0.2 clip range
    adv = torch.tensor([[1.0, -2.0], [-1.0, 0.5], [0.3, 0.3]])
    w = torch.ones(3)
    per, _ = ppo_clip(logp, logp_old, adv, w, 0.2)
    each = sum(ppo_clip(logp, logp_old, adv[:, k], w, 0.2)[0] for k in range(2))
    assert torch.allclose(per, each)
    summed, _ = ppo_clip(logp, logp_old, adv.sum(1), w, 0.2)
    assert not torch.allclose(per[:2], summed[:2]) and torch.allclose(per[2], summed[2])
