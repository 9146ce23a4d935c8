"""The algorithm seam: plans from a context, algorithm state across resumes, branching
rollouts (each shared prefix computed once), and objectives as plug-ins.

Algorithms that exist only to exercise the seam are defined here and registered for the
length of one test (the registry is restored after), so tests that enumerate the registry
never see them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from grpo_zoo.core import algorithm
from grpo_zoo.core import objective as objectives
from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, Plan, PlanContext
from grpo_zoo.core.contract import AdvantageContext
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.runs import RunDir
from grpo_zoo.training.rollout import rollout

from .helpers import ROOT, TINY_INPROCESS, CountingPolicy, install_plugin, overrides, readme_block, run_config, train


@pytest.fixture
def table():
    return step_table(make_sigmas("wan", 10, 3.0), "flow_sde")


@pytest.fixture
def registered():
    """Register test-only algorithms for one test; the registry is restored afterwards."""
    before = dict(algorithm._REGISTRY)
    yield lambda name: algorithm.register(name)
    algorithm._REGISTRY.clear()
    algorithm._REGISTRY.update(before)


# -- plans from a context ----------------------------------------------------------------
def test_mix_grpo_window_moves_with_the_iteration_and_rolls_back(table):
    alg = algorithm.build({"name": "mix_grpo", "window": 2, "shift_every": 3, "timestep_fraction": 0.6})
    starts = []
    for it in range(20):
        plan = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0), iteration=it))
        plan.check(table)
        sde = plan.sde[0].nonzero().flatten().tolist()
        assert sde == list(range(sde[0], sde[0] + 2)) and torch.equal(plan.train, plan.sde)
        assert (plan.sde == plan.sde[0]).all()  # every trajectory explores the same window
        starts.append(sde[0])
    # 6 trainable steps, a window of 2: starts 0..4, each for 3 iterations, then back to 0
    assert starts == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3 + [0] * 3 + [1] * 2
    assert plan.shared_noise  # the reference starts a group from one noise


def test_mix_grpo_window_slides_over_the_references_domain(table):
    """The reference's GRPOTrainingStates (progressive, roll_back, max_timesteps = T - 2): the
    window at start c is c .. min(c + w, T - 2) - 1, shrinking at the end, empty at c = T - 2,
    then back to 0. At T = 10, w = 4, one move per iteration:"""
    alg = algorithm.build({"name": "mix_grpo", "shift_every": 1})
    windows = []
    for it in range(11):
        plan = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0), iteration=it))
        plan.check(table)
        assert torch.equal(plan.train, plan.sde) and (plan.sde == plan.sde[0]).all()
        windows.append(plan.sde[0].nonzero().flatten().tolist())
    assert windows == [
        [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7], [6, 7], [7], [],
        [0, 1, 2, 3], [1, 2, 3, 4],
    ]  # fmt: skip
    two = algorithm.build({"name": "mix_grpo", "shift_every": 2, "shift": 3})  # starts 0, 3, 6, then back
    starts = [next(iter(two.steps(it, table)), None) for it in range(8)]
    assert starts == [0, 0, 3, 3, 6, 6, 0, 0]


def test_plan_is_a_function_of_the_context_not_of_calls(table):
    """estimate.py and tools may call plan() repeatedly: it must not advance anything."""
    alg = algorithm.build({"name": "mix_grpo", "shift_every": 1})
    first = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0), iteration=5))
    for _ in range(3):
        again = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0), iteration=5))
        assert torch.equal(first.sde, again.sde)


@pytest.mark.slow
def test_mix_grpo_resumed_run_plans_exactly_as_an_uninterrupted_one(tmp_path):
    alg = {"name": "mix_grpo", "window": 2, "shift_every": 1}
    ref = train(run_config(tmp_path, "ref", alg, 4))
    train(run_config(tmp_path, "split", alg, 2))  # stops at step 2 (a checkpoint) ...
    resumed = train(run_config(tmp_path, "split", alg, 4))  # ... and goes on to 4
    assert resumed == ref
    grads = [sorted(k for k in r if k.startswith("grad_t/")) for r in ref if r["kind"] == "train"]
    # 6 steps: the window of 2 slides over the reference's domain 0..3 (T - 2 = 4), one step per iteration
    assert grads == [["grad_t/00", "grad_t/01"], ["grad_t/01", "grad_t/02"], ["grad_t/02", "grad_t/03"], ["grad_t/03"]]


@dataclass
class CountingConfig(AlgorithmConfig):
    name: str = "counting"


class Counting(Algorithm):
    """Trains step (number of plans made so far) mod 3: state that only a checkpoint keeps."""

    Config = CountingConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.made = 0

    def trainable_steps(self, table) -> range:
        return range(3)

    def plan(self, ctx: PlanContext) -> Plan:
        sde = self.empty(ctx)
        sde[:, self.made % 3] = True
        self.made += 1
        return self.make_plan(ctx, sde)

    def state_dict(self) -> dict:
        return {"made": self.made}

    def load_state_dict(self, state: dict) -> None:
        self.made = state.get("made", 0)


@pytest.mark.slow
def test_algorithm_state_is_saved_and_restored_with_the_checkpoint(tmp_path, registered):
    registered("counting")(Counting)
    ref = train(run_config(tmp_path, "ref", {"name": "counting"}, 4))
    train(run_config(tmp_path, "split", {"name": "counting"}, 2))
    assert train(run_config(tmp_path, "split", {"name": "counting"}, 4)) == ref
    trained = [next(k for k in r if k.startswith("grad_t/")) for r in ref if r["kind"] == "train"]
    assert trained == ["grad_t/00", "grad_t/01", "grad_t/02", "grad_t/00"]


# -- branching rollouts ------------------------------------------------------------------
@dataclass
class BranchingConfig(AlgorithmConfig):
    name: str = "branching"
    branch_steps: list[int] | None = None
    """Steps at which K children leave the ODE backbone with one SDE step."""
    children: int = 2


class Branching(Algorithm):
    """TempFlow-GRPO's shape: per prompt one ODE backbone (row 0 of the group); at each branch
    step K children leave it with one SDE step, then follow the ODE; each branch step forms
    its own advantage group. Group size = 1 + K * len(branch_steps)."""

    Config = BranchingConfig

    def trainable_steps(self, table) -> range:
        return range(max(self.cfg.branch_steps) + 1)

    def plan(self, ctx: PlanContext) -> Plan:
        g, steps, k = ctx.group_size, self.cfg.branch_steps, self.cfg.children
        assert g == 1 + k * len(steps)
        sde, parent = self.empty(ctx), torch.arange(ctx.batch_size)
        branch_at = torch.zeros(ctx.batch_size, dtype=torch.long)
        group = torch.full(sde.shape, -1, dtype=torch.long)
        for p in range(ctx.num_prompts):
            backbone = p * g
            for i, s in enumerate(steps):
                for c in range(k):
                    row = backbone + 1 + i * k + c
                    parent[row], branch_at[row] = backbone, s
                    sde[row, s] = True
                    group[row, s] = p * len(steps) + i
        return self.make_plan(ctx, sde, parent=parent, branch_at=branch_at, group=group)


def test_branching_plan_computes_each_shared_prefix_once(table, registered):
    registered("branching")(Branching)
    alg = algorithm.build({"name": "branching", "branch_steps": [0, 2, 4], "children": 2})
    ctx = PlanContext.of(2, 7, table, torch.Generator().manual_seed(0))
    plan = alg.plan(ctx)
    plan.check(table)
    policy, t = CountingPolicy(), table.num_steps
    emb = torch.randn(2, 3, 5).repeat_interleave(7, 0)
    ro = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(1))
    # backbone: T forwards; a child branching at s shares the velocity at s: T - s - 1 forwards
    expected = 2 * (t + 2 * sum(t - s - 1 for s in (0, 2, 4)))
    assert ro.nfe == expected == policy.rows == int(plan.forward_rows().sum())
    # each trained transition is the child's own SDE step at its branch step, from the backbone's state
    assert len(ro.transitions) == 2 * 6
    again = rollout(CountingPolicy(), emb, None, plan, table, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(ro.latents, again.latents)
    rows = torch.arange(14).view(2, 7)
    for s_i, s in enumerate((0, 2, 4)):
        kids = rows[:, 1 + 2 * s_i : 3 + 2 * s_i].flatten()
        sel = torch.isin(ro.transitions.traj, kids)
        assert (ro.transitions.step[sel] == s).all()
        backbone_x = ro.transitions.x[sel].view(2, 2, -1)
        assert torch.equal(backbone_x[:, 0], backbone_x[:, 1])  # siblings start from one state
        assert not torch.equal(ro.latents[kids[0]], ro.latents[kids[1]])  # and end apart


def test_tree_of_depth_two_shares_both_prefixes(table):
    """Row 1 branches from row 0 at step 2; rows 2 and 3 branch from row 1 at step 5."""
    sde = torch.zeros(4, table.num_steps, dtype=torch.bool)
    sde[1:, 2] = True  # rows 2, 3 share row 1's SDE step at 2 (inside their prefix)
    sde[2:, 5] = True
    train = torch.zeros_like(sde)
    train[1, 2] = train[2, 5] = train[3, 5] = True
    plan = Plan(sde=sde, train=train, weight=train.double(), group_size=4,
                parent=torch.tensor([0, 0, 1, 1]), branch_at=torch.tensor([0, 2, 5, 5]))  # fmt: skip
    plan.check(table)
    policy, t = CountingPolicy(), table.num_steps
    ro = rollout(policy, torch.randn(4, 3, 5), None, plan, table, 1.0, torch.Generator().manual_seed(0))
    assert ro.nfe == t + (t - 3) + 2 * (t - 6) == policy.rows
    x_at_5 = ro.transitions.x[ro.transitions.step == 5]
    assert torch.equal(x_at_5[0], x_at_5[1])  # both grandchildren start step 5 from row 1's state
    bad = Plan(sde=sde, train=sde.clone(), weight=sde.double(), group_size=4,
               parent=torch.tensor([0, 0, 1, 1]), branch_at=torch.tensor([0, 2, 5, 5]))  # fmt: skip
    with pytest.raises(ValueError, match="shares"):
        bad.check(table)  # rows 2 and 3 would train row 1's step 2 again


def test_shared_noise_is_the_one_level_tree_and_saves_forwards(table):
    for name in ("flash_grpo", "flow_grpo_fast"):
        shared = algorithm.build({"name": name, "initial_noise": "shared"})
        indep = algorithm.build({"name": name})
        ps = shared.plan(PlanContext.of(3, 4, table, torch.Generator().manual_seed(2)))
        pi = indep.plan(PlanContext.of(3, 4, table, torch.Generator().manual_seed(2)))
        assert torch.equal(ps.sde, pi.sde) and ps.shared_noise and not pi.shared_noise
        assert int(ps.forward_rows().sum()) < int(pi.forward_rows().sum())


def test_advantages_per_branch_group(table, registered):
    registered("branching")(Branching)
    alg = algorithm.build({"name": "branching", "branch_steps": [1, 3], "children": 2})
    ctx = PlanContext.of(2, 5, table, torch.Generator().manual_seed(0))
    plan = alg.plan(ctx)
    traj, step = plan.train.nonzero(as_tuple=True)
    rewards = torch.arange(10, dtype=torch.float32).view(2, 5) ** 2
    adv = alg.advantages(AdvantageContext.of(ctx, plan, rewards), traj, step)
    # each branch step's two children form a group: advantages are -1, +1 within each pair
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0] * 4), atol=1e-3)


# -- objectives as plug-ins --------------------------------------------------------------
def make_objective_algorithm(registered, objective: str, paired: bool = True, **fields):
    """A plugin algorithm training with `objective`; its config extends the objective's own
    (`Objective.Config`) unless `paired` is False."""
    own = objectives.get(objective).Config
    base = own if paired and own is not object else AlgorithmConfig

    @dataclass
    class Cfg(base):
        name: str = f"with_{objective}"
        timesteps: int = 2

    class WithObjective(Algorithm):
        Config = Cfg

        def trainable_steps(self, table) -> range:
            return range(3)

        def plan(self, ctx: PlanContext) -> Plan:
            sde = self.empty(ctx)
            if self.objective != "nft":
                sde[:, :3] = True
            return self.make_plan(ctx, sde)

    WithObjective.objective = objective
    registered(f"with_{objective}")(WithObjective)
    return {"name": f"with_{objective}", **fields}


def test_an_objective_paired_with_a_config_it_cannot_read_is_refused_before_any_compute(tmp_path, registered):
    alg = make_objective_algorithm(registered, "nft", paired=False)
    with pytest.raises(ConfigError, match=r"^algorithm.name: objective 'nft' reads the fields of DiffusionNFTConfig"):
        train(run_config(tmp_path, "unpaired", alg, 1))
    assert not (tmp_path / "unpaired").exists()


@pytest.mark.parametrize("objective", ["ratio_norm_clip", "nft"])
def test_objective_plugins_train_and_count_what_they_ran(tmp_path, registered, objective):
    alg = make_objective_algorithm(registered, objective)
    rows = [r for r in train(run_config(tmp_path, objective, alg, 2)) if r["kind"] == "train"]
    b, t = 2 * 4, 6
    for r in rows:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss/policy", "stats/grad_norm"))
        assert r["stats/grad_norm"] > 0
    first = rows[0]
    if objective == "nft":  # ODE rollouts, then 2 re-noised points per sample: old + new forward, one backward
        items = b * 2
        assert first["stats/transitions"] == items
        assert first["compute/nfe"] == b * t + 2 * items and first["compute/backward"] == items
    else:
        assert first["stats/transitions"] == b * 3 and first["compute/backward"] == b * 3
        assert first["stats/ratio_dev_first_minibatch"] < 1e-5  # normalised ratio is 1 on-policy


@pytest.mark.parametrize("alg", [{"name": "flash_grpo"}, {"name": "awm"}])
def test_estimate_prices_a_toy_run_as_its_meter_counts_it(tmp_path, alg, capsys):
    """`python -m grpo_zoo.estimate` on a toy config: the FLOPs it prices for the first
    iteration (from the same plan, the objective's declared passes) are what the meter counts."""
    import json

    import yaml

    from grpo_zoo.config.schema import to_dict
    from grpo_zoo.estimate import main as estimate

    cfg = run_config(tmp_path, "run", alg, 1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert estimate([str(path), "--gpus", "1", "--plans", "1", "--format", "json"]) == 0
    priced = json.loads(capsys.readouterr().out)[0]
    rows = train(cfg)
    spent = rows[-2]["compute/flops"] - rows[0]["compute/flops"]  # the first iteration (after the first evaluation)
    assert [r["kind"] for r in rows] == ["eval", "train", "eval"]
    assert priced["flops_per_iteration"] == pytest.approx(spent, rel=1e-9)


def test_pruning_by_advantage_trains_and_counts_only_what_it_keeps(tmp_path):
    """BranchGRPO's best_worst width pruning (Algorithm.keep): the pruned transitions run no
    forward and no backward, and the counters say so."""
    full = [r for r in train(run_config(tmp_path, "full", {"name": "branch_grpo"}, 1)) if r["kind"] == "train"]
    alg = {"name": "branch_grpo", "width_pruning": "best_worst", "width_ratio": 0.5}
    kept = [r for r in train(run_config(tmp_path, "kept", alg, 1)) if r["kind"] == "train"]
    # G = 4 leaves on 6 steps split at 0 and 3: 4 leaves x 2 steps after the last split per prompt
    late = 2 * 4 * 2
    assert kept[0]["stats/transitions"] == full[0]["stats/transitions"] - late // 2
    assert kept[0]["compute/backward"] == full[0]["compute/backward"] - late // 2
    assert kept[0]["compute/nfe"] == full[0]["compute/nfe"] - late // 2


def test_several_rewards_and_granularities_train_through_the_trainer(tmp_path):
    """DanceGRPO's per-reward advantages reach the loss as [N, K]; G2RPO's coarse rows add
    forwards but no trained transition."""
    rows = train(
        run_config(
            tmp_path, "dance", {"name": "dance_grpo", "reward.name": {"toy_motion": 1.0, "toy_aesthetic": 0.5}}, 1
        )
    )
    one = [r for r in rows if r["kind"] == "train"][0]
    base = train(run_config(tmp_path, "dance1", {"name": "dance_grpo"}, 1))
    assert one["loss/policy"] != [r for r in base if r["kind"] == "train"][0]["loss/policy"]
    fine = [
        r for r in train(run_config(tmp_path, "g1", {"name": "g2rpo", "granularities": [1]}, 1)) if r["kind"] == "train"
    ]
    two = [r for r in train(run_config(tmp_path, "g2", {"name": "g2rpo"}, 1)) if r["kind"] == "train"]
    assert two[0]["stats/transitions"] == fine[0]["stats/transitions"] / 2  # 2 draws x 2 granularities per group
    assert fine[0]["compute/nfe"] > two[0]["compute/nfe"] > fine[0]["compute/nfe"] / 2


def test_nft_gradient_vanishes_at_the_old_policy_with_zero_advantage():
    from grpo_zoo.algorithms.diffusion_nft import NFTObjective as NFT

    from grpo_zoo.core.contract import Batch, ReNoised
    from grpo_zoo.core.objective import Runtime

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.7))

        def velocity(self, x, sigma, emb, null, guidance):
            return self.w * x

    pol = Lin()

    cfg = algorithm.build({"name": "diffusion_nft", "nft_beta": 1.0}).cfg
    optim = type("O", (), {"beta": 0.0})()
    obj = NFT(cfg, optim, type("S", (), {"guidance": 1.0})(), None, Runtime(pol, None, torch.float32, "cpu"))
    x = torch.randn(4, 3, 2, 2, 2)
    items = ReNoised(traj=torch.arange(4), step=torch.full((4,), -1), x_t=x, x0=torch.randn_like(x),
                     weight=torch.ones(4, dtype=torch.float64), aux=(0.7 * x).detach(),
                     t=torch.rand(4, dtype=torch.float64))  # fmt: skip
    terms = obj.loss(Batch(items, torch.zeros(4), torch.ones(4), torch.zeros(4, 1, 1)))
    terms.per.sum().backward()
    assert abs(float(pol.w.grad)) < 1e-6
    pol.w.grad = None
    terms = obj.loss(Batch(items, torch.ones(4), torch.ones(4), torch.zeros(4, 1, 1)))
    terms.per.sum().backward()
    assert abs(float(pol.w.grad)) > 1e-3  # a positive advantage pulls toward the samples


