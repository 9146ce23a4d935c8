"""Train one run: `python -m grpo_zoo.train CONFIG.yaml [dotted.key=value ...]`.

The config file sets fields of the run config (a top-level `base: other.yaml` is
loaded first and merged under it); `dotted.key=value` arguments override
them (values are YAML: `optim.lr=3e-4`, `algorithm.k_range=[0,5]`, `budget.steps=null`).
`run_dir=...` picks the run directory; an existing one is resumed from its newest readable
checkpoint (one trainer per directory; a completed one given another config is refused).
Exit status: 0 done, 1 diverged (NaN/inf loss or reward), 2 bad input, 128+N ended by signal N.
`--help` lists every field with its one-line doc. Bad input: one line, exit status 2.
"""

from __future__ import annotations

import sys

from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import apply_overrides, build, describe, load_config_file
from grpo_zoo.errors import ConfigError, cli


def resolve(argv: list[str]) -> RunConfig:
    data: dict = {}
    args = list(argv)
    if args and "=" not in args[0]:
        data = load_config_file(args.pop(0))
    for a in args:
        if "=" not in a:
            raise ConfigError(f"argument {a!r}: expected CONFIG.yaml first, then dotted.key=value overrides")
    return build(RunConfig, apply_overrides(data, args))


def help_text() -> str:
    from grpo_zoo.core import algorithm

    lines = [__doc__.strip(), "", "Fields (algorithm fields depend on algorithm.name):"]
    lines += describe(RunConfig)
    for name in algorithm.names():
        cls = algorithm.get(name).Config
        lines.append(f"algorithm.name={name}:")
        lines += [line for line in describe(cls, prefix="algorithm.") if not line.strip().startswith("algorithm.name ")]
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0
    cfg = resolve(argv)
    from grpo_zoo.config.schema import to_dict
    from grpo_zoo.runs import RunDir, Terminated
    from grpo_zoo.training.trainer import NonFiniteError, Trainer

    run = RunDir(cfg.run_dir)
    if run.is_complete():
        run.check_config(to_dict(cfg))  # another run, or a smaller budget than it ran to: exit 2
        if run.config().get("budget") == to_dict(cfg)["budget"]:
            print(f"{cfg.run_dir}: already completed (delete it to train again)")
            return 0
        print(f"{cfg.run_dir}: completed; extending it to the raised budget from its last checkpoint", flush=True)
    try:
        summary = Trainer(cfg).train()
    except NonFiniteError as err:
        print(f"error: run diverged: {err}", file=sys.stderr)
        return 1
    except Terminated as err:  # status.json says terminated / interrupted; rerun to resume
        print(f"{cfg.run_dir}: {err.status} by {err}; run the same command to resume", file=sys.stderr)
        return 128 + err.signum
    print(
        f"{cfg.run_dir}: {summary['reason']}; eval/reward {summary['eval/reward']:.4f}; "
        f"{summary['compute/device_hours'] * 3600:.1f} device-seconds, {summary['compute/nfe']:.0f} NFE"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
