"""The rollout's ODE solvers (sampling.ode_solver) and strided ODE tails (sampling.ode_stride):
checked against diffusers' DPM-Solver++ and a flow whose exact solution is known."""

from __future__ import annotations

import pytest
import torch

from grpo_zoo.core import algorithm as algorithms
from grpo_zoo.core.algorithm import Plan, PlanContext
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.training.rollout import rollout

from .helpers import CountingPolicy

C = 0.5  # data ~ N(0, C^2) per element


class GaussianFlow(torch.nn.Module):
    """The exact velocity of a rectified flow from N(0, C^2) data: v = E[noise - x0 | x_sigma].
    Its ODE maps x at sigma = 1 to C * x at sigma = 0 (the std ratio)."""

    latent_shape = (2, 1, 3, 3)

    def __init__(self):
        super().__init__()
        self.rows = 0

    def velocity(self, x, sigma, emb, null_emb, guidance):
        self.rows += len(x)
        s = sigma.double().view(-1, *([1] * (x.dim() - 1)))
        var = (1 - s) ** 2 * C**2 + s**2
        return ((s - (1 - s) * C**2) * x.double() / var).float()


def ode_plan(rows: int, steps: int, stride: int = 1) -> Plan:
    sde = torch.zeros(rows, steps, dtype=torch.bool)
    return Plan(sde=sde, train=sde.clone(), weight=sde.double(), group_size=rows, stride=torch.full((rows,), stride))


def solve(sigmas, solver: str, stride: int = 1, policy=None):
    table = step_table(sigmas, "flow_sde")
    policy = policy or GaussianFlow()
    plan = ode_plan(4, table.num_steps, stride)
    gen = torch.Generator().manual_seed(0)
    ro = rollout(policy, torch.zeros(4, 1, 1), None, plan, table, 1.0, gen, solver=solver)
    x1 = torch.randn(4, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    return ro, x1


def test_dpm2_matches_diffusers_dpm_solver_pp_2m_on_a_flow_schedule():
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction", solver_order=2
    )
    sched.set_timesteps(12)
    sigmas = sched.sigmas.double()
    ro, x1 = solve(sigmas, "dpm2")
    x, flow = x1.clone(), GaussianFlow()
    for i, t in enumerate(sched.timesteps):
        v = flow.velocity(x, sigmas[i].float().expand(len(x)), None, None, 1.0)
        x = sched.step(v, t, x).prev_sample
    assert torch.allclose(ro.latents, x, atol=1e-5), (ro.latents - x).abs().max()
    euler, _ = solve(sigmas, "euler")
    assert (euler.latents - x).abs().max() > 100 * (ro.latents - x).abs().max()  # the check can fail


def test_dpm2_is_more_accurate_than_euler_at_twice_the_steps_on_the_wan_schedule():
    """The exact answer is known (C * x at sigma = 1); Euler's error halves with twice the steps
    (first order), and the multistep solver at n steps beats Euler at 2n."""
    errors = {}
    for solver in ("euler", "dpm2"):
        for n in (8, 16, 32, 64):
            ro, x1 = solve(make_sigmas("wan", n, 3.0), solver)
            errors[solver, n] = float((ro.latents - C * x1).abs().max())
    for n in (8, 16, 32):
        assert 1.7 < errors["euler", n] / errors["euler", 2 * n] < 2.3
    for n in (16, 32):
        assert errors["dpm2", n] < errors["euler", 2 * n]
    assert errors["dpm2", 32] < errors["euler", 32] / 10


def test_a_strided_tail_is_the_ode_on_the_coarser_grid_of_the_same_sigmas():
    fine = make_sigmas("flow_match", 12, 3.0)
    for solver in ("euler", "dpm2"):
        strided_policy, coarse_policy = GaussianFlow(), GaussianFlow()
        strided, _ = solve(fine, solver, stride=3, policy=strided_policy)
        coarse, _ = solve(fine[::3], solver, policy=coarse_policy)  # sigmas 0, 3, 6, 9, 12 of the table
        assert torch.allclose(strided.latents, coarse.latents, atol=1e-6)
        assert strided.nfe == coarse.nfe == strided_policy.rows == 4 * 4