@dataclass
class CurriculumConfig(AlgorithmConfig):
    name: str = "curriculum"


class Curriculum(Algorithm):
    """A stateful curriculum over the SDE step: Flash-GRPO's one step per trajectory, moved one
    step later each time the batch's mean reward beats the best seen so far (`observe`)."""

    Config = CurriculumConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.k, self.best, self.seen = 0, float("-inf"), []

    def trainable_steps(self, table) -> range:
        return range(table.last_noisy_step + 1)

    def plan(self, ctx: PlanContext) -> Plan:
        sde = self.empty(ctx)
        sde[:, min(self.k, ctx.table.last_noisy_step)] = True
        return self.make_plan(ctx, sde)

    def observe(self, ctx) -> None:
        mean = float(ctx.batch_rewards[ctx.reward].mean())
        self.seen.append((ctx.iteration, ctx.scores.shape, mean))
        if mean > self.best:
            self.best, self.k = mean, self.k + 1

    def state_dict(self) -> dict:
        return {"k": self.k, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.best = state.get("k", 0), state.get("best", float("-inf"))


def test_an_algorithm_observes_the_rewards_keeps_its_state_and_resumes_exactly(tmp_path, registered):
    """Algorithm.observe sees this rank's scored groups once per iteration, after the rewards and
    before the advantages; state it keeps there is checkpointed, so a resume trains what an
    uninterrupted run does."""
    registered("curriculum")(Curriculum)
    alg = {"name": "curriculum"}
    straight = train(run_config(tmp_path, "straight", alg, 3))
    train(run_config(tmp_path, "split", alg, 2))
    assert train(run_config(tmp_path, "split", alg, 3)) == straight
    from grpo_zoo.training.trainer import Trainer

    trainer = Trainer(run_config(tmp_path, "watched", alg, 2), progress=False)
    trainer.engine.close = lambda: None
    trainer.train()
    seen = trainer.algorithm.seen
    assert [it for it, _, _ in seen] == [0, 1] and all(shape == (2, 4) for _, shape, _ in seen)
    rows = [r for r in RunDir(tmp_path / "watched").rows() if r["kind"] == "train"]
    assert [round(m, 6) for _, _, m in seen] == [round(r["reward/mean"], 6) for r in rows]
    assert trainer.algorithm.k >= 1  # the first iteration always beats -inf: the curriculum moved


# -- algorithms from outside the repository ----------------------------------------------
def test_readme_example_installs_as_a_plugin_and_trains(tmp_path):
    """The README's example, as a distribution with an entry point (its own dist-info on
    the path, as pip would leave it): registered, planned, trained by the CLI."""
    env = install_plugin(tmp_path, "random_steps", readme_block("## Adding an algorithm"), package="my_algos")
    probe = (
        "import torch\n"
        "from grpo_zoo.core import algorithm\n"
        "from grpo_zoo.core.algorithm import PlanContext\n"
        "from grpo_zoo.flow import make_sigmas, step_table\n"
        "assert 'random_steps' in algorithm.names()\n"
        "table = step_table(make_sigmas('wan', 10, 3.0), 'flow_sde')\n"
        "plan = algorithm.build({'name': 'random_steps', 'n': 3}).plan("
        "PlanContext.of(2, 4, table, torch.Generator().manual_seed(0)))\n"
        "plan.check(table)\n"
        "assert plan.train.sum(1).tolist() == [3] * 8 and plan.sde.all()\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    args = overrides(TINY_INPROCESS) + ["budget.steps=2", f"run_dir={tmp_path / 'run'}"]
    out = subprocess.run(
        [sys.executable, "-m", "grpo_zoo.train", str(ROOT / "experiments/toy/base.yaml"), "algorithm.name=random_steps",
         *args],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [r for r in RunDir(tmp_path / "run").rows() if r["kind"] == "train"]
    assert [r["stats/transitions"] for r in rows] == [2 * 4 * 2] * 2  # n = 2 per trajectory
    bad = subprocess.run(
        [sys.executable, "-m", "grpo_zoo.train", str(ROOT / "experiments/toy/base.yaml"), "algorithm.name=random_steps",
         "algorithm.n=0", f"run_dir={tmp_path / 'bad'}"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "n:" in bad.stderr


UNEVEN = '''
from dataclasses import dataclass

from grpo_zoo.core.algorithm import Algorithm, AlgorithmConfig, register


@dataclass
class UnevenConfig(AlgorithmConfig):
    name: str = "uneven"


@register("uneven")
class Uneven(Algorithm):
    """Rank 0 trains one transition in all; rank 1 trains steps 0-2 of every trajectory."""

    Config = UnevenConfig

    def trainable_steps(self, table):
        return range(3)

    def plan(self, ctx):
        sde = self.empty(ctx)
        if ctx.rank == 0:
            sde[0, 0] = True
        else:
            sde[:, :3] = True
        return self.make_plan(ctx, sde)
'''


@pytest.mark.slow
def test_uneven_transitions_across_ranks_step_together_and_count_exactly(tmp_path):
    """Two ranks holding 1 and 12 trained transitions (rank 0 has an empty minibatch): both
    step together, end in sync, and the meter counts exactly what ran on each."""
    env = install_plugin(tmp_path, "uneven", UNEVEN)
    args = overrides(TINY_INPROCESS) + ["budget.steps=2", "engine.zero_stage=2"]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541", "-m",
         "grpo_zoo.train", str(ROOT / "experiments/toy/base.yaml"), "algorithm.name=uneven",
         f"run_dir={tmp_path / 'run'}", *args],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "COMPLETED").read_text())
    assert summary["ranks_in_sync"]
    rows = [r for r in RunDir(tmp_path / "run").rows() if r["kind"] == "train"]
    per_iteration = 1 + 4 * 3  # rank 0: one transition; rank 1: 4 trajectories x 3 steps
    assert [r["stats/transitions"] for r in rows] == [per_iteration] * 2
    assert [r["compute/backward"] for r in rows] == [per_iteration, 2 * per_iteration]
    rollout = 2 * 4 * 6  # both ranks' trajectories, every step
    assert rows[0]["compute/nfe"] == rollout + per_iteration


def registry_variants() -> dict[str, dict]:
    from tests import golden

    return golden.variants()


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(registry_variants()))
def test_every_algorithm_resumes_exactly(tmp_path, variant):
    """Every registered algorithm (and switch): 3 iterations straight equal 2, a stop at the
    checkpoint, and a resume to 3, row for row."""
    alg = registry_variants()[variant]
    ref = train(run_config(tmp_path, "ref", alg, 3))
    train(run_config(tmp_path, "split", alg, 2))
    assert train(run_config(tmp_path, "split", alg, 3)) == ref
