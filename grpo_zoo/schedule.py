"""Show a sampling schedule with its noise and lambda(t), step by step.

    python -m grpo_zoo.schedule --schedule wan --steps 20 --shift 3 --noise flow_sde

One row per step: step, sigma, dt, std (std_t), step_std (std_t * sqrt(-dt)),
lambda (the log-prob gradient's scale at that step) and inv_lambda (Flash-GRPO's
rectification coefficient c = 1/lambda). A summary line gives lambda's max/min ratio.
"""

from __future__ import annotations

import json
import sys

from grpo_zoo.errors import NOISE_LEVEL, SHIFT, STEPS, ArgParser, ConfigError, cli, number
from grpo_zoo.flow import NOISE_KINDS, SCHEDULES, make_sigmas, step_table

COLUMNS = ("step", "sigma", "dt", "std", "step_std", "lambda", "inv_lambda")


def table_rows(schedule: str, steps: int, shift: float, noise: str, noise_level: float | None) -> list[dict]:
    return step_table(make_sigmas(schedule, steps, shift), noise, noise_level).rows()


def format_table(rows: list[dict]) -> str:
    lines = ["  ".join(f"{c:>10}" for c in COLUMNS)]
    for row in rows:
        cells = [f"{row['step']:>10d}"] + [f"{row[c]:>10.5g}" for c in COLUMNS[1:]]
        lines.append("  ".join(cells))
    lams = [r["lambda"] for r in rows if r["lambda"] > 0]
    if lams:
        lines.append(
            f"lambda max/min over noisy steps: {max(lams):.4g} / {min(lams):.4g} = {max(lams) / min(lams):.4g}x"
        )
    return "\n".join(lines)


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.schedule", description=__doc__.split("\n")[0])
    p.add_argument("--schedule", default="wan", help=f"one of {', '.join(SCHEDULES)} (default wan)")
    p.add_argument("--steps", type=number(int, STEPS), default=20, help="number of sampling steps N (default 20)")
    p.add_argument("--shift", type=number(float, SHIFT), default=3.0, help="timestep shift s (default 3, Wan 480p)")
    p.add_argument("--noise", default="flow_sde", help=f"one of {', '.join(NOISE_KINDS)} (default flow_sde)")
    p.add_argument(
        "--noise-level",
        type=number(float, NOISE_LEVEL),
        default=None,
        help="a for flow_sde/cps/constant, scale for wan_linear",
    )
    p.add_argument("--format", default="table", choices=("table", "json"))
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule: unknown schedule {args.schedule!r} (choose one of {', '.join(SCHEDULES)})")
    if args.noise not in NOISE_KINDS:
        raise ConfigError(f"--noise: unknown noise kind {args.noise!r} (choose one of {', '.join(NOISE_KINDS)})")
    if args.steps > 100_000:
        raise ConfigError(f"--steps: at most 100000 sampling steps, got {args.steps}")
    rows = table_rows(args.schedule, args.steps, args.shift, args.noise, args.noise_level)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