def test_the_solver_and_the_stride_leave_every_sde_transition_alone():
    """MixGRPO-Flash's rollout: the window's transitions, log-probs and everything before it are
    those of the Euler rollout; only the tail after the window changes, with fewer forwards."""
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    alg = algorithms.build({"name": "mix_grpo", "shift_every": 1})
    emb = torch.randn(8, 3, 5)
    outs = {}
    for solver, stride in (("euler", 1), ("dpm2", 1), ("dpm2", 2)):
        ctx = PlanContext.of(2, 4, table, torch.Generator().manual_seed(3), iteration=2, ode_stride=stride)
        plan = alg.plan(ctx)
        plan.check(table)
        policy = CountingPolicy()
        ro = rollout(policy, emb, None, plan, table, 1.0, torch.Generator().manual_seed(1), solver=solver)
        assert ro.nfe == policy.rows == int(plan.forward_rows().sum())
        outs[solver, stride] = ro
    base = outs["euler", 1]
    for key in (("dpm2", 1), ("dpm2", 2)):
        tr = outs[key].transitions
        assert torch.equal(tr.x_next, base.transitions.x_next) and torch.equal(tr.logp_old, base.transitions.logp_old)
        assert torch.equal(outs[key].logp, base.logp)
        assert not torch.allclose(outs[key].latents, base.latents)
    assert outs["dpm2", 2].nfe < outs["dpm2", 1].nfe == base.nfe


def test_a_row_that_lends_its_velocity_runs_the_model_where_a_branch_needs_it():
    """A strided ODE backbone that children branch from (TempFlow-shaped) still runs the model
    at every branch step, so each child's SDE step uses a real velocity."""
    table = step_table(make_sigmas("wan", 8, 3.0), "flow_sde")
    steps = 8
    sde = torch.zeros(4, steps, dtype=torch.bool)
    parent = torch.tensor([0, 0, 0, 0])
    branch_at = torch.tensor([0, 1, 3, 5])
    for r in (1, 2, 3):
        sde[r, branch_at[r]] = True
    plan = Plan(
        sde=sde,
        train=sde.clone(),
        weight=sde.double(),
        group_size=4,
        parent=parent,
        branch_at=branch_at,
        stride=torch.full((4,), 3),
    )
    plan.check(table)
    skips = plan.skips()
    assert not skips[0, [1, 3, 5]].any()  # the backbone computes where children branch
    assert not (skips & plan.sde).any()
    for r in (1, 2, 3):  # each child's own tail: model at its first step after the SDE step, then every 3rd
        own = (~skips[r, branch_at[r] + 1 :]).nonzero().flatten().tolist()
        assert own[0] == 0 and all(b - a == 3 for a, b in zip(own, own[1:]))
    policy = CountingPolicy()
    ro = rollout(policy, torch.randn(4, 3, 5), None, plan, table, 1.0, torch.Generator().manual_seed(0), solver="dpm2")
    assert ro.nfe == policy.rows == int(plan.forward_rows().sum()) < 4 * steps


def test_the_solver_benchmark_measures_the_toy_base_model():
    """`python -m benchmarks.ode_solver` (published in BENCHMARKS.md) stays runnable: on the
    toy base model, a stride of 2 halves the forwards per video and every figure is finite."""
    import math

    from benchmarks.ode_solver import measure

    rows = measure(n=2, steps=(10,), strides=(1, 2))
    assert [(r["solver"], r["stride"]) for r in rows] == [("euler", 1), ("euler", 2), ("dpm2", 1), ("dpm2", 2)]
    assert [r["nfe"] for r in rows] == [10, 5, 10, 5]
    assert all(math.isfinite(r[k]) for r in rows for k in ("reward", "ci", "error"))
    assert all(r["error"] > 0 for r in rows)  # 10 steps are not the 200-step answer


def test_mix_grpo_flash_regrids_its_tail_as_the_reference_does():
    """sampling_utils.py:44-54 at T = 25 on the reference's own grid (shift(linspace(1, 0, 26))):
    int((T - last) * r) nodes from node last + 1, evenly spaced in unshifted time, then shifted."""
    shift, steps = 3.0, 25
    u = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    table = step_table((shift * u / (1 + (shift - 1) * u)).float(), "flow_sde")
    alg = algorithms.build({"name": "mix_grpo", "shift_every": 1, "post_compress_ratio": 0.4})
    for it, nodes in ((0, 8), (5, 6), (15, 2)):  # last = 3, 8, 18: int(22 * .4), int(17 * .4), int(7 * .4)
        ctx = PlanContext.of(1, 4, table, torch.Generator().manual_seed(0), iteration=it, shift=shift)
        plan = alg.plan(ctx)
        plan.check(table)
        last = it + 3
        post = torch.linspace(float(u[last + 1]), 0, nodes, dtype=torch.float64)
        assert plan.tail_from == last + 1
        assert torch.allclose(
            torch.tensor(plan.tail, dtype=torch.float64), shift * post / (1 + (shift - 1) * post), atol=1e-6
        )
        assert plan.forward_rows()[0].sum() == last + 1 + nodes - 1  # 11 model calls a rollout at it 0, not 25


