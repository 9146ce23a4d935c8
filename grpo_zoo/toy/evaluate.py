"""Score a toy model, the ground truth or noise on the toy world's prompts.

    python -m grpo_zoo.toy.evaluate --model toy-base --prompts test --n 64 --seed 0 --format json

Prints one JSON object: the mean of every reward (`toy_motion`, `toy_aesthetic`,
`toy_prompt`, `toy_hps`) and eval metric (`aesthetic_quality`, `imaging_quality`,
`subject_consistency`, `object_class`) by name. `--model` is `toy-base` (the shipped
checkpoint), a checkpoint directory, a run directory's checkpoint, `ground-truth`
(rendered by the world) or `noise`. Samples are drawn by deterministic ODE sampling.
`--save DIR` writes grid.png (one row per sample, one column per frame) and mp4s.

A run directory (or one of its `checkpoints/step-N`) is read as the trainer left it: the
run's model (its base checkpoint and LoRA), the trained weights of that checkpoint (the
newest one for a run directory), and their EMA when the run kept one, as its evaluation does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from grpo_zoo.errors import (
    SEED,
    SHIFT,
    STEPS,
    ArgParser,
    ConfigError,
    Range,
    cli,
    number,
    writable_dir,
)
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
    from grpo_zoo.training.rollout import generate_ode

    policy = load_policy(model)
    table = step_table(make_sigmas(schedule, steps, shift), "flow_sde")
    videos, _ = generate_ode(policy, prompts, table, guidance, seed)
    return videos


def run_checkpoint(model: str) -> tuple[Path, Path] | None:
    """(run directory, checkpoint) when `model` is a run directory or one of its checkpoints."""
    path = Path(model)
    if (path / "config.yaml").is_file():
        from grpo_zoo.runs import RunDir

        ckpt = RunDir(path).latest_checkpoint()
        if ckpt is None:
            raise ConfigError(f"--model: run directory {model!r} has no checkpoint yet (train it first)")
        return path, ckpt
    if (path / "engine").is_dir() and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent, path
    return None


def check_model(model: str) -> None:
    """Before any compute: `model` is one of the forms --model accepts."""
    if model in ("ground-truth", "noise"):
        return
    found = run_checkpoint(model)
    if found is None:
        from grpo_zoo.toy.model import resolve

        if not (resolve(model) / "transformer").is_dir():
            raise ConfigError(
                f"--model: no toy checkpoint, run directory or run checkpoint at {model!r} "
                "(use toy-base, ground-truth, noise, a checkpoint directory or a run directory)"
            )
        _loads(model)
        return
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build, load_yaml

    run, ckpt = found
    cfg = build(RunConfig, {**load_yaml(run / "config.yaml"), "run_dir": str(run)})
    if cfg.model.backend != "toy":
        raise ConfigError(f"--model: {model!r} is a {cfg.model.backend} run; this scores toy models")
    if cfg.engine.zero_stage == 3:
        raise ConfigError(f"--model: {model!r} was trained with ZeRO-3 (sharded weights); consolidate it first")
    if not (ckpt / "engine" / "mp_rank_00_model_states.pt").is_file():
        raise ConfigError(f"--model: checkpoint {str(ckpt)!r} has no model states (engine/mp_rank_00_model_states.pt)")
    _loads(model)


def _loads(model: str) -> None:
    """The weights load (a toy model takes a moment): a truncated or damaged file is one line."""
    try:
        load_policy(model)
    except Exception as err:  # safetensors, torch.load and diffusers word it each their own way
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(f"--model: {model!r} cannot be loaded ({type(err).__name__}: {why})") from None


def load_policy(model: str):
    """A toy policy from a shipped name, a checkpoint directory, a run directory or a run's checkpoint."""
    from grpo_zoo.models.toy import ToyPolicy

    found = run_checkpoint(model)
    if found is None:
        policy = ToyPolicy.from_checkpoint(model)
        policy.net.eval()
        return policy
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build, load_yaml

    run, ckpt = found
    cfg = build(RunConfig, {**load_yaml(run / "config.yaml"), "run_dir": str(run)})
    policy = ToyPolicy.load(cfg.model)
    states = torch.load(ckpt / "engine" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    policy.net.load_state_dict(states["module"], strict=False)
    trainer = ckpt / "trainer_rank0.pt"
    ema = torch.load(trainer, map_location="cpu", weights_only=False).get("ema") if trainer.is_file() else None
    if ema:  # the run evaluates with the EMA of its trainable weights
        params = dict(policy.net.named_parameters())
        with torch.no_grad():
            for name, value in ema.get("shadow", ema).items():  # {"shadow", "steps"}; earlier checkpoints: the shadow
                params[name].copy_(value)
    policy.net.eval()
    return policy


def score(videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    out = {**all_rewards(videos, prompts), **eval_metrics(videos, prompts)}
    return {k: round(float(v.mean()), 4) for k, v in out.items()}


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.toy.evaluate", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="toy-base",
        help="toy-base, ground-truth, noise, a checkpoint directory, a run directory or its checkpoints/step-N",
    )
    p.add_argument("--prompts", default="test", choices=("train", "test"))
    p.add_argument("--n", type=number(int, Range(1, 100_000)), default=64, help="number of samples (prompts cycle)")
    p.add_argument("--seed", type=number(int, SEED), default=0)
    p.add_argument("--steps", type=number(int, STEPS), default=20, help="ODE sampling steps")
    p.add_argument("--shift", type=number(float, SHIFT), default=3.0)
    p.add_argument("--schedule", default="wan", choices=SCHEDULES)
    p.add_argument(
        "--guidance", type=number(float, Range(1)), default=1.0, help="classifier-free guidance scale (1 = off)"
    )
    p.add_argument("--format", default="json", choices=("json", "table"))
    p.add_argument("--save", default=None, help="directory for grid.png and mp4s")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_model(args.model)
    if args.save:
        writable_dir(args.save, "--save")
    prompts = sample_prompts(args.prompts, args.n)
    videos = videos_for(args.model, prompts, args.seed, args.steps, args.shift, args.schedule, args.guidance)
    result = score(videos, prompts)
    if args.save:
        from grpo_zoo.runs.media import save_grid, save_mp4

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
