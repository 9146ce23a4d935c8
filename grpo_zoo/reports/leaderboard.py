"""The leaderboard section of RESULTS.md: every registered algorithm at one FLOPs budget
(experiments/zoo/leaderboard.yaml), its table and plot, and each method's published
efficiency claim (experiments/zoo/claims.yaml) against what the toy world shows.

Verdicts, per claim of a speed-up S over a baseline (95% CI of the toy's ratio: Welch's t on log costs),
the rule declared on 2026-12-07 before the leaderboard at the references' settings ran:
reproduced when the whole CI lies at or above S (the data rule out every smaller speed-up);
not reproduced when the whole CI lies below S; inconclusive when it holds S and less (the
rule before, "the CI reaches S", called a CI of [1.3, 7] reproduced). A seed that never reaches the common target counts at all it spent, so the
speed-up is a bound (a lower one when only the baseline's seeds fell short, an upper one
when the method's did): it decides only when even the bound settles it, else the verdict
is inconclusive, as it is with fewer than 2 seeds per method. A claim about collapse is
reproduced when the method collapsed in significantly fewer seeds than its baseline
(Fisher's exact test, one-sided, p < 0.05), inconclusive when fewer but not significantly
or when the baseline never collapsed (nothing to mitigate), not reproduced otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/zoo/leaderboard.yaml"
CLAIMS = ROOT / "experiments/zoo/claims.yaml"
FOLDER = "leaderboard"


VERDICTS = (
    "Reproduced: the whole CI lies at or above the claimed factor; not reproduced: it lies below it; inconclusive: "
    "it holds the factor and less. A seed that never reaches "
    "the target counts at all it spent, which makes the speed-up a bound that decides only when even the bound "
    "settles it, else inconclusive."
)


def _costs(data, variant: str, target: float, x: str) -> tuple[np.ndarray, int]:
    """Per seed: compute to reach `target` (all it spent when it never did) and how many reached it."""
    from grpo_zoo.analysis.stats import cost_to_target

    hits = cost_to_target(data, target, x)
    hits = hits.loc[hits["variant"] == variant]
    return hits["cost"].to_numpy(float), int(hits["reached"].sum())


def check_claims(data, target: float, x: str) -> list[dict]:
    from grpo_zoo.analysis.stats import collapse_table, factor_verdict, ratio_ci

    claims = yaml.safe_load(CLAIMS.read_text()) or {}
    variants = set(data.runs["variant"])
    col = collapse_table(data)
    rows = []
    for method, c in claims.items():
        base = c["baseline"]
        row = {"Method": method, "Claim": c["claim"], "Baseline": base}
        if method not in variants or base not in variants:
            missing = method if method not in variants else base
            rows.append({**row, "Toy world": "-", "Verdict": "inconclusive", "Reason": f"no runs of {missing}"})
            continue
        if c["kind"] == "collapse":
            m = col[col["variant"] == method]["collapsed"]
            b = col[col["variant"] == base]["collapsed"]
            toy = f"collapsed {int(m.sum())}/{len(m)} seeds, {base} {int(b.sum())}/{len(b)}"
            from scipy.stats import fisher_exact

            table = [[int(m.sum()), len(m) - int(m.sum())], [int(b.sum()), len(b) - int(b.sum())]]
            p = float(fisher_exact(table, alternative="less").pvalue)
            if b.sum() == 0:
                verdict, reason = "inconclusive", f"{base} never collapsed here: nothing to mitigate"
            elif m.sum() / len(m) >= b.sum() / len(b):
                verdict, reason = "not reproduced", "as many or more seeds collapsed than the baseline"
            elif p < 0.05:
                verdict, reason = (
                    "reproduced",
                    f"fewer seeds collapsed than the baseline (Fisher's exact test, p={p:.3f})",
                )
            else:
                verdict, reason = (
                    "inconclusive",
                    f"fewer seeds collapsed, but not significantly (Fisher's exact test, p={p:.2f})",
                )
            rows.append({**row, "Toy world": toy, "Verdict": verdict, "Reason": reason})
            continue
        factor = float(c["factor"])
        if c["kind"] == "per_iteration":
            per = data.runs.assign(it=data.runs[x] / data.runs["steps"].clip(lower=1))
            mc, bc = (per.loc[per["variant"] == v, "it"].to_numpy(float) for v in (method, base))
            reached_note = ""
            bound = False
        else:
            mc, m_hit = _costs(data, method, target, x)
            bc, b_hit = _costs(data, base, target, x)
            short_m, short_b = m_hit < len(mc), b_hit < len(bc)
            bound = "both" if short_m and short_b else "upper" if short_m else "lower" if short_b else False
            reached_note = f"; seeds reaching {target:.3f}: {method} {m_hit}/{len(mc)}, {base} {b_hit}/{len(bc)}"
        speed, lo, hi = ratio_ci(bc, mc)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # no spread over seeds (a per-iteration cost): the point
            lo = hi = speed
        toy = (f"{speed:.2f}x [{lo:.2f}, {hi:.2f}]" if hi > lo else f"{speed:.2f}x") + reached_note
        what = "per iteration" if c["kind"] == "per_iteration" else f"to reward {target:.3f}"
        if min(len(mc), len(bc)) < 2:
            verdict, reason = "inconclusive", "fewer than 2 seeds"
        elif bound == "lower" and lo >= factor:  # the baseline's unreached seeds only make it slower
            verdict, reason = "reproduced", f"even as a lower bound the speed-up {what} reaches {factor:g}x"
        elif bound == "upper" and hi < factor:  # the method's unreached seeds only make it slower
            verdict, reason = "not reproduced", f"even as an upper bound the speed-up {what} stays below {factor:g}x"
        elif bound == "both":
            verdict, reason = "inconclusive", f"seeds of both never reached {target:.3f}: the speed-up is unknown"
        elif bound:
            verdict, reason = (
                "inconclusive",
                f"a seed never reached {target:.3f}: the speed-up is only {'an' if bound == 'upper' else 'a'} {bound} bound",
            )
        else:
            verdict = factor_verdict(lo, hi, factor)
            reason = {
                "not reproduced": f"the CI of the speed-up {what} lies below {factor:g}x",
                "reproduced": f"the whole CI of the speed-up {what} lies at or above {factor:g}x",
                "inconclusive": f"the CI of the speed-up {what} holds {factor:g}x and as little as {lo:.2f}x",
            }[verdict]
        rows.append({**row, "Toy world": toy, "Verdict": verdict, "Reason": reason})
    return rows


def section(root: Path, out: Path, assets: Path) -> list[str]:
    """RESULTS.md's leaderboard section from RUNS/leaderboard (empty when it was not run)."""
    import shutil

    import pandas as pd

    from grpo_zoo.analysis import load_runs
    from grpo_zoo.analysis.tables import baseline_of, compute_axis, power, render
    from grpo_zoo.report import write_report

    folder = root / FOLDER
    if not folder.is_dir():
        return []
    report = write_report(folder)
    data = load_runs(folder)
    x = compute_axis(data)
    board = report.parent.joinpath("leaderboard.md").read_text().strip()
    target = float(board.split("to reward ")[1].split()[0]) if "to reward " in board else float("nan")
    checks = check_claims(data, target, x)
    src = report.parent / "reward_vs_compute.png"
    dst = assets / "leaderboard_reward_vs_compute.png"
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    link = dst.relative_to(out.parent) if dst.is_relative_to(out.parent) else dst
    return [
        f"## Leaderboard (`{EXPERIMENT}`)",
        "",
        "Every registered algorithm on one training-FLOPs budget, each at its reference's settings (its trust region, "
        'noise, optimizer schedule, advantage convention, EMA and weight decay: README, "Settings per method") and the '
        "bench's optimizer scale (experiments/zoo/optim_scale.md), scored on 256 fixed-noise held-out samples; what the "
        "file shrank to fit this machine is said in it. The earlier leaderboard, every method at one shared trust region, "
        "noise and schedule, is experiments/zoo/leaderboard_bench_wide.yaml. Differences marked paired pair seed s with "
        "seed s on the same evaluation samples.",
        "",
        report.parent.joinpath("headline.txt").read_text().strip(),
        "",
        board,
        "",
        power(data, baseline_of(data)[0]),
        "",
        f"![leaderboard: reward against compute]({link})",
        "",
        "### Each method's published claim against the toy world",
        "",
        "Claims as the methods' papers state them (experiments/zoo/claims.yaml, each with its source); the toy's speed-up is the "
        "baseline's compute over the method's, with its 95% CI over seeds (Welch's t on log costs). " + VERDICTS,
        "",
        render(pd.DataFrame(checks), "md"),
        "",
    ]
