"""Aggregates over seeds, curves on a common compute axis, collapse detection, time to target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from grpo_zoo.analysis.load import Runs


def mean_ci(values, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a bootstrap confidence interval (scipy.stats.bootstrap); NaN bounds for n < 2."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) < 2:
        return float(x[0]), float("nan"), float("nan")
    if np.allclose(x, x[0]):
        return float(x[0]), float(x[0]), float(x[0])
    res = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=2000, method="percentile", random_state=seed
    )
    return float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def aggregate(runs: pd.DataFrame, columns: list[str], by: str = "variant") -> pd.DataFrame:
    """Per variant: n seeds, and mean / CI low / CI high of each column."""
    out = []
    for key, group in runs.groupby(by, sort=False):
        row = {by: key, "seeds": len(group)}
        for col in columns:
            if col not in group:
                continue
            m, lo, hi = mean_ci(group[col].to_numpy(dtype=float))
            row[col], row[f"{col} ci_low"], row[f"{col} ci_high"] = m, lo, hi
        out.append(row)
    return pd.DataFrame(out)


def curve_on_grid(evals: pd.DataFrame, x: str, y: str, points: int = 50) -> pd.DataFrame:
    """Each run's y interpolated on a shared x grid (up to the shortest run's reach), per variant."""
    out = []
    for variant, group in evals.groupby("variant", sort=False):
        runs = [g.sort_values(x) for _, g in group.groupby("run")]
        reach = min(g[x].max() for g in runs)
        if not np.isfinite(reach) or reach <= 0:
            continue
        grid = np.linspace(0, reach, points)
        for g in runs:
            values = np.interp(grid, g[x].to_numpy(float), g[y].to_numpy(float))
            out.append(pd.DataFrame({"variant": variant, "run": g["run"].iloc[0], x: grid, y: values}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["variant", "run", x, y])


@dataclass
class Collapse:
    collapsed: bool
    step: int | None
    reason: str


def detect_collapse(
    evals: pd.DataFrame,
    train: pd.DataFrame,
    drop: float = 0.3,
    zero_std: float = 0.8,
    kl: float = 1.0,
) -> Collapse:
    """One run: collapsed when its eval reward falls `drop` (a fraction) below its best and
    stays there to the end, or its zero-std ratio or approx-KL blows up (>= the thresholds on
    the last three train rows)."""
    if not evals.empty:
        r = evals.sort_values("step")
        rewards, steps = r["eval/reward"].to_numpy(float), r["step"].to_numpy()
        best = np.maximum.accumulate(rewards)
        below = rewards < best * (1 - drop)
        if below[-1]:
            first = len(below) - 1
            while first > 0 and below[first - 1]:
                first -= 1
            return Collapse(
                True, int(steps[first]), f"eval reward {rewards[-1]:.3g} < {1 - drop:.0%} of best {best[-1]:.3g}"
            )
    if not train.empty:
        t = train.sort_values("step").tail(3)
        if "stats/zero_std_ratio" in t and (t["stats/zero_std_ratio"] >= zero_std).all():
            return Collapse(True, int(t["step"].iloc[0]), "rewards in a group all equal (zero std)")
        if "stats/approx_kl" in t and (t["stats/approx_kl"] >= kl).all():
            return Collapse(True, int(t["step"].iloc[0]), "approx KL blew up")
    return Collapse(False, None, "")


def collapse_table(data: Runs, drop: float = 0.3) -> pd.DataFrame:
    rows = []
    for run, info in data.runs.set_index("run").iterrows():
        ev = data.evals[data.evals["run"] == run] if not data.metrics.empty else pd.DataFrame()
        tr = data.train[data.train["run"] == run] if not data.metrics.empty else pd.DataFrame()
        c = detect_collapse(ev, tr, drop=drop)
        rows.append(
            {
                "run": run,
                "variant": info["variant"],
                "collapsed": c.collapsed,
                "collapse_step": c.step,
                "collapse_reason": c.reason,
            }
        )
    return pd.DataFrame(rows)


def compute_to_target(evals: pd.DataFrame, target: float, x: str = "compute/device_hours") -> pd.DataFrame:
    """Per run: the compute at which eval/reward first reaches `target` (linear interpolation
    between evaluations; NaN if never)."""
    rows = []
    for run, g in evals.groupby("run", sort=False):
        g = g.sort_values("step")
        xs, ys = g[x].to_numpy(float), g["eval/reward"].to_numpy(float)
        hit = float("nan")
        for i in range(len(ys)):
            if ys[i] >= target:
                if i == 0:
                    hit = xs[0]
                else:
                    frac = (target - ys[i - 1]) / (ys[i] - ys[i - 1]) if ys[i] != ys[i - 1] else 1.0
                    hit = xs[i - 1] + frac * (xs[i] - xs[i - 1])
                break
        rows.append({"run": run, "variant": g["variant"].iloc[0], "algorithm": g["algorithm"].iloc[0], x: hit})
    return pd.DataFrame(rows)
