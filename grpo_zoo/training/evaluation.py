"""Evaluation: deterministic ODE samples of the eval prompts, scored by the reward and the
eval metrics, split over ranks by sample index (results do not depend on the split)."""

from __future__ import annotations

import contextlib

from grpo_zoo import rewards
from grpo_zoo.training.rollout import generate_ode


def evaluate(trainer) -> dict:
    """One eval row for `trainer`'s current (or EMA) weights; with `save_eval_videos`, a grid
    of the first videos (rank 0) and this rank's videos kept on the host for the run's end."""
    cfg, engine = trainer.cfg, trainer.engine
    n = cfg.data.eval_samples
    local = n // trainer.world
    prompts = [trainer.eval_prompts[i % len(trainer.eval_prompts)] for i in range(n)]
    mine = prompts[trainer.rank * local : (trainer.rank + 1) * local]
    trainer.policy.eval()
    with trainer.ema.swapped_in() if trainer.ema is not None else contextlib.nullcontext():
        videos, nfe = generate_ode(
            trainer.policy,
            mine,
            trainer.eval_table,
            cfg.sampling.guidance,
            cfg.data.eval_seed,
            index_offset=trainer.rank * local,
            dtype=trainer.dtype,
            device=trainer.device,
            micro_batch=trainer.micro_batch,
        )
    scores = trainer.reward_fn(videos, mine)
    scores.update(rewards.eval_metrics(videos, mine))
    trainer.meter.forward(nfe * trainer.world, eval=True)
    row = {"kind": "eval", "eval/reward": float(engine.all_gather_cat(scores[cfg.reward.entry].float()).mean())}
    for name, values in scores.items():
        row[f"eval/{name}"] = float(engine.all_gather_cat(values.float()).mean())
    if cfg.save_eval_videos:
        from grpo_zoo.runs.media import save_grid, to_uint8

        if trainer.rank == 0:
            grid = trainer.run.path / "eval" / f"step-{trainer.step:06d}.png"
            save_grid(videos[:16], grid, mine[:16])
            if trainer.run.tracker is not None:  # the mirrors show it beside the metrics
                trainer.run.tracker.image(trainer.step, "eval/videos", grid)
        trainer.last_videos = (to_uint8(videos.cpu()), mine)  # kept on the host until the run ends
    return row


def write_eval_videos(trainer) -> None:
    """The last evaluation's videos as mp4 files named as VBench expects (every rank its own)."""
    if trainer.last_videos is None:
        return
    from grpo_zoo.vbench import save_eval_videos

    frames, prompts = trainer.last_videos
    local = trainer.cfg.data.eval_samples // trainer.world
    save_eval_videos(
        frames, prompts, trainer.rank * local, len(trainer.eval_prompts), trainer.run.path / "eval" / "videos"
    )
