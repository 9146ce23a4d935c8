"""Score a toy model, the ground truth or noise on the toy world's prompts.

    python -m grpo_zoo.toy.evaluate --model toy-base --prompts test --n 64 --seed 0 --format json

Prints one JSON object: the mean of every reward (`toy_motion`, `toy_aesthetic`,
`toy_prompt`, `toy_hps`) and eval metric (`aesthetic_quality`, `imaging_quality`,
`subject_consistency`, `object_class`) by name. `--model` is `toy-base` (the shipped
checkpoint), a checkpoint directory, a run directory's checkpoint, `ground-truth`
(rendered by the world) or `noise`. Samples are drawn by deterministic ODE sampling.
`--save DIR` writes grid.png (one row per sample, one column per frame) and mp4s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from grpo_zoo.errors import ArgParser, ConfigError, cli
from grpo_zoo.flow import SCHEDULES, make_sigmas, step_table
from grpo_zoo.rewards.toy import all_rewards, eval_metrics
from grpo_zoo.toy import world


def sample_prompts(split: str, n: int) -> list[str]:
    ps = world.prompts(split)
    return [ps[i % len(ps)].text for i in range(n)]


def videos_for(
    model: str, prompts: list[str], seed: int, steps: int, shift: float, schedule: str, guidance: float
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if model == "ground-truth":
        return world.render([world.Prompt.parse(p) for p in prompts], gen)
    if model == "noise":
        return torch.randn(len(prompts), 3, world.FRAMES, world.SIZE, world.SIZE, generator=gen).clamp(-1, 1)
    from grpo_zoo.models.toy import ToyPolicy
    from grpo_zoo.rollout import generate_ode
    from grpo_zoo.toy.model import load_checkpoint

    transformer, encoder = load_checkpoint(model)
    policy = ToyPolicy(transformer.eval(), encoder)
    table = step_table(make_sigmas(schedule, steps, shift), "flow_sde")
    videos, _ = generate_ode(policy, prompts, table, guidance, seed)
    return videos


def score(videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    out = {**all_rewards(videos, prompts), **eval_metrics(videos, prompts)}
    return {k: round(float(v.mean()), 4) for k, v in out.items()}


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.toy.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="toy-base", help="toy-base, ground-truth, noise, or a checkpoint directory")
    p.add_argument("--prompts", default="test", choices=("train", "test"))
    p.add_argument("--n", type=int, default=64, help="number of samples (prompts cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="ODE sampling steps")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--schedule", default="wan", choices=SCHEDULES)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--format", default="json", choices=("json", "table"))
    p.add_argument("--save", default=None, help="directory for grid.png and mp4s")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.n < 1:
        raise ConfigError(f"--n: must be at least 1, got {args.n}")
    if args.model not in ("ground-truth", "noise"):
        from grpo_zoo.toy.model import resolve

        if not (resolve(args.model) / "transformer").is_dir():
            raise ConfigError(
                f"--model: no toy checkpoint at {args.model!r} (use toy-base, ground-truth, noise or a directory)"
            )
    prompts = sample_prompts(args.prompts, args.n)
    videos = videos_for(args.model, prompts, args.seed, args.steps, args.shift, args.schedule, args.guidance)
    result = score(videos, prompts)
    if args.save:
        from grpo_zoo.media import save_grid, save_mp4

        out = Path(args.save)
        save_grid(videos[:16], out / "grid.png", prompts[:16])
        for i in range(min(len(videos), 16)):
            save_mp4(videos[i], out / f"sample_{i:02d}.mp4")
    if args.format == "json":
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}  {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
