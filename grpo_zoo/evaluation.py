"""Evaluation: deterministic ODE samples of the eval prompts, scored by the reward and the
eval metrics, split over ranks by sample index (results do not depend on the split)."""

from __future__ import annotations

import contextlib

from grpo_zoo import rewards
from grpo_zoo.rollout import generate_ode


def evaluate(trainer) -> tuple[dict, object]:
    """One eval row for `trainer`'s current (or EMA) weights, and the videos this rank made."""
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
        )
    scores = trainer.reward_fn(videos, mine)
    scores.update(rewards.eval_metrics(videos, mine))
    trainer.meter.forward(nfe * trainer.world, eval=True)
    row = {"kind": "eval", "eval/reward": float(engine.all_gather_cat(scores[cfg.reward.name].float()).mean())}
    for name, values in scores.items():
        row[f"eval/{name}"] = float(engine.all_gather_cat(values.float()).mean())
    return row, (videos, mine)
