"""Several weighted rewards (`reward.name: {entry: weight}`) and the three aggregation rules,
each stated against its reference's formula and run through the trainer."""

import math

import pytest
import torch

from grpo_zoo import rewards
from grpo_zoo.config.run import RewardConfig
from grpo_zoo.config.schema import build
from grpo_zoo.core import algorithm
from grpo_zoo.core.advantages import aggregate, group_advantages
from grpo_zoo.core.algorithm import PlanContext
from grpo_zoo.core.contract import AdvantageContext
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.rewards.weighted import WEIGHTED, WeightedReward

from .helpers import run_config, train

P, G = 3, 4


@pytest.fixture
def table():
    return step_table(make_sigmas("wan", 10, 3.0), "flow_sde")


def scored(name: str, table, entries=("r", "a", "b"), seed: int = 1, **kw):
    alg = algorithm.build({"name": name})
    ctx = PlanContext.of(P, G, table, torch.Generator().manual_seed(0))
    plan = alg.plan(ctx)
    gen = torch.Generator().manual_seed(seed)
    batch = {e: torch.randn(P, G, generator=gen) for e in entries}
    actx = AdvantageContext.of(ctx, plan, batch, reward=entries[0], **kw)
    traj, step = plan.train.nonzero().unbind(1)
    return alg, actx, traj, step, batch