def test_a_regridded_tail_is_the_rollout_on_the_joined_schedule():
    """The tail of a plan equals a plain rollout on the table's sigmas up to the tail joined with
    the tail's nodes: the same SDE transitions and log-probs, the same video, its forwards."""
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    alg = algorithms.build({"name": "mix_grpo", "shift_every": 1, "post_compress_ratio": 0.4})
    emb = torch.randn(8, 3, 5)
    ctx = PlanContext.of(2, 4, table, torch.Generator().manual_seed(3), iteration=1, shift=3.0)
    plan = alg.plan(ctx)
    plan.check(table)
    k, tail = plan.tail_from, plan.tail
    assert (k, len(tail)) == (5, 2)  # window 1..4: one DPM step to 0, 6 model calls (the count)
    joined = step_table(
        torch.cat([make_sigmas("wan", 10, 3.0)[:k], torch.tensor(tail[:-1]), torch.zeros(1)]), "flow_sde"
    )
    sde = plan.sde[:, :k]
    sde = torch.cat([sde, torch.zeros(8, len(tail) - 1, dtype=torch.bool)], 1)
    flat = Plan(
        sde=sde, train=sde.clone(), weight=sde.double(), group_size=4, parent=plan.parent, branch_at=plan.branch_at
    )
    flat.check(joined)
    for solver in ("euler", "dpm2"):
        a, b = CountingPolicy(), CountingPolicy()
        ro = rollout(a, emb, None, plan, table, 1.0, torch.Generator().manual_seed(1), solver=solver)
        ref = rollout(b, emb, None, flat, joined, 1.0, torch.Generator().manual_seed(1), solver=solver)
        assert torch.equal(ro.transitions.x_next, ref.transitions.x_next)
        assert torch.equal(ro.transitions.logp_old, ref.transitions.logp_old)
        assert torch.allclose(ro.latents, ref.latents, atol=1e-6)
        assert (
            ro.nfe == a.rows == b.rows == int(plan.forward_rows().sum()) == 2 * (4 * 6 - 3 * 2)
        )  # a group shares steps 0 and 1


def test_mix_grpo_flash_star_keeps_its_window_at_the_start():
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    alg = algorithms.build({"name": "mix_grpo", "shift_every": 1, "shift": 0, "post_compress_ratio": 0.2})
    for it in (0, 7, 40):
        plan = alg.plan(PlanContext.of(1, 4, table, torch.Generator().manual_seed(0), iteration=it, shift=3.0))
        plan.check(table)
        assert plan.train[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
        assert plan.tail_from == 4 and len(plan.tail) == 2  # max(int(6 * 0.2), 2)


def test_a_plan_tail_that_does_not_join_the_table_is_refused():
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    plan = ode_plan(2, 10)
    plan.tail_from, plan.tail = 4, (0.5, 0.0)
    with pytest.raises(ValueError, match="from the table's sigma"):
        plan.check(table)
    plan.tail = (float(table.sigma[4]), 0.3, 0.4, 0.0)
    with pytest.raises(ValueError, match="decrease"):
        plan.check(table)
    plan.sde[:, 5] = True
    plan.tail = (float(table.sigma[4]), 0.0)
    with pytest.raises(ValueError, match="before a row's last SDE step"):
        plan.check(table)


def test_a_scored_prediction_comes_from_the_last_model_call_even_in_a_regridded_tail():
    """score_prediction with a tail: the tail makes the last model call, so its data prediction is
    scored; a tail that ends with one step into sigma = 0 lands exactly on it."""
    table = step_table(make_sigmas("wan", 10, 3.0), "flow_sde")
    alg = algorithms.build({"name": "mix_grpo", "shift_every": 1, "post_compress_ratio": 0.4})
    emb = torch.randn(8, 3, 5)
    plan = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(3), iteration=0, shift=3.0))
    for solver in ("euler", "dpm2"):
        plan.score_prediction = False
        final = rollout(CountingPolicy(), emb, None, plan, table, 1.0, torch.Generator().manual_seed(1), solver=solver)
        plan.score_prediction = True
        pred = rollout(CountingPolicy(), emb, None, plan, table, 1.0, torch.Generator().manual_seed(1), solver=solver)
        assert torch.allclose(pred.latents, final.latents, atol=1e-6)
