"""Plots with seaborn, each saved as PNG and PDF, with titles, axis labels and units."""

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


def reward_vs_compute(data: Runs, out: Path, x: str | None = None) -> Path:
    """Eval reward against compute, one band (mean and 95% CI over seeds) per variant. `x`:
    compute/flops or compute/device_hours (default: the runs' budget unit)."""
    from grpo_zoo.analysis.tables import compute_axis

    x = x or compute_axis(data)
    curves = curve_on_grid(data.evals, x, "eval/reward")
    fig, ax = plt.subplots(figsize=(6, 4))
    if not curves.empty:
        sns.lineplot(data=curves, x=x, y="eval/reward", hue="variant", errorbar=("ci", 95), ax=ax)
    ax.set(
        xlabel=compute_label(data, x),
        ylabel="eval reward (held-out prompts)",
        title="Reward versus compute",
    )
    return _save(fig, out, "reward_vs_compute")


def reward_curves(data: Runs, out: Path) -> Path:
    """Train and eval reward against step per variant: where a method collapses, it shows."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    train = data.train
    if not train.empty:
        sns.lineplot(data=train, x="step", y="reward/mean", hue="variant", errorbar=("ci", 95), ax=axes[0])
    axes[0].set(xlabel="iteration", ylabel="reward (mean over rollouts)", title="Training reward")
    if not data.evals.empty:
        sns.lineplot(
            data=data.evals, x="step", y="eval/reward", hue="variant", errorbar=("ci", 95), marker="o", ax=axes[1]
        )
    axes[1].set(xlabel="iteration", ylabel="eval reward (held-out prompts, ODE)", title="Evaluation reward")
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
    """Final eval reward per variant: mean over seeds with its 95% bootstrap CI."""
    agg = aggregate(data.runs, [column])
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(agg) + 2), 4))
    if not agg.empty:
        order = agg.sort_values(column)["variant"].tolist()
        sns.barplot(
            data=data.runs, x="variant", y=column, order=order, errorbar=("ci", 95), ax=ax, hue="variant", legend=False
        )
        init = data.runs["eval/reward_initial"].mean() if "eval/reward_initial" in data.runs else np.nan
        if np.isfinite(init):
            ax.axhline(init, ls="--", color="gray", label="base model")
            ax.legend()
        ax.tick_params(axis="x", rotation=30)
    ax.set(xlabel="variant", ylabel="final eval reward", title="Ablations: final eval reward (95% CI over seeds)")
    return _save(fig, out, "ablation_bars")


def grad_norm_by_timestep(data: Runs, out: Path) -> Path:
    """Mean |dL/dv| of a trained transition against its timestep, per variant (log scale):
    without rectification it follows lambda(t); with it, it is flat."""
    cols = [c for c in data.train.columns if c.startswith("grad_t/")] if not data.train.empty else []
    rows = []
    for variant, g in data.train.groupby("variant"):
        for c in cols:
            v = g[c].dropna()
            if len(v):
                rows.append({"variant": variant, "step k": int(c.split("/")[1]), "grad": float(v.mean())})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    if not df.empty:
        sns.lineplot(data=df, x="step k", y="grad", hue="variant", marker="o", ax=ax)
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