def test_advantages_rule_is_mixgrpo_advantage_aggr(table):
    """MixGRPO's advantage_aggr (fastvideo/train_grpo_flux.py:448-455, 567, 767) re-stated on
    numbers: each reward's group advantage (torch .std() + 1e-8), weights normalised to sum 1,
    summed, clamped to +-5 once."""
    alg, ctx, traj, step, batch = scored("mix_grpo", table, adv_std="unbiased", adv_eps=1e-8)
    batch["b"][0] = torch.tensor([0.0, 0.0, 0.0, 40.0])  # an outlier group: the clamp acts on the sum
    got = aggregate(alg, ctx, traj, step, {"a": 1.0, "b": 0.5}, "advantages")

    def norm(r):
        return (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-8)

    expected = (norm(batch["a"].double()) * (1 / 1.5) + norm(batch["b"].double()) * (0.5 / 1.5)).clamp(-5, 5)
    torch.testing.assert_close(got, expected.float().flatten()[traj], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(aggregate(alg, ctx, traj, step, None, "advantages"), got)


def test_losses_rule_is_one_column_per_reward_each_clipped(table):
    """DanceGRPO's vq / mq advantages (fastvideo/train_grpo_hunyuan.py:443-477): each reward
    normalised within the group on its own and clipped, one column per reward, times its coefficient."""
    alg, ctx, traj, step, batch = scored("dance_grpo", table)
    batch["a"][1] = torch.tensor([0.0, 0.0, 0.0, 1e3])
    adv = aggregate(alg, ctx, traj, step, {"a": 1.0, "b": 0.5}, "losses")
    assert adv.shape == (len(traj), 2)
    assert torch.allclose(adv[:, 0], group_advantages(batch["a"]).flatten()[traj])
    assert torch.allclose(adv[:, 1], 0.5 * group_advantages(batch["b"]).flatten()[traj])


@pytest.mark.parametrize("name", ["flow_grpo", "tempflow_grpo", "branch_grpo", "grpo_guard", "flash_grpo"])
def test_each_entry_takes_the_algorithms_own_advantage_rule(table, name):
    """One entry of weight w: `advantages` is the algorithm's own advantage of that entry (the
    weight normalised away), `losses` is w times it, `sum` is the training entry's; the rule
    wraps whatever the algorithm computes (per-branch groups, per-node groups), it does not
    replace it."""
    alg, ctx, traj, step, batch = scored(name, table, entries=("r", "a"))
    own = alg.advantages(AdvantageContext.of(*_plan_ctx(alg, table), batch, reward="a"), traj, step)
    torch.testing.assert_close(aggregate(alg, ctx, traj, step, {"a": 3.0}, "advantages"), own)
    torch.testing.assert_close(aggregate(alg, ctx, traj, step, {"a": 3.0}, "losses")[:, 0], 3.0 * own)
    torch.testing.assert_close(aggregate(alg, ctx, traj, step, {"a": 3.0}, "sum"), alg.advantages(ctx, traj, step))


def _plan_ctx(alg, table):
    ctx = PlanContext.of(P, G, table, torch.Generator().manual_seed(0))
    return ctx, alg.plan(ctx)


def test_weighted_reward_sums_the_weighted_entries_and_calls_a_reward_once():
    """`weighted` = sum_k w_k r_k (Flow-GRPO's multi_score, unnormalised); the toy rewards all
    give every toy entry, so the second is not called again."""
    calls = []

    def counted(name):
        inner = rewards.get(name)

        def fn(videos, prompts):
            calls.append(name)
            return inner(videos, prompts)

        return fn

    weights = {"toy_motion": 2.0, "toy_still": 0.5}
    reward = WeightedReward(weights, {n: counted(n) for n in weights})
    videos = torch.rand(3, 3, 4, 16, 16) * 2 - 1
    prompts = ["a red circle moving right"] * 3
    out = reward(videos, prompts)
    assert calls == ["toy_motion"]
    torch.testing.assert_close(out[WEIGHTED], 2.0 * out["toy_motion"] + 0.5 * out["toy_still"])
    assert {"toy_hps", "toy_prompt", "toy_aesthetic"} <= set(out)


def test_an_entry_resolves_to_the_reward_that_declares_it():
    cfg = build(RewardConfig, {"name": {"hpsv3_frame_mean": 1.0, "toy_still": 1}}, "reward")
    from grpo_zoo.rewards.weighted import resolve

    assert resolve(cfg.weights) == {"hpsv3": ["hpsv3_frame_mean"], "toy_still": ["toy_still"]}
    assert cfg.entry == WEIGHTED and cfg.weights == {"hpsv3_frame_mean": 1.0, "toy_still": 1.0}


@pytest.mark.parametrize(
    ("alg", "rule"), [("dance_grpo", "losses"), ("mix_grpo", "advantages"), ("flow_grpo", "sum"), ("awm", "sum")]
)
def test_each_algorithm_declares_its_references_rule_and_the_experiment_overrides_it(alg, rule):
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import apply_overrides, load_config_file

    def resolved(*changes):
        return build(RunConfig, apply_overrides(load_config_file("experiments/toy/base.yaml"), list(changes)))

    assert resolved(f"algorithm.name={alg}", "reward.name={toy_motion: 1, toy_still: 1}").reward.aggregate == rule
    other = "sum" if rule != "sum" else "advantages"
    assert resolved(f"algorithm.name={alg}", f"reward.aggregate={other}").reward.aggregate == other


@pytest.mark.parametrize(("alg", "rule"), [("dance_grpo", "losses"), ("mix_grpo", "advantages"), ("flow_grpo", "sum")])
def test_a_weighted_pair_trains_and_logs_every_component(tmp_path, alg, rule):
    weights = {"toy_motion": 1.0, "toy_still": 0.5}
    cfg = run_config(tmp_path, alg, {"name": alg, "reward.name": weights, "reward.aggregate": rule}, 1)
    rows = train(cfg)
    tr = [r for r in rows if r["kind"] == "train"][0]
    ev = [r for r in rows if r["kind"] == "eval"]
    assert math.isfinite(tr["loss/policy"])
    assert {"reward/toy_motion", "reward/toy_still"} <= set(tr)
    # the training reward is the weighted sum of its components, batch means included
    assert tr["reward/mean"] == pytest.approx(tr["reward/toy_motion"] + 0.5 * tr["reward/toy_still"], rel=1e-5)
    assert ev[-1]["eval/reward"] == pytest.approx(ev[-1]["eval/toy_motion"] + 0.5 * ev[-1]["eval/toy_still"], rel=1e-5)
    single = [r for r in train(run_config(tmp_path, alg + "1", {"name": alg}, 1)) if r["kind"] == "train"][0]
    assert tr["loss/policy"] != single["loss/policy"]
