"""Plots with seaborn, each saved as PNG and PDF, with titles, axis labels and units.

Every plot gives a variant the same colour (`palette`: the experiment's variant order), draws the
base model's eval reward where rewards are shown, and marks where evaluations happened."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from grpo_zoo.analysis.load import Runs  # noqa: E402
from grpo_zoo.analysis.stats import aggregate, collapse_table, curve_on_grid  # noqa: E402
from grpo_zoo.runs.files import save_figure  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")


def _save(fig, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        save_figure(fig, out / f"{name}.{ext}", dpi=150)  # whole or not at all (a full disk)
    plt.close(fig)
    return out / f"{name}.png"


def hours_label(data: Runs) -> str:
    devices = (
        "GPU"
        if any("cuda" in str(d).lower() or "h100" in str(d).lower() for d in data.runs.get("device", []))
        else "device"
    )
    return f"compute ({devices}-hours, wall time x devices)"


def compute_label(data: Runs, x: str) -> str:
    if x.endswith("hours"):
        return hours_label(data)
    return {"compute/flops": "compute (training FLOPs)", "compute/nfe": "compute (transformer forwards, NFE)"}.get(x, x)


def palette(data: Runs) -> dict[str, tuple]:
    """One colour per variant, in the experiment's variant order, the same in every plot."""
    variants = list(dict.fromkeys(data.runs["variant"])) if "variant" in data.runs else []
    return dict(zip(variants, sns.color_palette("tab10" if len(variants) <= 10 else "husl", len(variants))))


def base_reward(data: Runs) -> float:
    """The base model's eval reward (the runs' first evaluation, before any update)."""
    col = data.runs.get("eval/reward_initial")
    return float(col.mean()) if col is not None and col.notna().any() else float("nan")


def _base_line(ax, data: Runs) -> None:
    base = base_reward(data)
    if np.isfinite(base):
        ax.axhline(base, ls="--", lw=1, color="gray", label=f"base model ({base:.3f})", zorder=1)


def reward_vs_compute(data: Runs, out: Path, x: str | None = None) -> Path:
    """Eval reward against compute, one band (mean and 95% CI over seeds) per variant, a marker
    at each evaluation (the seeds' mean), and the base model's reward. `x`: compute/flops or
    compute/device_hours (default: the runs' budget unit)."""
    from grpo_zoo.analysis.tables import compute_axis

    x = x or compute_axis(data)
    colours = palette(data)
    curves = curve_on_grid(data.evals, x, "eval/reward")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if not curves.empty:
        sns.lineplot(
            data=curves, x=x, y="eval/reward", hue="variant", hue_order=list(colours), palette=colours,
            errorbar=("ci", 95), ax=ax,
        )  # fmt: skip
        points = data.evals.groupby(["variant", "step"], sort=False)[[x, "eval/reward"]].mean().reset_index()
        for variant, g in points.groupby("variant", sort=False):
            ax.scatter(g[x], g["eval/reward"], s=14, color=colours.get(variant), zorder=3)
    _base_line(ax, data)
    ax.set(
        xlabel=compute_label(data, x),
        ylabel="eval reward (held-out prompts, ODE)",
        title="Reward versus compute (dots: evaluations)",
    )
    ax.legend(fontsize=7)
    return _save(fig, out, "reward_vs_compute")


SDE_NOTE = (
    "training reward: the rollouts' own SDE samples, noisier the more steps a method explores,\n"
    "so levels differ across methods by design; compare methods on the evaluation panel (ODE)"
)


def reward_curves(data: Runs, out: Path) -> Path:
    """Train and eval reward against step per variant, each on its own axis (the SDE rollouts'
    reward and the ODE evaluation's differ in level): where a method collapses, it shows."""
    colours = palette(data)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    train = data.train
    hue = dict(hue="variant", hue_order=list(colours), palette=colours, errorbar=("ci", 95))
    if not train.empty:
        sns.lineplot(data=train, x="step", y="reward/mean", ax=axes[0], **hue)
    axes[0].set(xlabel="iteration", ylabel="reward (mean over rollouts, SDE)", title="Training reward")
    axes[0].text(0.01, 0.01, SDE_NOTE, transform=axes[0].transAxes, fontsize=6, color="dimgray", va="bottom")
    if not data.evals.empty:
        sns.lineplot(data=data.evals, x="step", y="eval/reward", marker="o", ax=axes[1], **hue)
    _base_line(axes[1], data)
    axes[1].set(xlabel="iteration", ylabel="eval reward (held-out prompts, ODE)", title="Evaluation reward")
    for ax in axes:
        ax.legend(fontsize=7)
    _mark_collapses(data, axes)
    return _save(fig, out, "reward_curves")


