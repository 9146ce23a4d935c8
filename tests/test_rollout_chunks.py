"""sampling.rollout_chunks: a rank's rollout in consecutive chunks, each scored by a remote reward
while the next one samples (the overlap both references get from a thread pool)."""

import pytest
import torch

from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import apply_overrides, build, load_config_file
from grpo_zoo.core import algorithm as algorithms
from grpo_zoo.core.contract import PlanContext, RolloutResult
from grpo_zoo.flow import make_sigmas, step_table
from grpo_zoo.training.rollout import rollout

from .helpers import TINY_WAN_ARGS, CountingPolicy, StandinService, run_config, train

TABLE = step_table(make_sigmas("wan", 6, 3.0), "flow_sde", 0.7)


def algorithm_cfg(name: str, **fields):
    data = {"algorithm": {"name": name, **fields}}
    return build(RunConfig, data).algorithm


@pytest.mark.parametrize("alg", [("flash_grpo", {}), ("flow_grpo", {}), ("flash_grpo", {"initial_noise": "shared"})])
@pytest.mark.parametrize("chunks", [2, 4])
def test_a_chunked_rollout_is_each_chunks_own_rollout_merged_in_row_order(alg, chunks):
    name, fields = alg
    plan = algorithms.build(algorithm_cfg(name, **fields)).plan(
        PlanContext.of(2, 4, TABLE, torch.Generator().manual_seed(0))
    )
    rows, policy = len(plan.parent), CountingPolicy()
    size = rows // chunks
    if fields.get("initial_noise") == "shared" and size < 4:
        with pytest.raises(ValueError, match="shares its prefix with row 0"):
            plan.rows(size, 2 * size)
        return
    emb = torch.randn(rows, 3, 4)
    parts = [
        rollout(
            policy, emb[lo : lo + size], None, plan.rows(lo, lo + size), TABLE, 1.0, torch.Generator().manual_seed(c)
        )
        for c, lo in enumerate(range(0, rows, size))
    ]
    whole = RolloutResult.cat(parts, [size] * chunks)
    tr = whole.transitions
    # every trained transition of the plan, once, in (trajectory, step) order, with its chunk's numbers
    assert [tuple(ix) for ix in torch.stack([tr.traj, tr.step], 1).tolist()] == plan.trained_steps()
    for c, part in enumerate(parts):
        mine = (tr.traj >= c * size) & (tr.traj < (c + 1) * size)
        assert torch.equal(tr.x[mine], part.transitions.x) and torch.equal(tr.logp_old[mine], part.transitions.logp_old)
        assert torch.equal(whole.latents[c * size : (c + 1) * size], part.latents)
        assert torch.equal(whole.logp[c * size : (c + 1) * size], part.logp)
    assert whole.nfe == sum(p.nfe for p in parts) == policy.rows
    # the whole plan as one chunk is the plan itself
    one = rollout(CountingPolicy(), emb, None, plan.rows(0, rows), TABLE, 1.0, torch.Generator().manual_seed(0))
    ref = rollout(CountingPolicy(), emb, None, plan, TABLE, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(one.latents, ref.latents) and torch.equal(one.transitions.x_next, ref.transitions.x_next)


def test_plan_rows_refuses_ranges_that_are_not_whole_pieces_of_groups():
    plan = algorithms.build(algorithm_cfg("flow_grpo")).plan(PlanContext.of(2, 4, TABLE, torch.Generator()))
    for lo, hi in [(0, 3), (1, 3), (2, 8), (0, 9), (4, 4)]:
        with pytest.raises(ValueError):
            plan.rows(lo, hi)


def test_chunked_training_is_reproducible_and_chunks_1_is_the_unchunked_run(tmp_path):
    one = train(run_config(tmp_path, "one", {"name": "flash_grpo", "sampling.rollout_chunks": 1}, 2))
    plain = train(run_config(tmp_path, "plain", {"name": "flash_grpo"}, 2))
    two = train(run_config(tmp_path, "two", {"name": "flash_grpo", "sampling.rollout_chunks": 2}, 2))
    again = train(run_config(tmp_path, "again", {"name": "flash_grpo", "sampling.rollout_chunks": 2}, 2))
    assert one == plain and two == again
    assert two != one  # each chunk draws from its own seed: the number is part of what a run samples
    for a, b in zip(one, two):  # ... at the same cost
        assert {k: v for k, v in a.items() if k.startswith("compute/")} == {
            k: v for k, v in b.items() if k.startswith("compute/")
        }


def test_each_chunk_is_sent_to_the_service_before_the_next_one_samples(tmp_path):
    """A tiny Wan trainer with the hpsv3 client against server.py's real app (a stand-in model):
    the reward of chunk c is on its way before chunk c + 1's first forward, and the scores are
    those of scoring every video at once."""
    from grpo_zoo.models.tiny_wan import write_tiny_wan
    from grpo_zoo.training.trainer import Trainer

    service = StandinService(max_body=8 << 20, max_frames=256).start()
    try:
        model = write_tiny_wan(tmp_path / "tiny-wan")
        args = [a for a in TINY_WAN_ARGS if not a.startswith("data.prompts=")]
        data = apply_overrides(load_config_file("experiments/wan2.1/base.yaml"), args)
        data = apply_overrides(
            data,
            [
                "model.arch=wan2.1-t2v-1.3b",
                f"model.path={model}",
                f"run_dir={tmp_path / 'run'}",
                f"reward.options.url={service.url}",
                "reward.options.frames=3",
                "reward.options.batch_size=1",
                "engine.zero_stage=0",
                "engine.precision=fp32",
                "budget.device_hours=null",
                "budget.steps=1",
                "sampling.rollout_chunks=4",
                "algorithm.name=flash_grpo",
                "algorithm.k_range=[0, 2]",
            ],
        )
        cfg = build(RunConfig, data)
        trainer = Trainer(cfg, progress=False)
        trainer.engine.close = lambda: None
        events, velocity, submit = [], trainer.policy.velocity, trainer.reward_fn.submit

        def counted_velocity(*a, **kw):
            events.append("forward")
            return velocity(*a, **kw)

        def counted_submit(videos, prompts):
            events.append(f"submit {len(videos)}")
            return submit(videos, prompts)

        trainer.policy.velocity, trainer.reward_fn.submit = counted_velocity, counted_submit
        planned = trainer.plan_step()
        ro = trainer.rollout_step(planned)
        steps = cfg.sampling.steps * 2  # CFG: one forward call per step of a chunk, twice the rows
        calls = [e for e in events if e == "forward"]
        assert len(calls) % 4 == 0 and len(calls) >= 4
        per_chunk = len(calls) // 4
        # forward, ..., submit, forward, ..., submit: each chunk's videos leave before the next chunk's first forward
        expected = (["forward"] * per_chunk + ["submit 2"]) * 4
        assert events == expected, (events, steps)
        scores = ro.scoring.result()
        texts = [q for q in planned.prompts for _ in range(cfg.data.group_size)]
        at_once = trainer.reward_fn(trainer.policy.decode(ro.latents), texts)
        assert set(scores) == set(at_once)
        for key in scores:
            assert torch.allclose(scores[key], at_once[key], atol=1e-6), key
    finally:
        service.kill()
