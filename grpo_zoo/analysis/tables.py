"""Tables in Markdown and LaTeX: Table 1, efficiency, ablations (best per column marked).

Nothing here knows an algorithm: the ablation's columns are whichever `algorithm` config
fields differ across the variants, and speed-ups are measured against the baseline the
experiment declares (`report: {baseline: NAME}`), else its first variant.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from grpo_zoo.analysis.load import Runs, ordered
from grpo_zoo.analysis.stats import (
    ALPHA,
    TEST_NAME,
    aggregate,
    collapse_table,
    cost_to_target,
    detectable,
    label_of,
    mean_ci,
    paired,
    ratio_test,
    significance,
)

TABLE1_METRICS = {
    "eval/aesthetic_quality": "Aesthetic Quality",
    "eval/imaging_quality": "Imaging Quality",
    "eval/subject_consistency": "Subject Consistency",
    "eval/object_class": "Object Class",
    "eval/reward": "Reward",
}
UNITS = {"compute/flops": "FLOPs", "compute/device_hours": "device-hours", "compute/nfe": "NFE"}


def compute_axis(data: Runs) -> str:
    """The compute column comparisons use: FLOPs (exact, load-independent) unless every run
    was budgeted in wall time (device-hours / GPU-hours) only."""
    units = set(data.runs.get("budget_unit", pd.Series(dtype=str)).dropna())
    if units == {"device_hours"} or "compute/flops" not in data.metrics:
        return "compute/device_hours"
    return "compute/flops"


def pick_baseline(variants: list[str], experiment: dict, baseline: str | None = None) -> tuple[str, str]:
    """The variant speed-ups are measured against, and how it was chosen: `baseline` if given,
    else the experiment's declared one (report.baseline), else its first variant with runs here,
    else (a bare folder of runs) the first in sorted order. Names match exactly; a name that is
    not among `variants` is a ValueError naming them."""
    choices = ", ".join(variants)
    if baseline is not None:
        if baseline not in variants:
            raise ValueError(f"baseline {baseline!r} is not a variant here (variants: {choices})")
        return baseline, "as asked"
    declared = experiment.get("baseline")
    if declared is not None:
        if declared not in variants:
            raise ValueError(f"the experiment's report.baseline {declared!r} has no runs here (variants: {choices})")
        return declared, "declared in the experiment (report.baseline)"
    listed = [v for v in experiment.get("variants") or [] if v in variants]
    if listed:
        return listed[0], "the experiment's first variant"
    return sorted(variants)[0], "the first variant in sorted order: no experiment record here (choose with --baseline)"


def baseline_of(data: Runs, baseline: str | None = None) -> tuple[str, str]:
    """(the baseline variant of `data`, how it was chosen): see pick_baseline."""
    return pick_baseline(ordered(data.runs["variant"], data.experiment), data.experiment, baseline)


def _versus(data: Runs, column: str, reference: str) -> dict[str, str]:
    """Per variant: the significance label of its per-seed `column` against `reference`'s."""
    ref = data.runs.loc[data.runs["variant"] == reference, column].to_numpy(float)
    out = {}
    for variant, g in data.runs.groupby("variant", sort=False):
        out[variant] = "-" if variant == reference else significance(g[column].to_numpy(float), ref)[1]
    return out


