"""Write the report of a set of runs: `python -m grpo_zoo.report RUNS_DIR [--out DIR]`.

Reads every run directory under RUNS_DIR and writes, into --out (default RUNS_DIR/report):
plots (PNG and PDF): reward versus compute, reward curves (collapse), ablation bars,
gradient size by timestep; tables (Markdown and LaTeX): Table 1, efficiency, ablations,
collapse; and report.md, an index that shows them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpo_zoo.errors import FINITE, ArgParser, ConfigError, cli, number, readable_dir, writable_dir


def write_report(
    root: str | Path, out: str | Path | None = None, target: float | None = None, drop: float = 0.3
) -> Path:
    from grpo_zoo.analysis import load_runs
    from grpo_zoo.analysis.plots import all_plots
    from grpo_zoo.analysis.stats import collapse_table
    from grpo_zoo.analysis.tables import ablation, efficiency, render, table1

    root = Path(root)
    out = Path(out) if out else root / "report"
    data = load_runs(root)
    out.mkdir(parents=True, exist_ok=True)
    plots = all_plots(data, out)
    eff, used_target = efficiency(data, target)
    col = collapse_table(data, drop=drop)
    col["run"] = col["run"].map(lambda p: Path(p).name)
    tables = {"table1": table1(data), "efficiency": eff, "ablation": ablation(data), "collapse": col}
    for name, df in tables.items():
        (out / f"{name}.md").write_text(render(df, "md") + "\n")
        (out / f"{name}.tex").write_text(render(df, "tex"))
    data.runs.to_csv(out / "runs.csv", index=False)
    lines = [
        f"# Report: {root}",
        "",
        f"{len(data)} runs, {data.runs['variant'].nunique()} variants. Compute is wall time x devices "
        "(device-hours; GPU-hours on GPUs), training only (evaluation excluded). Mean ± half the 95% "
        "bootstrap CI over seeds; best per column in bold.",
        "",
        "## Table 1",
        "",
        render(tables["table1"], "md"),
        "",
        f"## Efficiency (target eval reward {used_target:.3f})",
        "",
        render(eff, "md"),
        "",
        "## Ablations",
        "",
        render(tables["ablation"], "md"),
        "",
        f"## Collapse (eval reward {drop:.0%} below its best to the end, or zero-std / KL blow-up)",
        "",
        render(col, "md"),
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
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.report", description=__doc__.split("\n")[0])
    p.add_argument("runs_dir")
    p.add_argument("--out", default=None, help="output directory (default RUNS_DIR/report)")
    p.add_argument("--target", type=number(float, FINITE), default=None, help="eval reward for the efficiency table")
    p.add_argument(
        "--collapse-drop", type=number(float, FINITE), default=0.3, help="fraction below best that flags collapse"
    )
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    readable_dir(args.runs_dir, "runs_dir")
    writable_dir(args.out or Path(args.runs_dir) / "report", "--out")
    if not 0 < args.collapse_drop < 1:
        raise ConfigError(f"--collapse-drop: must lie in (0, 1), got {args.collapse_drop}")
    try:
        path = write_report(args.runs_dir, args.out, args.target, args.collapse_drop)
    except ValueError as err:
        raise ConfigError(f"runs_dir: {err}") from None
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
