"""Aggregates over seeds, curves on a common compute axis, collapse detection, time to target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from grpo_zoo.analysis.load import Runs


def _finite(values) -> np.ndarray:
    return np.asarray([v for v in values if np.isfinite(v)], dtype=float)


def mean_ci(values, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean and Student's t-interval over seeds (valid at any n >= 2 for normal per-seed values,
    unlike a percentile bootstrap, which at n = 2 is the min-max range); NaN bounds for n < 2.
    `seed` is unused (kept for callers of the bootstrap this replaced)."""
    x = _finite(values)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) < 2:
        return float(x[0]), float("nan"), float("nan")
    m = float(x.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


ALPHA = 0.05
TEST_NAME = "Welch's t-test"
CI_NAME = "95% t-interval over seeds"


def too_few(x: np.ndarray, y: np.ndarray) -> str | None:
    """The label of a comparison that cannot be made (fewer than two seeds on a side), else None."""
    n = min(len(x), len(y))
    return f"n = {n}" if n < 2 else None


def significance(a, b, alpha: float = ALPHA) -> tuple[float, str]:
    """Two-sided Welch's t-test (scipy.stats.ttest_ind, unequal variances) between two samples
    of per-seed values: the p-value and a label, "p=0.012" or "n.s." (p >= alpha, or no spread
    at all); with fewer than two seeds on a side no test is made: (NaN, "n = 1")."""
    x, y = _finite(a), _finite(b)
    if too_few(x, y):
        return float("nan"), too_few(x, y)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return (1.0, "n.s.") if x[0] == y[0] else (0.0, "p<0.001")
    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return p, label_of(p, alpha)


def label_of(p: float, alpha: float = ALPHA) -> str:
    if not np.isfinite(p) or p >= alpha:
        return "n.s."
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


PAIRED_NAME = "paired by seed"


def paired(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> tuple[float, float, float, float, int]:
    """The mean of a[s] - b[s] over the seeds s both have (every run is scored on the same
    fixed-noise eval samples, so each difference is paired by sample too), its Student's
    t-interval and two-sided p (the paired t-test, scipy.stats.ttest_rel): (mean, low, high, p, n).
    Fewer than two pairs: no interval, no p (NaN)."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    d = (both["a"] - both["b"]).to_numpy(float)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), float("nan"), 0
    m, lo, hi = mean_ci(d, confidence)
    if n < 2:
        return m, lo, hi, float("nan"), n
    if np.ptp(d) == 0:
        return m, m, m, (1.0 if m == 0 else 0.0), n
    return m, lo, hi, float(stats.ttest_1samp(d, 0.0).pvalue), n


def detectable(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The minimum detectable difference of a two-sided paired t-test over n pairs whose
    differences have standard deviation sd: (t_{1 - alpha/2} + t_{power}) sd / sqrt(n), n - 1
    degrees of freedom (the usual normal-approximation formula with t quantiles)."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    dof = n - 1
    return float((stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)) * sd / np.sqrt(n))


def ratio_test(num, den, confidence: float = 0.95) -> tuple[float, float, float, float, str]:
    """A speed-up (or any ratio of positive per-seed costs) and its test, one and the same: Welch's
    t-test on the logs, so the ratio is exp(mean log num - mean log den) (of geometric means),
    its CI exp(difference +- t * se) with Welch-Satterthwaite degrees of freedom, and its p-value
    the test of that difference: the CI excludes 1 exactly when p < 1 - confidence. Returns
    (ratio, low, high, p, label); fewer than two seeds a side: no CI and the label "n = 1"."""
    x, y = _finite(num), _finite(den)
    x, y = x[x > 0], y[y > 0]
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan"), float("nan"), float("nan"), "-"
    lx, ly = np.log(x), np.log(y)
    diff = float(lx.mean() - ly.mean())
    if too_few(x, y):
        return float(np.exp(diff)), float("nan"), float("nan"), float("nan"), too_few(x, y)
    vx, vy = lx.var(ddof=1) / len(x), ly.var(ddof=1) / len(y)
    se = float(np.sqrt(vx + vy))
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        return float(np.exp(diff)), float(np.exp(diff)), float(np.exp(diff)), p, label_of(p)
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    t = float(stats.t.ppf(0.5 + confidence / 2, dof))
    p = float(2 * stats.t.sf(abs(diff / se), dof))
    return float(np.exp(diff)), float(np.exp(diff - t * se)), float(np.exp(diff + t * se)), p, label_of(p)


def ratio_ci(num, den, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high) of `ratio_test`."""
    return ratio_test(num, den, confidence)[:3]


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
    """One run's verdict. `step`: the first evaluation (or train iteration) that breaks the
    rule; `depth`: the largest fall below the running best, as a share of that best;
    `recovered`: the last point is back above both thresholds of the collapse point."""

    collapsed: bool
    step: int | None
    reason: str
    depth: float = 0.0
    recovered: bool | None = None


DROP = 0.25
"""Default share below the running best that counts as a collapse."""
BELOW_BASE = 0.05
"""Default share below the base model's reward that counts as a collapse: a fall of more than
5% below it (0 flags any fall, however small)."""
SMOOTH = 10
"""Train rows in the trailing mean that smooths the training reward."""
NOISE_Z = 4.0
"""The smoothed training reward must fall this many standard errors below its base (the noise
of a batch mean, estimated from the run's own iteration-to-iteration differences); 4, not 2,
because the rule is checked at every iteration of a long run."""


def curve_collapse(
    steps: np.ndarray,
    rewards: np.ndarray,
    base: float,
    drop: float = DROP,
    below_base: float = BELOW_BASE,
    noise: float = 0.0,
) -> Collapse:
    """Collapse on one reward curve, as a person reads it: at ANY point the reward falls below
    the base model's (by more than `below_base` as a share of it, and more than `noise`, an
    absolute tolerance) or more than `drop` (a share) below its running best, even if it
    recovers later."""
    ok = np.isfinite(rewards)
    steps, rewards = steps[ok], rewards[ok]
    if len(rewards) == 0:
        return Collapse(False, None, "")
    best = np.maximum.accumulate(rewards)
    depth = float(np.max((best - rewards) / np.where(best > 0, best, np.inf)))
    floor_base = base - max(below_base * abs(base), noise) if np.isfinite(base) else -np.inf
    under_base = rewards < floor_base
    under_best = rewards < best * (1 - drop)
    hit = np.flatnonzero(under_base | under_best)
    if len(hit) == 0:
        return Collapse(False, None, "", depth=max(depth, 0.0))
    i = int(hit[0])
    if under_base[i]:
        reason = f"{rewards[i]:.3g} below the base model's {base:.3g} (floor {floor_base:.3g})"
    else:
        reason = f"{rewards[i]:.3g} is {1 - rewards[i] / best[i]:.0%} below its best {best[i]:.3g}"
    last = rewards[-1]
    recovered = bool(last >= floor_base and last >= best[i] * (1 - drop)) if i < len(rewards) - 1 else False
    return Collapse(True, int(steps[i]), reason, depth=max(depth, 0.0), recovered=recovered)


def smoothed_noise(raw: np.ndarray, window: int) -> float:
    """Standard error of the difference of two `window`-row means of a noisy series: the raw
    noise from first differences (std / sqrt(2), blind to slow trends), times sqrt(2 / window)."""
    d = np.diff(raw[np.isfinite(raw)])
    if len(d) < 2:
        return 0.0
    sigma = float(np.std(d, ddof=1)) / np.sqrt(2)
    return float(sigma * np.sqrt(2 / window))


def detect_collapse(
    evals: pd.DataFrame,
    train: pd.DataFrame,
    drop: float = DROP,
    below_base: float = BELOW_BASE,
    zero_std: float = 0.8,
    kl: float = 1.0,
    smooth: int = SMOOTH,
) -> dict[str, Collapse]:
    """One run's collapse verdicts: `eval` (the evaluation reward; its base is the step-0
    evaluation of the base model), `train` (the training reward as a trailing mean over
    `smooth` iterations; its base is the first full window, and a fall below it must also
    exceed NOISE_Z standard errors of the run's own batch noise), and `degenerate` (zero
    reward spread in groups, or approx-KL >= `kl`, on three consecutive iterations)."""
    out = {
        "eval": Collapse(False, None, ""),
        "train": Collapse(False, None, ""),
        "degenerate": Collapse(False, None, ""),
    }
    if not evals.empty and "eval/reward" in evals:
        r = evals.sort_values("step")
        rewards, steps = r["eval/reward"].to_numpy(float), r["step"].to_numpy()
        out["eval"] = curve_collapse(steps, rewards, float(rewards[0]), drop, below_base)
    if not train.empty and "reward/mean" in train:
        t = train.sort_values("step")
        raw = t["reward/mean"].to_numpy(float)
        window = max(1, min(smooth, len(raw) // 2))
        smooth_r = t["reward/mean"].rolling(window, min_periods=window).mean().to_numpy(float)
        steps = t["step"].to_numpy()
        ok = np.isfinite(smooth_r)
        if ok.any():
            noise = NOISE_Z * smoothed_noise(raw, window)
            out["train"] = curve_collapse(steps[ok], smooth_r[ok], float(smooth_r[ok][0]), drop, below_base, noise)
        for col, limit, why in (
            ("stats/zero_std_ratio", zero_std, "rewards in a group all equal (zero std)"),
            ("stats/approx_kl", kl, "approx KL blew up"),
        ):
            if col not in t:
                continue
            bad = (t[col].to_numpy(float) >= limit).astype(int)
            run3 = np.convolve(bad, np.ones(3, dtype=int), mode="valid") == 3 if len(bad) >= 3 else np.array([])
            if run3.any():
                i = int(np.flatnonzero(run3)[0])
                out["degenerate"] = Collapse(True, int(steps[i]), why, recovered=not bool(bad[-1]))
                break
    return out


def collapse_table(data: Runs, drop: float = DROP, below_base: float = BELOW_BASE) -> pd.DataFrame:
    """Per run: whether it collapsed (in eval reward, smoothed train reward, or by degenerate
    outputs), the first step, the depth (largest fall below the running best, as a share) and
    whether it recovered, per signal."""
    rows = []
    has = not data.metrics.empty
    for run, info in data.runs.set_index("run").iterrows():
        ev = data.evals[data.evals["run"] == run] if has else pd.DataFrame()
        tr = data.train[data.train["run"] == run] if has else pd.DataFrame()
        c = detect_collapse(ev, tr, drop=drop, below_base=below_base)
        fired = [(k, v) for k, v in c.items() if v.collapsed]
        first = min(fired, key=lambda kv: kv[1].step) if fired else None
        rows.append(
            {
                "run": run,
                "variant": info["variant"],
                "collapsed": bool(fired),
                "collapse_step": first[1].step if first else None,
                "collapse_in": ", ".join(k for k, _ in fired),
                "eval_collapse_step": c["eval"].step,
                "eval_depth": round(c["eval"].depth, 3),
                "eval_recovered": c["eval"].recovered,
                "train_collapse_step": c["train"].step,
                "train_depth": round(c["train"].depth, 3),
                "train_recovered": c["train"].recovered,
                "collapse_reason": "; ".join(f"{k}: {v.reason}" for k, v in fired),
            }
        )
    return pd.DataFrame(rows)


HACK_FALL = 0.10
"""A reward entry that falls by this share of its first evaluation flags reward hacking when the
training reward rises over the same run."""


def reward_entries(name, weights=None) -> tuple[str, ...] | None:
    """The entries a run's reward gives: a reward's declared entries; for several weighted
    rewards (`weights` "entry=w, ..."), each component and every entry their rewards declare."""
    from grpo_zoo import rewards
    from grpo_zoo.rewards.weighted import WEIGHTED, resolve

    if not isinstance(name, str):
        return None
    if name != WEIGHTED or not isinstance(weights, str) or not weights:
        return rewards.entries(name)
    parts = [w.split("=")[0].strip() for w in weights.split(",")]
    try:
        owners = resolve(dict.fromkeys(parts, 1.0))
    except Exception:  # noqa: BLE001 (a reward this install no longer has: its components alone)
        return tuple(parts)
    return tuple(dict.fromkeys([*parts, *(e for o in owners for e in (rewards.entries(o) or (o,)))]))


def hacking_table(data: Runs, fall: float = HACK_FALL) -> pd.DataFrame:
    """The reward-hacking view: per run, its training reward's change from the first to the last
    evaluation beside each other entry its reward gives (the components, the toy rewards that
    pull against it); `hacking` where the training reward rose while an entry fell by more than
    `fall` of its first value. Empty when the runs log no other entry."""

    rows = []
    if data.metrics.empty:
        return pd.DataFrame(rows)
    for run, info in data.runs.set_index("run").iterrows():
        name = info.get("reward")
        ev = data.evals[data.evals["run"] == run]
        known = reward_entries(name, info.get("reward_weights"))
        if len(ev) < 2 or not known:
            continue
        first, last = ev.iloc[0], ev.iloc[-1]
        gain = float(last["eval/reward"] - first["eval/reward"])
        changes, falling = {}, []
        for entry in known:
            col = f"eval/{entry}"
            if entry == name or col not in ev or not np.isfinite(first[col]) or not np.isfinite(last[col]):
                continue
            delta = float(last[col] - first[col])
            changes[entry] = delta
            if gain > 0 and delta < -fall * abs(float(first[col])):
                falling.append(entry)
        if changes:
            rows.append(
                {
                    "run": Path(run).name,
                    "variant": info["variant"],
                    "reward": name,
                    "reward change": round(gain, 4),
                    **{f"{e} change": round(d, 4) for e, d in changes.items()},
                    "hacking": ", ".join(falling) if falling else "-",
                }
            )
    return pd.DataFrame(rows)


def factor_verdict(lo: float, hi: float, factor: float) -> str:
    """The rule every speed-up claim is judged by (declared 2026-12-07, before the runs at the
    references' settings): "reproduced" when the whole CI [lo, hi] lies at or above the claimed
    factor, "not reproduced" when it lies below it, else "inconclusive" (the data admit the factor
    and less). The rule before it, "the CI reaches the factor", read a CI of [1.3, 7] as reproduced."""
    if hi < factor:
        return "not reproduced"
    return "reproduced" if lo >= factor else "inconclusive"


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


def cost_to_target(data: Runs, target: float, x: str) -> pd.DataFrame:
    """The one censored cost-to-target: per run (compute_to_target's rows), `cost` is the compute
    at which eval/reward first reaches `target`, or all the run spent (data.runs[x]) when it never
    did, so that a ratio of costs is a bound; `reached` is 1.0 for a run that did, else 0.0."""
    hits = compute_to_target(data.evals, target, x)
    spent = data.runs.set_index("run")[x] if x in data.runs else pd.Series(dtype=float)
    hits["cost"] = [h if np.isfinite(h) else float(spent.get(r, np.nan)) for r, h in zip(hits["run"], hits[x])]
    hits["reached"] = np.isfinite(hits[x].to_numpy(float)).astype(float)
    return hits