def _mark_collapses(data: Runs, axes) -> None:
    """A red x where each run collapsed (train panel: smoothed train reward; eval panel)."""
    if data.metrics.empty:
        return
    col = collapse_table(data)
    labelled = False
    for _, c in col[col["collapsed"]].iterrows():
        for ax, key, kind, y in (
            (axes[0], "train_collapse_step", "train", "reward/mean"),
            (axes[1], "eval_collapse_step", "eval", "eval/reward"),
        ):
            step = c[key]
            if step is None or not np.isfinite(step):
                continue
            rows = data.metrics[(data.metrics["run"] == c["run"]) & (data.metrics["kind"] == kind)]
            at = rows[rows["step"] == step]
            if at.empty:
                continue
            ax.scatter(
                [step], [at[y].iloc[0]], marker="x", s=60, color="red", zorder=5, label=None if labelled else "collapse"
            )
            labelled = True
    if labelled:
        axes[1].legend()


def ablation_bars(data: Runs, out: Path, column: str = "eval/reward") -> Path:
    """Final eval reward per variant as its gain over the base model (bars start at the base, 0),
    mean over seeds with the same 95% CI the tables give, each seed a dot."""
    agg = aggregate(data.runs, [column])
    colours = palette(data)
    base = base_reward(data)
    ref = base if np.isfinite(base) else 0.0
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(agg) + 2), 4))
    if not agg.empty:
        agg = agg.sort_values(column)
        xs = np.arange(len(agg))
        gain = agg[column].to_numpy(float) - ref
        lo = gain - (agg[f"{column} ci_low"].to_numpy(float) - ref)
        hi = (agg[f"{column} ci_high"].to_numpy(float) - ref) - gain
        yerr = np.nan_to_num(np.vstack([lo, hi]), nan=0.0)
        ax.bar(xs, gain, color=[colours.get(v) for v in agg["variant"]], yerr=yerr, capsize=4, alpha=0.85)
        for i, variant in enumerate(agg["variant"]):
            seeds = data.runs.loc[data.runs["variant"] == variant, column].to_numpy(float) - ref
            ax.scatter(np.full(len(seeds), i), seeds, s=10, color="black", zorder=3)
        ax.axhline(0, color="gray", lw=1, ls="--")
        ax.set_xticks(xs, agg["variant"], rotation=30, ha="right")
    what = f"eval reward gain over the base ({base:.3f})" if np.isfinite(base) else "final eval reward"
    ax.set(xlabel="variant", ylabel=what, title="Final eval reward over the base model")
    ax.text(0.01, 0.99, "bar: mean; whiskers: 95% CI over seeds; dots: seeds", transform=ax.transAxes,
            fontsize=6, color="dimgray", va="top")  # fmt: skip
    return _save(fig, out, "ablation_bars")


def grad_norm_by_timestep(data: Runs, out: Path) -> Path:
    """Mean |dL/dv| of a trained transition against its timestep, per variant (log scale):
    without rectification it follows lambda(t); with it, it is flat."""
    cols = [c for c in data.train.columns if c.startswith("grad_t/")] if not data.train.empty else []
    rows = []
    for variant, g in data.train.groupby("variant", sort=False):
        for c in cols:
            v = g[c].dropna()
            if len(v):
                rows.append({"variant": variant, "step k": int(c.split("/")[1]), "grad": float(v.mean())})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    if not df.empty:
        colours = palette(data)
        sns.lineplot(
            data=df, x="step k", y="grad", hue="variant", hue_order=[v for v in colours if v in set(df["variant"])],
            palette=colours, marker="o", ax=ax,
        )  # fmt: skip
        ax.set_yscale("log")
    ax.set(
        xlabel="sampling step k of the trained transition (0 = pure noise)",
        ylabel="mean per-transition |dL/dv| (log)",
        title="Gradient size by timestep",
    )
    return _save(fig, out, "grad_norm_by_timestep")


def all_plots(data: Runs, out: Path, x: str | None = None) -> dict[str, Path]:
    return {
        "reward_vs_compute": reward_vs_compute(data, out, x),
        "reward_curves": reward_curves(data, out),
        "ablation_bars": ablation_bars(data, out),
        "grad_norm_by_timestep": grad_norm_by_timestep(data, out),
    }