def _fmt(mean: float, lo: float = float("nan"), hi: float = float("nan"), digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
        text += f" ± {(hi - lo) / 2:.{digits}f}"
    return text


def _mark_best(df: pd.DataFrame, columns: list[str], means: pd.DataFrame, higher: dict[str, bool]) -> pd.DataFrame:
    """Wrap the best cell of each column in BEST[...] (rendered bold per format)."""
    out = df.copy()
    for col in columns:
        if col not in means or means[col].isna().all() or len(means) < 2:
            continue
        idx = means[col].idxmax() if higher.get(col, True) else means[col].idxmin()
        out.loc[idx, col] = f"BEST[{out.loc[idx, col]}]"
    return out


TEX_SPECIAL = str.maketrans({c: "\\" + c for c in "&%$#_{}"})


def _tex(text: str) -> str:
    """Plain text for LaTeX: its special characters escaped, ± as $\\pm$."""
    return text.translate(TEX_SPECIAL).replace("±", "$\\pm$")


def render(df: pd.DataFrame, fmt: str) -> str:
    """`md` or `tex`; cells marked BEST[...] become bold."""
    if fmt == "md":
        body = df.map(lambda c: f"**{c[5:-1]}**" if isinstance(c, str) and c.startswith("BEST[") else c)
        return body.to_markdown(index=False)
    body = df.map(
        lambda c: ("\\textbf{" + _tex(c[5:-1]) + "}" if c.startswith("BEST[") else _tex(c)) if isinstance(c, str) else c
    )
    body.columns = [_tex(str(c)) for c in body.columns]
    return body.to_latex(index=False, escape=False)


def table1(data: Runs) -> pd.DataFrame:
    """Method, device-hours, the eval metrics (mean ± CI half-width over seeds), collapse flag.
    Where runs carry VBench's scores (vbench.json), those replace the in-loop metrics."""
    names = dict(TABLE1_METRICS)
    for col in list(names):
        vb = "vbench/" + col.split("/", 1)[1]
        if vb in data.runs and data.runs[vb].notna().any():
            names[vb] = f"{names.pop(col)} (VBench)"
    names["eval/reward"] = names.pop("eval/reward")
    cols = [c for c in names if c in data.runs]
    agg = aggregate(data.runs, cols + ["compute/device_hours"])
    collapse = collapse_table(data)
    rows = []
    for _, a in agg.iterrows():
        c = collapse[collapse["variant"] == a["variant"]]
        n_col = int(c["collapsed"].sum())
        row = {
            "Method": a["variant"],
            "Seeds": int(a["seeds"]),
            "Device hours": _fmt(a.get("compute/device_hours", np.nan), digits=4),
        }
        for col in cols:
            row[names[col]] = _fmt(a[col], a.get(f"{col} ci_low", np.nan), a.get(f"{col} ci_high", np.nan))
        steps = c["collapse_step"].dropna()
        row["Collapsed"] = f"{n_col}/{len(c)}" + (f" (step {int(steps.min())})" if n_col else "")
        rows.append(row)
    if "eval/reward" in cols and len(agg) > 1:
        best = agg.loc[agg["eval/reward"].idxmax(), "variant"]
        vs = _versus(data, "eval/reward", best)
        for row in rows:
            row[f"Reward vs best ({TEST_NAME})"] = vs[row["Method"]]
    df = pd.DataFrame(rows)
    means = agg.rename(columns=names)
    return _mark_best(df, [names[c] for c in cols], means, {})


def design_mdd(data: Runs, column: str = "eval/reward", power: float = 0.8) -> tuple[float, int]:
    """The design's minimum detectable difference of `column` between two variants: a two-sided
    t-test at level ALPHA and `power`, with the fewest seeds a variant has (n) and the seed-to-seed
    spread pooled over the variants: (t(1 - alpha/2) + t(power)) s sqrt(2 / n), df = 2n - 2. NaN
    below two seeds."""
    from scipy import stats as st

    groups = [g[column].dropna().to_numpy(float) for _, g in data.runs.groupby("variant", sort=False)]
    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        return float("nan"), min((len(g) for g in groups), default=1)
    n = min(len(g) for g in groups)
    pooled = math.sqrt(sum((len(g) - 1) * g.var(ddof=1) for g in groups) / sum(len(g) - 1 for g in groups))
    dof = 2 * n - 2
    return float((st.t.ppf(1 - ALPHA / 2, dof) + st.t.ppf(power, dof)) * pooled * math.sqrt(2 / n)), n


def common_target(data: Runs) -> tuple[float, str]:
    """The common target eval reward and how it was chosen: declared in the experiment
    (`report.target`), else halfway from the base model to the best variant's mean final eval
    reward, raised to the base plus the design's minimum detectable difference where that is higher
    (a target within the noise of the base cannot separate methods)."""
    declared = (data.experiment or {}).get("target")
    if declared is not None:
        return float(declared), "declared in the experiment (report.target)"
    init = float(data.runs["eval/reward_initial"].mean())
    best = float(data.runs.groupby("variant")["eval/reward"].mean().max())
    half = init + 0.5 * (best - init) if best > init else best
    mdd, n = design_mdd(data)
    if not math.isfinite(mdd):
        return (
            half,
            f"halfway from the base model ({init:.3f}) to the best variant's mean ({best:.3f}); one seed: no MDD",
        )
    target = max(half, init + mdd)
    how = f"halfway from the base model ({init:.3f}) to the best variant's mean ({best:.3f})"
    if target > half:
        how += f", raised to the base plus the design's minimum detectable difference ({mdd:.3f})"
    else:
        how += f", above the base by more than the design's minimum detectable difference ({mdd:.3f})"
    how += f" (two-sided t-test, 80% power, {n} seeds a variant)"
    if target > best:
        how += "; no variant's mean reaches it: at this design the methods' speed to it cannot be told apart"
    return target, how


def efficiency(
    data: Runs, target: float | None = None, x: str | None = None, baseline: str | None = None
) -> tuple[pd.DataFrame, float]:
    """Compute each variant needs to reach `target` eval reward (default: `common_target`), and its speed-up
    over the baseline with its 95% CI and test, one and the same (`ratio_test`: Welch's t-test on
    the log costs, so the CI excludes 1 exactly when the test says p < 0.05). A seed that never reaches the target counts at
    the whole compute it spent (so its speed-up is a bound, said in the table). `x` defaults to
    the runs' budget unit (compute_axis); `baseline` to the experiment's (baseline_of)."""
    x = x or compute_axis(data)
    if target is None:
        target, _ = common_target(data)
    base_name, _ = baseline_of(data, baseline)
    hits = cost_to_target(data, target, x)
    agg = aggregate(hits, ["cost", "reached"])
    base_cost = hits.loc[hits["variant"] == base_name, "cost"].to_numpy(float)
    unit = UNITS.get(x, x)
    rows = []
    for _, a in agg.iterrows():
        cost = hits.loc[hits["variant"] == a["variant"], "cost"].to_numpy(float)
        speed, lo, hi, _, label = ratio_test(base_cost, cost)  # one test: the CI and the label agree
        reached = int(round(a["reached"] * a["seeds"]))
        speed_text = "-" if math.isnan(speed) else f"{speed:.2f}x"
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:  # no spread over seeds: the point alone
            speed_text += f" [{lo:.2f}, {hi:.2f}]"
        rows.append(
            {
                "Method": a["variant"],
                f"{unit} to reward {target:.3f}": _fmt_sci(a["cost"], a.get("cost ci_low"), a.get("cost ci_high"))
                + ("" if reached == a["seeds"] else " (bound)"),
                "Seeds reaching it": f"{reached}/{int(a['seeds'])}",
                f"Speed-up vs {base_name} (95% CI)": speed_text,
                f"Cost vs {base_name} ({TEST_NAME} on log cost)": "-" if a["variant"] == base_name else label,
            }
        )
    return pd.DataFrame(rows), target


def _fmt_sci(mean: float, lo: float | None = None, hi: float | None = None) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    if mean != 0 and (abs(mean) >= 1e4 or abs(mean) < 1e-2):
        text = f"{mean:.3g}"
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            text += f" [{lo:.3g}, {hi:.3g}]"
        return text
    return _fmt(mean, lo if lo is not None else np.nan, hi if hi is not None else np.nan, 4)


def show(value) -> str:
    """A config value in a table: JSON text (true, null, [0, 4]); "-" where the field is absent."""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def differing_fields(data: Runs) -> dict[str, dict[str, str]]:
    """The `algorithm` config fields whose values differ across the variants (a field one
    algorithm lacks differs too): field -> {variant: its value as shown (first seed)}."""
    firsts = data.runs.groupby("variant", sort=False).head(1).set_index("variant")
    out = {}
    cols = sorted((c for c in firsts.columns if c.startswith("algorithm.")), key=lambda c: c != "algorithm.name")
    for col in cols:
        shown = {v: show(x) for v, x in firsts[col].items()}
        if len(set(shown.values())) > 1:
            out[col.split(".", 1)[1]] = shown
    return out


def ablation(data: Runs) -> pd.DataFrame:
    """Per variant: the algorithm config fields that differ across the variants (one column
    each, named by the field; "-" where a variant's algorithm has no such field), final and
    best eval reward, gain over the base model."""
    runs = data.runs.assign(gain=data.runs.get("eval/reward", np.nan) - data.runs.get("eval/reward_initial", np.nan))
    agg = aggregate(runs, ["eval/reward", "eval/reward_best", "gain"])
    fields = differing_fields(data)
    rows = []
    for _, a in agg.iterrows():
        rows.append(
            {
                "Variant": a["variant"],
                **{name: shown[a["variant"]] for name, shown in fields.items()},
                "Final eval reward": _fmt(
                    a["eval/reward"], a.get("eval/reward ci_low", np.nan), a.get("eval/reward ci_high", np.nan)
                ),
                "Best eval reward": _fmt(a["eval/reward_best"]),
                "Gain over base": _fmt(a["gain"]),
            }
        )
    if len(agg) > 1:
        best = agg.loc[agg["eval/reward"].idxmax(), "variant"]
        vs = _versus(data, "eval/reward", best)
        for row in rows:
            row[f"vs best ({TEST_NAME})"] = vs[row["Variant"]]
    df = pd.DataFrame(rows)
    return _mark_best(
        df,
        ["Final eval reward", "Gain over base"],
        agg.rename(columns={"eval/reward": "Final eval reward", "gain": "Gain over base"}),
        {},
    )


def headline(data: Runs, drop: float | None = None) -> str:
    """One sentence computed from the runs: who reached which eval reward with how much
    compute, how the others compare (significance), and whether any run collapsed."""
    from grpo_zoo.analysis.stats import DROP

    x = compute_axis(data)
    agg = aggregate(data.runs, [c for c in ("eval/reward", x) if c in data.runs])
    if agg.empty or "eval/reward" not in agg or agg["eval/reward"].isna().all():
        return f"{len(data)} runs, none evaluated yet."
    agg = agg.sort_values("eval/reward", ascending=False)
    best = agg.iloc[0]
    seeds = sorted(set(agg["seeds"].astype(int)))
    vs = _versus(data, "eval/reward", best["variant"])
    unit = UNITS.get(x, x)
    spent = f"{best[x]:.3g} {unit}" if x in best and np.isfinite(best[x]) else "its budget"
    others = ", ".join(
        f"{a['variant']} {_fmt(a['eval/reward'], a.get('eval/reward ci_low', np.nan), a.get('eval/reward ci_high', np.nan))}"
        f" ({vs[a['variant']]})"
        for _, a in agg.iloc[1:].iterrows()
    )
    base = float(data.runs["eval/reward_initial"].mean()) if "eval/reward_initial" in data.runs else float("nan")
    col = collapse_table(data, drop=DROP if drop is None else drop)
    fired = col[col["collapsed"]]
    if fired.empty:
        collapsed = "no run collapsed"
    else:
        parts = []
        for variant, g in fired.groupby("variant", sort=False):
            n = int((col["variant"] == variant).sum())
            parts.append(f"{variant} in {len(g)} of {n} seeds (first at step {int(g['collapse_step'].min())})")
        collapsed = "collapsed: " + "; ".join(parts)
    seeds_text = "/".join(str(s) for s in seeds)
    return (
        f"{best['variant']} reached the highest eval reward, "
        f"{_fmt(best['eval/reward'], best.get('eval/reward ci_low', np.nan), best.get('eval/reward ci_high', np.nan))}"
        + (
            f" (mean ± half the 95% t-interval over {seeds_text} seeds)"
            if max(seeds) >= 2
            else " (one seed: no interval, no significance)"
        )
        + f", with {spent} of training per run"
        + (f", ahead of {others} ({TEST_NAME} against it)" if others and max(seeds) >= 2 else "")
        + (f", then {others}" if others and max(seeds) < 2 else "")
        + (f"; the base model scores {base:.3f}" if np.isfinite(base) else "")
        + f"; {collapsed}."
    )


def by_seed(data: Runs, variant: str, column: str = "eval/reward") -> pd.Series:
    """A variant's per-seed values of a run column, indexed by seed."""
    g = data.runs[data.runs["variant"] == variant]
    return pd.Series(g[column].to_numpy(float), index=g["seed"].to_numpy()) if column in g else pd.Series(dtype=float)


def _paired_text(m: float, lo: float, hi: float, p: float, digits: int = 3) -> str:
    if not np.isfinite(m):
        return "-"
    text = f"{m:+.{digits}f}"
    if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
        text += f" ± {(hi - lo) / 2:.{digits}f}"
    return text + (f" ({label_of(p)})" if np.isfinite(p) else " (n = 1)")


def paired_columns(data: Runs, variant: str, baseline: str, best: str) -> dict[str, str]:
    """A variant's gain over the base model and its differences to the baseline and to the best,
    each paired by seed (and by eval sample): mean ± half its 95% t-interval (p)."""
    final = by_seed(data, variant)
    out = {"Gain over base (paired)": _paired_text(*paired(final, by_seed(data, variant, "eval/reward_initial"))[:4])}
    for name, ref in ((f"vs {baseline} (paired)", baseline), (f"vs {best} (paired)", best)):
        out[name] = "-" if variant == ref else _paired_text(*paired(final, by_seed(data, ref))[:4])
    return out


def power(data: Runs, baseline: str) -> str:
    """The design's minimum detectable difference: the paired test against the baseline at
    alpha 0.05 and power 0.8, from the differences' standard deviation pooled over the methods."""
    variances, ns = [], []
    ref = by_seed(data, baseline)
    for variant in data.runs["variant"].unique():
        if variant == baseline:
            continue
        both = pd.concat({"a": by_seed(data, variant), "b": ref}, axis=1).dropna()
        if len(both) >= 2:
            variances.append(float((both["a"] - both["b"]).var(ddof=1)))
            ns.append(len(both))
    if not variances:
        return "No method has two seeds paired with the baseline's: no detectable difference can be stated."
    sd, n = float(np.sqrt(np.mean(variances))), min(ns)
    return (
        f"Power: with {n} seeds per method, the paired differences to {baseline} have a pooled standard deviation of "
        f"{sd:.4f}, so the smallest difference this design detects at alpha {ALPHA} with power 0.8 is "
        f"{detectable(sd, n):.3f} in eval reward (two-sided paired t-test, {n - 1} degrees of freedom)."
    )


def leaderboard(
    data: Runs,
    target: float | None = None,
    x: str | None = None,
    drop: float | None = None,
    baseline: str | None = None,
) -> tuple[pd.DataFrame, float]:
    """Every variant at the sweep's equal budget, best first: final eval reward (mean and 95%
    t-interval over seeds) with its significance against the best, its gain over the base model
    and its differences to the baseline and to the best paired by seed, compute to reach a common
    target reward (as `efficiency`: a seed that never reaches it counts at all it spent, a
    bound), how many seeds collapsed and first when, and the transformer forwards (NFE) and
    backward passes one training iteration costs."""
    from grpo_zoo.analysis.stats import DROP

    x = x or compute_axis(data)
    runs = data.runs
    means = runs.groupby("variant", sort=False)["eval/reward"].mean()
    best = means.idxmax()
    best_vals = runs.loc[runs["variant"] == best, "eval/reward"].to_numpy(float)
    baseline = baseline or baseline_of(data)[0]
    eff, target = efficiency(data, target, x, best)
    to_target = eff.set_index("Method")
    cost_col = next(c for c in eff.columns if c.endswith(f"to reward {target:.3f}"))
    col = collapse_table(data, drop=DROP if drop is None else drop)
    steps = runs["steps"].clip(lower=1) if "steps" in runs else np.nan
    nan = pd.Series(np.nan, index=runs.index)
    per_iter = runs.assign(
        nfe_it=runs.get("compute/nfe", nan) / steps,
        bwd_it=runs.get("compute/backward", nan) / steps,
    )
    unit = UNITS.get(x, x)
    rows = []
    for variant in means.sort_values(ascending=False).index:
        g = runs[runs["variant"] == variant]
        vals = g["eval/reward"].to_numpy(float)
        m, lo, hi = mean_ci(vals)
        c = col[col["variant"] == variant]
        n_col = int(c["collapsed"].sum())
        first = c.loc[c["collapsed"], "collapse_step"]
        pi = per_iter[per_iter["variant"] == variant]
        rows.append(
            {
                "Rank": len(rows) + 1,
                "Method": variant,
                "Final eval reward": _fmt(m, lo, hi),
                f"vs {best} ({TEST_NAME})": "-" if variant == best else significance(vals, best_vals)[1],
                **paired_columns(data, variant, baseline, best),
                f"{unit} to reward {target:.3f}": to_target.loc[variant, cost_col],
                "Seeds reaching it": to_target.loc[variant, "Seeds reaching it"],
                "Collapsed": f"{n_col}/{len(c)}" + (f" (first at step {int(first.min())})" if n_col else ""),
                "NFE / iteration": _fmt(pi["nfe_it"].mean(), digits=0),
                "Backward / iteration": _fmt(pi["bwd_it"].mean(), digits=0),
                "Seeds": len(vals),
            }
        )
    return pd.DataFrame(rows), target
