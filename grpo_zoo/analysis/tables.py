"""Tables in Markdown and LaTeX: Table 1, efficiency, ablations (best per column marked)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grpo_zoo.analysis.load import Runs
from grpo_zoo.analysis.stats import aggregate, collapse_table, compute_to_target

TABLE1_METRICS = {
    "eval/aesthetic_quality": "Aesthetic Quality",
    "eval/imaging_quality": "Imaging Quality",
    "eval/subject_consistency": "Subject Consistency",
    "eval/object_class": "Object Class",
    "eval/reward": "Reward",
}
BASELINE = "flow_grpo"


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


def render(df: pd.DataFrame, fmt: str) -> str:
    """`md` or `tex`; cells marked BEST[...] become bold."""
    if fmt == "md":
        body = df.map(lambda c: f"**{c[5:-1]}**" if isinstance(c, str) and c.startswith("BEST[") else c)
        return body.to_markdown(index=False)
    body = df.map(
        lambda c: (
            ("\\textbf{" + c[5:-1] + "}" if c.startswith("BEST[") else c).replace("±", "$\\pm$").replace("_", "\\_")
            if isinstance(c, str)
            else c
        )
    )
    body.columns = [str(c).replace("_", "\\_").replace("%", "\\%") for c in body.columns]
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
    df = pd.DataFrame(rows)
    means = agg.rename(columns=names)
    return _mark_best(df, [names[c] for c in cols], means, {})


def efficiency(data: Runs, target: float | None = None, x: str = "compute/device_hours") -> tuple[pd.DataFrame, float]:
    """Compute each variant needs to reach `target` eval reward (default: halfway from the
    base model's eval reward to the best variant's mean final eval reward), and its speed-up
    over Flow-GRPO."""
    evals = data.evals
    if target is None:
        init = float(data.runs["eval/reward_initial"].mean())
        best = float(data.runs.groupby("variant")["eval/reward"].mean().max())
        target = init + 0.5 * (best - init) if best > init else best
    hits = compute_to_target(evals, target, x)
    agg = aggregate(hits.assign(reached=np.isfinite(hits[x]).astype(float)), [x, "reached"])
    base = agg[agg["variant"].str.startswith(BASELINE) & ~agg["variant"].str.startswith(BASELINE + "_fast")]
    base_cost = float(base[x].iloc[0]) if len(base) else float("nan")
    rows = []
    for _, a in agg.iterrows():
        cost = a[x]
        speed = base_cost / cost if np.isfinite(cost) and cost > 0 and np.isfinite(base_cost) else float("nan")
        rows.append(
            {
                "Method": a["variant"],
                f"{'Device' if x.endswith('hours') else x} hours to reward {target:.3f}": _fmt(
                    cost, a.get(f"{x} ci_low", np.nan), a.get(f"{x} ci_high", np.nan), 4
                ),
                "Seeds reaching it": f"{int(round(a['reached'] * a['seeds']))}/{int(a['seeds'])}",
                f"Speed-up vs {BASELINE}": "-" if math.isnan(speed) else f"{speed:.2f}x",
            }
        )
    return pd.DataFrame(rows), target


def ablation(data: Runs) -> pd.DataFrame:
    """Per variant: its flags, final and best eval reward, gain over the base model."""
    runs = data.runs.assign(gain=data.runs.get("eval/reward", np.nan) - data.runs.get("eval/reward_initial", np.nan))
    agg = aggregate(runs, ["eval/reward", "eval/reward_best", "gain"])
    rows = []
    for _, a in agg.iterrows():
        first = runs[runs["variant"] == a["variant"]].iloc[0]
        rows.append(
            {
                "Variant": a["variant"],
                "Algorithm": first["algorithm"],
                "Grouping": first["grouping"] if isinstance(first.get("grouping"), str) else "-",
                "Rectify": str(first["rectify"]).lower() if isinstance(first.get("rectify"), bool | np.bool_) else "-",
                "Final eval reward": _fmt(
                    a["eval/reward"], a.get("eval/reward ci_low", np.nan), a.get("eval/reward ci_high", np.nan)
                ),
                "Best eval reward": _fmt(a["eval/reward_best"]),
                "Gain over base": _fmt(a["gain"]),
            }
        )
    df = pd.DataFrame(rows)
    return _mark_best(
        df,
        ["Final eval reward", "Gain over base"],
        agg.rename(columns={"eval/reward": "Final eval reward", "gain": "Gain over base"}),
        {},
    )
