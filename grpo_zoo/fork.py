"""Fork a run from one of its checkpoints into a new run directory:
`python -m grpo_zoo.fork RUN NEW_DIR [--checkpoint step-N] [dotted.key=value ...]`.

NEW_DIR gets the run's config with the overrides (and run_dir NEW_DIR), the checkpoint (weights,
optimizer, EMA, the algorithm's and the meter's state) as its newest, the metrics rows written
before it, and fork.json naming where it came from. `python -m grpo_zoo.train NEW_DIR/config.yaml`
then continues from there: with no override exactly as the run went on from that checkpoint,
with overrides (a learning rate, a budget, a clip range) as a branch of it. The model cannot
change (the checkpoint's weights are that model's). RUN is only read; NEW_DIR must not exist
and is made whole or not at all.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import yaml

from grpo_zoo.errors import ArgParser, ConfigError, cli, readable_dir
from grpo_zoo.runs.files import check_new_dir, staged_dir


def fork(run_dir: str | Path, new_dir: str | Path, checkpoint: str | None = None, overrides: list[str] = ()) -> Path:
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import apply_overrides, build, to_dict
    from grpo_zoo.export import checkpoint_dir
    from grpo_zoo.runs import RunDir
    from grpo_zoo.runs.identity import config_difference, read_fields

    run, new = RunDir(run_dir), check_new_dir(new_dir, "new_dir")
    run.check_state()
    old = run.config()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r}: expected dotted.key=value overrides after the directories")
        if item.split("=", 1)[0].strip() == "run_dir":
            raise ConfigError("run_dir: a fork's directory is NEW_DIR; give it there")
    cfg = build(RunConfig, apply_overrides({**old, "run_dir": str(new)}, list(overrides)))
    changed = config_difference(read_fields({"model": old.get("model")}), {"model": to_dict(cfg.model)})
    if changed:
        raise ConfigError(
            f"{changed.split(':')[0]}: the model cannot change in a fork (its checkpoint holds that model)"
        )
    ckpt = checkpoint_dir(run, checkpoint)
    state_file = ckpt / "trainer_rank0.pt"
    if not state_file.is_file():
        raise ConfigError(f"--checkpoint: {ckpt} lacks trainer_rank0.pt")
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    keep = state.get("metrics_rows")
    lines = (run.path / "metrics.jsonl").read_text().splitlines(keepends=True)
    if keep is None:  # a checkpoint of before the row count: the rows up to its step
        lines = [line for line in lines if json.loads(line).get("step", 0) <= state["step"]]
    elif len(lines) < keep:
        raise ConfigError(
            f"run_dir: {run.path / 'metrics.jsonl'} holds {len(lines)} rows, fewer than {ckpt.name}'s {keep}"
        )
    else:
        lines = lines[:keep]
    with staged_dir(new, "new_dir") as staging:
        (staging / "checkpoints").mkdir()
        shutil.copytree(ckpt, staging / "checkpoints" / ckpt.name)
        (staging / "checkpoints" / "latest").write_text(ckpt.name + "\n")
        (staging / "metrics.jsonl").write_text("".join(lines))
        (staging / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        record = {"run": str(run.path), "checkpoint": ckpt.name, "step": state["step"], "overrides": list(overrides)}
        (staging / "fork.json").write_text(json.dumps(record, indent=1) + "\n")
    return new


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.fork", description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("new_dir")
    p.add_argument("--checkpoint", default=None, help="step-N (default: the newest)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value changes for the fork")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # overrides before or after --checkpoint
    readable_dir(args.run_dir, "run_dir")
    new = fork(args.run_dir, args.new_dir, args.checkpoint, args.overrides)
    print(f"forked: {new} (continue with python -m grpo_zoo.train {new / 'config.yaml'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
