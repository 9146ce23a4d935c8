"""Write the report of a set of runs: `python -m grpo_zoo.report RUNS_DIR [--out DIR]`.

Reads every run directory under RUNS_DIR and writes, into --out (default RUNS_DIR/report):
plots (PNG and PDF): reward versus compute, reward curves (collapse), ablation bars,
gradient size by timestep; tables (Markdown and LaTeX): Table 1, efficiency, ablations,
collapse; and report.md, an index that shows them all.

Runs of different budgets, evaluations (samples, steps, prompts, seed, guidance) or base
models do not rank as one leaderboard: the report refuses them in one line, or with `--group`
writes one report per comparable group (RUNS_DIR/report/<n>/) and an index naming each group's
budget, evaluation and base model.

Speed-ups are measured against a baseline variant: `--baseline NAME`, else the one the
experiment declares (`report: {baseline: NAME}`, recorded by the sweep in
RUNS_DIR/experiment.json), else the experiment's first variant; a folder of runs without
that record falls back to the first variant in sorted order, and the report says so.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from grpo_zoo.errors import FINITE, ArgParser, ConfigError, cli, number, readable_dir, writable_dir
from grpo_zoo.runs.files import atomic_write


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    target: float | None = None,
    drop: float | None = None,
    below_base: float | None = None,
    x: str | None = None,
    baseline: str | None = None,
    experiment: dict | None = None,
    group: bool = False,
) -> Path:
    """`baseline`: the variant speed-ups are measured against (default: the experiment's);
    `experiment`: the record (variants, baseline) to use where `root` has none (runs swept
    before the sweep left one)."""
    from grpo_zoo.analysis import load_runs
    from grpo_zoo.analysis.load import mixed

    root = Path(root)
    out = Path(out) if out else root / "report"
    data = load_runs(root)
    data.experiment = data.experiment or dict(experiment or {})
    why = mixed(data.runs)
    if why is not None and not group:
        raise ConfigError(f"runs_dir: {why}; they do not rank as one leaderboard (--group reports each set apart)")
    if why is not None:
        return _grouped(root, out, data, dict(target=target, drop=drop, below_base=below_base, x=x, baseline=baseline))
    return _report(root, out, data, target, drop, below_base, x, baseline)


def _grouped(root: Path, out: Path, data, options: dict) -> Path:
    """One report per comparable group, out/1, out/2, ..., and an index."""
    from grpo_zoo.analysis.load import groups_of, subset

    lines = [f"# Report: {root}", "", "The runs fall into groups that do not rank together; one report each:", ""]
    for i, (label, paths) in enumerate(groups_of(data.runs), 1):
        part = subset(data, paths)
        variants = ", ".join(dict.fromkeys(part.runs["variant"]))
        try:
            _report(root, out / str(i), part, **options)
            lines.append(f"{i}. [{label}]({i}/report.md): {len(paths)} runs ({variants})")
        except ValueError as err:  # e.g. a baseline absent from this group
            lines.append(f"{i}. {label}: {len(paths)} runs ({variants}); no report: {err}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    atomic_write(out / "headline.txt", lines[2] + "\n")
    return out / "report.md"


def ranked_on(data) -> list[str]:
    """The line saying which evaluation the report ranks on, where it is not the training reward."""
    metric = data.experiment.get("metric")
    if not metric:
        return []
    trained = ", ".join(sorted(str(r) for r in data.runs["reward"].dropna().unique()))
    return [
        f"Every eval reward here is {metric} (the experiment's report.metric); the runs trained on {trained}, "
        "whose evaluation is eval/train_reward in the metrics."
    ]


def _report(root: Path, out: Path, data, target, drop, below_base, x, baseline) -> Path:
    from grpo_zoo.analysis.plots import all_plots
    from grpo_zoo.analysis.stats import BELOW_BASE, DROP, HACK_FALL, SMOOTH, TEST_NAME, collapse_table, hacking_table
    from grpo_zoo.analysis.tables import (
        UNITS,
        ablation,
        baseline_of,
        common_target,
        compute_axis,
        efficiency,
        headline,
        leaderboard,
        power,
        render,
        table1,
    )

    drop = DROP if drop is None else drop
    below_base = BELOW_BASE if below_base is None else below_base
    x = x or compute_axis(data)
    base, chosen = baseline_of(data, baseline)
    out.mkdir(parents=True, exist_ok=True)
    plots = all_plots(data, out, x)
    eff, used_target = efficiency(data, target, x, base)
    target_text = "given with --target" if target is not None else common_target(data)[1]
    col = collapse_table(data, drop=drop, below_base=below_base)
    col["run"] = col["run"].map(lambda p: Path(p).name)
    hacking = hacking_table(data)
    board, board_target = leaderboard(data, used_target, x, drop, base)
    tables = {
        "leaderboard": board,
        "table1": table1(data),
        "efficiency": eff,
        "ablation": ablation(data),
        "collapse": col,
        **({"hacking": hacking} if not hacking.empty else {}),
    }
    for name, df in tables.items():
        atomic_write(out / f"{name}.md", render(df, "md") + "\n")  # each output whole or not at all
        atomic_write(out / f"{name}.tex", render(df, "tex"))
    atomic_write(out / "runs.csv", data.runs.to_csv(index=False))
    lines = [
        f"# Report: {root}",
        "",
        headline(data, drop),
        "",
        f"{len(data)} runs, {data.runs['variant'].nunique()} variants; base model {data.runs['base_model'].iloc[0]}, "
        f"budget {data.runs['budget'].iloc[0]}, evaluation {data.runs['evaluation'].iloc[0]}. Compute is compared in "
        f"{UNITS.get(x, x)} ({'exact and independent of load' if x == 'compute/flops' else 'wall time x devices'}), "
        "training only (evaluation excluded); device-hours are measured beside FLOPs in every run. "
        f"Mean ± half the 95% t-interval over seeds (no interval below 2 seeds); best per column in bold; "
        f"differences by {TEST_NAME} (p < 0.05, else n.s.; 'n = 1' where a side has one seed: no test), speed-ups "
        "by the same test on log costs, so a speed-up's CI and its verdict agree.",
        *ranked_on(data),
        "",
        f"## Leaderboard (equal budget; compute to eval reward {board_target:.3f})",
        "",
        render(board, "md"),
        "",
        power(data, base),
        "",
        "## Table 1",
        "",
        render(tables["table1"], "md"),
        "",
        f"## Efficiency (target eval reward {used_target:.3f})",
        "",
        f"The target: {target_text}.",
        "",
        f"Speed-ups against {base}: {chosen if baseline is None else 'chosen with --baseline'}.",
        "",
        render(eff, "md"),
        "",
        "## Ablations",
        "",
        render(tables["ablation"], "md"),
        "",
        f"## Collapse (at any point: eval reward, or the {SMOOTH}-iteration mean train reward, below the base "
        f"model's{f' by {below_base:.0%}' if below_base else ''} or {drop:.0%} below its running best, even if it "
        "recovers; or zero-std / KL blow-up)",
        "",
        render(col, "md"),
        "",
        f"### Reward hacking (the training reward rising while another entry of its reward falls by more than "
        f"{HACK_FALL:.0%} of its first evaluation)",
        "",
        render(hacking, "md") if not hacking.empty else "The runs log no other reward entry.",
        "",
        "## Plots",
        "",
    ]
    captions = {
        "reward_vs_compute": "Eval reward against compute, mean and 95% CI over seeds.",
        "reward_curves": "Training and evaluation reward against iteration.",
        "ablation_bars": "Final eval reward per variant; dashed: the base model.",
        "grad_norm_by_timestep": "Per-transition gradient size against the trained timestep (log scale).",
    }
    for name, path in plots.items():
        lines += [f"### {captions[name]}", "", f"![{name}]({path.name}) ([PDF]({path.stem}.pdf))", ""]
    atomic_write(out / "report.md", "\n".join(lines))
    atomic_write(out / "headline.txt", lines[2] + "\n")
    return out / "report.md"


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.report", description=__doc__.split("\n")[0])
    p.add_argument("runs_dir")
    p.add_argument("--out", default=None, help="output directory (default RUNS_DIR/report)")
    p.add_argument("--target", type=number(float, FINITE), default=None, help="eval reward for the efficiency table")
    p.add_argument(
        "--collapse-drop",
        type=number(float, FINITE),
        default=None,
        help="share below the running best that flags collapse (default 0.25)",
    )
    p.add_argument(
        "--below-base",
        type=number(float, FINITE),
        default=None,
        help="share below the base model's reward that flags collapse (default 0.05; 0: any fall below it)",
    )
    p.add_argument(
        "--x", default=None, choices=("flops", "device_hours"), help="compute axis (default: the runs' budget unit)"
    )
    p.add_argument(
        "--group",
        action="store_true",
        help="runs of different budgets, evaluations or base models: one report per group (default: refuse them)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="the variant speed-ups are measured against (default: the experiment's report.baseline, "
        "else its first variant)",
    )
    return p


def check_baseline(root: str | Path, baseline: str | None) -> None:
    """The baseline (--baseline, else the experiment's) names a variant under `root`: checked
    from the folder names and the sweep's record, before any metrics are read (ConfigError)."""
    from grpo_zoo.analysis.load import read_experiment, variants_under
    from grpo_zoo.analysis.tables import pick_baseline

    variants, experiment = variants_under(root), read_experiment(root)  # a damaged record: ValueError
    if not variants:
        return  # no runs: load_runs says so
    try:
        pick_baseline(variants, experiment, baseline)
    except ValueError as err:
        raise ConfigError(f"{'runs_dir' if baseline is None else '--baseline'}: {err}") from None


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    readable_dir(args.runs_dir, "runs_dir")
    writable_dir(args.out or Path(args.runs_dir) / "report", "--out")
    if args.collapse_drop is not None and not 0 < args.collapse_drop < 1:
        raise ConfigError(f"--collapse-drop: must lie in (0, 1), got {args.collapse_drop}")
    if args.below_base is not None and not 0 <= args.below_base < 1:
        raise ConfigError(f"--below-base: must lie in [0, 1), got {args.below_base}")
    if args.target is not None and not math.isfinite(args.target):
        raise ConfigError(f"--target: must be a finite reward, got {args.target}")
    x = None if args.x is None else f"compute/{args.x}"
    try:
        check_baseline(args.runs_dir, args.baseline)
        path = write_report(
            args.runs_dir,
            args.out,
            args.target,
            args.collapse_drop,
            args.below_base,
            x,
            args.baseline,
            group=args.group,
        )
    except ConfigError:  # a malformed metrics file: its file:line, as it is
        raise
    except ValueError as err:
        raise ConfigError(f"runs_dir: {err}") from None
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
