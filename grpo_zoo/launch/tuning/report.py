"""The tuning report: per study, the trials, the best parameters, the optimization history
and the parameter importances (PED-ANOVA, which needs no extra package), in tuning.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from grpo_zoo.analysis.tables import render
from grpo_zoo.runs.files import atomic_write, save_figure


def trials_frame(study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "objective": t.value if t.state == TrialState.COMPLETE else math.nan,
                "last rung": f"{last}: {t.intermediate_values[last]:.4f}" if last is not None else "-",
                **{k: v for k, v in sorted(t.params.items())},
                "reason": str(t.user_attrs.get("reason", ""))[:80],
                "run": Path(str(t.user_attrs.get("run_dir", ""))).name,
            }
        )
    return pd.DataFrame(rows)


def importances(study) -> dict[str, float]:
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(done) < 3 or not done[0].params:
        return {}
    try:
        return optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def history_plot(study, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
        ax = ovm.plot_optimization_history(study, target_name="eval reward")
    ax.figure.set_size_inches(6, 4)
    ax.figure.tight_layout()
    save_figure(ax.figure, path, dpi=120)
    plt.close(ax.figure)
    return path


def write_tuning_report(root: Path, studies: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"# Tuning: {root.name}", ""]
    best_rows = []
    for v, study in studies.items():
        df = trials_frame(study)
        counts = df["state"].value_counts().to_dict() if not df.empty else {}
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value) if done else None
        best_rows.append(
            {
                "study": study.study_name,
                "trials": len(df),
                "complete": counts.get("complete", 0),
                "pruned": counts.get("pruned", 0),
                "failed": counts.get("fail", 0),
                "best trial": best.number if best else "-",
                "best objective": f"{best.value:.4f}" if best else "-",
                "best params": json.dumps(best.params) if best else "-",
            }
        )
        lines += [f"## {v}", "", f"Study `{study.study_name}`; budget {json.dumps(study.user_attrs.get('budget'))}."]
        plot = history_plot(study, root / f"history_{v}.png")
        if plot:
            lines += ["", f"![optimization history]({plot.name})"]
        imp = importances(study)
        if imp:
            lines += ["", "Parameter importances (PED-ANOVA): " + ", ".join(f"{k} {w:.2f}" for k, w in imp.items())]
        if not df.empty:
            lines += ["", render(df, "md")]
        lines.append("")
    lines[2:2] = [render(pd.DataFrame(best_rows), "md"), ""]
    path = root / "tuning.md"
    atomic_write(path, "\n".join(lines) + "\n")
    atomic_write(root / "best.csv", pd.DataFrame(best_rows).to_csv(index=False))
    return path


def tuned_experiment(exp, studies: dict, budget: dict | None = None, dest: Path | None = None) -> dict:
    """The experiment with each variant's settings replaced by its study's best trial, run at the
    trials' `budget` (the tune section's: every trial's, so a tuned run spends what a trial
    spent), with its seeds and report and no tune section: what `python -m grpo_zoo.sweep` runs to
    compare the methods tuned. `base:` is written relative to the folder of `dest` (the file's
    own place), so the file moves with a checkout. Variants without a completed trial keep
    their settings."""
    import copy
    import os

    from grpo_zoo.config.schema import deep_merge

    raw = copy.deepcopy(exp.raw)
    raw.pop("tune", None)
    raw["name"] = f"{exp.name}-tuned"
    if raw.get("base"):
        base = (Path(exp.path).parent / raw["base"]).resolve()
        raw["base"] = os.path.relpath(base, Path(dest).parent.resolve()) if dest is not None else str(base)
    if budget:  # as trial_config sets it: the units it names, the others off
        whole = {"steps": None, "device_hours": None, "flops": None, **budget}
        raw["config"] = deep_merge(raw.get("config") or {}, {"budget": whole})
    variants = raw.get("variants") or {}
    for v, study in studies.items():
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if v not in variants or not done:
            continue
        best = max(done, key=lambda t: t.value)
        from grpo_zoo.launch.tuning.space import decode

        for key, value in best.params.items():
            node = variants[v]
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = decode(value)
    return raw


def write_tuned_experiment(root: Path, exp, studies: dict, budget: dict | None = None) -> Path:
    import yaml

    path = root / "tuned.yaml"
    header = (
        f"# python -m grpo_zoo.sweep {path} --max-parallel 2\n"
        f"# {exp.name} with each variant at its best trial of `python -m grpo_zoo.tune {exp.path}`\n"
        "# (written by the tuner; the budget per run is the experiment's, as every trial's was).\n"
    )
    atomic_write(path, header + yaml.safe_dump(tuned_experiment(exp, studies, budget, path), sort_keys=False))
    return path
