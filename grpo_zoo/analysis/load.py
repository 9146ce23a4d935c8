"""Run directories into pandas.

`load_runs(root)` finds every run directory under `root` (any depth: a laptop quickstart or
a 96-GPU sweep) and returns a `Runs` with
- `metrics`: one row per metrics.jsonl row, with the run's `run`, `variant`, `seed`,
  `algorithm` columns prepended;
- `runs`: one row per run: identity, every field of its `algorithm` config section as a
  column `algorithm.<field>` (whatever the algorithm; lists as tuples, mappings as JSON text,
  a field the algorithm lacks is NaN), status, final eval metrics, compute;
- `experiment`: what the sweep recorded in the folder (experiment.json): the variants in the
  experiment's order and its declared baseline; empty for a bare folder of runs. Runs come
  in that order.

Metrics are read strictly: a malformed file is a `MetricsError` (a ConfigError: one line
naming file:line, exit status 2 in the report), never a silently shorter table.

A run's variant is its directory name without the `_seed<N>` suffix, so seeds of one
variant aggregate together.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from grpo_zoo.runs import COMPLETED, CONFIG, METRICS, MetricsError, RunDir, read_experiment, read_metrics
from grpo_zoo.runs.files import read_state

SEED_SUFFIX = re.compile(r"_seed(\d+)$")


@dataclass
class Runs:
    metrics: pd.DataFrame
    runs: pd.DataFrame
    experiment: dict = field(default_factory=dict)
    """The sweep's record of the experiment: `variants` (in order) and `baseline` (declared, or None)."""

    @property
    def train(self) -> pd.DataFrame:
        return self.metrics[self.metrics["kind"] == "train"]

    @property
    def evals(self) -> pd.DataFrame:
        return self.metrics[self.metrics["kind"] == "eval"]

    def __len__(self) -> int:
        return len(self.runs)


def find_run_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    found = {p.parent for p in root.rglob(METRICS) if (p.parent / CONFIG).exists() or (p.parent / CONFIG).is_symlink()}
    return sorted(p for p in found if ".stale-" not in p.name and ".submitit" not in p.parts)


def variant_of(name: str) -> str:
    return SEED_SUFFIX.sub("", name)


def ordered(variants, experiment: dict) -> list[str]:
    """Distinct `variants` in the experiment's order; any it does not list after, sorted."""
    order = {v: i for i, v in enumerate(experiment.get("variants") or [])}
    return sorted(dict.fromkeys(variants), key=lambda v: (order.get(v, len(order)), v))


def variants_under(root: str | Path) -> list[str]:
    """The variants of the runs under `root`, in the experiment's order (no metrics are read)."""
    return ordered((variant_of(p.name) for p in find_run_dirs(root)), read_experiment(root))


def cell(value: Any) -> Any:
    """A config value as a hashable, JSON-able table cell: lists become tuples, mappings JSON text."""
    if isinstance(value, list | tuple):
        return tuple(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def budget_unit(budget: dict) -> str | None:
    """The unit a run's budget was set in: flops, device_hours or steps (the first set)."""
    for unit in ("flops", "device_hours", "steps"):
        if budget.get(unit) is not None:
            return unit
    return None


def metrics_rows(run: RunDir, info: dict) -> list[dict]:
    """A run's rows, checked: a line that does not parse, or a completed run's file that is
    empty, cut, or ends before the run's last step, is a MetricsError naming file:line. A
    last row cut off mid-write in a run that has not ended is left out and flagged in
    `info["metrics_note"]`."""
    path = run.path / METRICS
    rows, note = read_metrics(path, torn_tail_ok=not info["completed"])
    if note:
        info["metrics_note"] = note
    if info["completed"]:
        if not rows:
            raise MetricsError(f"{path}:1: empty, but the run completed; the metrics file is damaged")
        step = read_state(run.path / COMPLETED, default={}, what="completion marker").get("step")
        if isinstance(step, int) and not isinstance(step, bool) and rows[-1]["step"] != step:
            raise MetricsError(
                f"{path}:{len(rows)}: ends at step {rows[-1]['step']} but the run completed at step {step}; "
                "rows are missing"
            )
    return rows


def _scores_problem(scores: dict) -> str | None:
    bad = [k for k, v in scores.items() if not isinstance(v, int | float) or isinstance(v, bool)]
    return f"the score of {bad[0]!r} is {scores[bad[0]]!r}, expected a number" if bad else None


def reward_info(name) -> dict:
    """A run's `reward` (its training entry: the reward's name, or `weighted`) and, for several
    weighted rewards, `reward_weights` ("entry=weight, ...")."""
    if isinstance(name, dict):
        from grpo_zoo.rewards.weighted import WEIGHTED

        return {"reward": WEIGHTED, "reward_weights": ", ".join(f"{k}={v:g}" for k, v in name.items())}
    return {"reward": name}


def load_run(path: Path, metric: str | None = None) -> tuple[pd.DataFrame, dict]:
    run = RunDir(path)
    cfg = run.config()
    alg = cfg.get("algorithm") or {}
    name = path.name
    info = {
        "run": str(path),
        "name": name,
        "variant": variant_of(name),
        "seed": cfg.get("seed", 0),
        "algorithm": alg.get("name"),
        **reward_info((cfg.get("reward") or {}).get("name")),
        **{f"algorithm.{key}": cell(value) for key, value in alg.items()},
        "budget_unit": budget_unit(cfg.get("budget") or {}),
        **comparability(cfg),
        "status": run.status().get("status"),
        "completed": run.is_complete(),
    }
    # VBench's scores of the final eval videos (python -m grpo_zoo.vbench ingest)
    for dim, score in read_state(path / "vbench.json", default={}, what="VBench scores", check=_scores_problem).items():
        info[f"vbench/{dim}"] = score
    rows = rank_on(pd.DataFrame(metrics_rows(run, info)), metric, path)
    if rows.empty:
        return rows, info
    for key in ("run", "variant", "seed", "algorithm"):
        rows.insert(0, key, info[key])
    evals = rows[rows["kind"] == "eval"]
    if not evals.empty:
        last = evals.iloc[-1]
        for col in evals.columns:
            if col.startswith("eval/"):
                info[col] = last[col]
        info["eval/reward_best"] = evals["eval/reward"].max()
        info["eval/reward_initial"] = evals["eval/reward"].iloc[0]
    last = rows.iloc[-1]
    for col in rows.columns:
        if col.startswith("compute/"):
            info[col] = last[col]
    info["steps"] = int(rows["step"].max())
    return rows, info


COMPARED = {
    "budget": "budgets",
    "evaluation": "evaluations",
    "base_model": "base models",
}
"""What runs ranked as one leaderboard must share (load_run's columns), and the words for it."""


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def comparability(cfg: dict) -> dict[str, str]:
    """The budget, evaluation (samples, steps, prompts, seed, guidance) and base model of a run's
    config, each as one label: runs that differ in one do not rank as one leaderboard."""
    budget = cfg.get("budget") or {}
    data, sampling, model = cfg.get("data") or {}, cfg.get("sampling") or {}, cfg.get("model") or {}
    limits = ", ".join(f"{k} {_short(v)}" for k, v in sorted(budget.items()) if v is not None) or "none"
    evaluation = (
        f"{data.get('eval_samples')} samples of {data.get('eval_prompts')}, {sampling.get('eval_steps')} steps, "
        f"seed {data.get('eval_seed')}, guidance {sampling.get('guidance')}"
    )
    base = f"{model.get('backend')}:{model.get('path')}" + (f" ({model['arch']})" if model.get("arch") else "")
    return {"budget": limits, "evaluation": evaluation, "base_model": base}


def groups_of(runs: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(label, run paths) of each set of comparable runs (same budget, evaluation and base model)."""
    keys = [k for k in COMPARED if k in runs.columns]
    if not keys or runs.empty:
        return [("all", runs["run"].tolist() if "run" in runs else [])]
    out = []
    for values, part in runs.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append(("; ".join(f"{k} {v}" for k, v in zip(keys, values)), part["run"].tolist()))
    return out


def mixed(runs: pd.DataFrame) -> str | None:
    """What makes `runs` incomparable as one leaderboard, in one phrase (None: nothing)."""
    for key, words in COMPARED.items():
        if key in runs.columns and runs[key].nunique(dropna=False) > 1:
            shown = "; ".join(
                f"{v} ({', '.join(sorted(runs.loc[runs[key] == v, 'variant'].unique())[:3])})"
                for v in runs[key].unique()[:3]
            )
            return f"the runs have different {words}: {shown}"
    return None


def subset(data: Runs, paths: list[str]) -> Runs:
    """The runs at `paths` alone."""
    keep = set(paths)
    return Runs(
        metrics=data.metrics[data.metrics["run"].isin(keep)].reset_index(drop=True),
        runs=data.runs[data.runs["run"].isin(keep)].reset_index(drop=True),
        experiment=data.experiment,
    )


def rank_on(metrics: pd.DataFrame, metric: str | None, root) -> pd.DataFrame:
    """The metrics with eval/reward replaced by eval/<metric> (the experiment's report.metric: the
    report ranks on it); the training reward's evaluation stays as eval/train_reward."""
    if not metric or metrics.empty:
        return metrics
    col = f"eval/{metric}"
    evals = metrics["kind"] == "eval"
    if not evals.any():
        return metrics
    if col not in metrics or metrics.loc[evals, col].isna().all():
        raise MetricsError(f"{root}: report.metric {metric!r}: no run logs {col}")
    out = metrics.copy()
    out["eval/train_reward"] = out["eval/reward"]
    out.loc[evals, "eval/reward"] = out.loc[evals, col]
    return out


def load_runs(root: str | Path) -> Runs:
    """Every run under `root` (ValueError if there is none), in the experiment's variant order."""
    experiment, paths = read_experiment(root), find_run_dirs(root)
    rank = {v: i for i, v in enumerate(ordered((variant_of(p.name) for p in paths), experiment))}
    frames, infos = [], []
    for path in sorted(paths, key=lambda p: (rank[variant_of(p.name)], p.name)):
        rows, info = load_run(path, experiment.get("metric"))
        infos.append(info)
        if not rows.empty:
            frames.append(rows)
    if not infos:
        raise ValueError(f"no run directories under {root}")
    if not frames:  # nothing logged anywhere yet: no table or plot can be made
        first = Path(infos[0]["run"]) / METRICS
        raise MetricsError(f"{first}:1: no metrics row in any run under {root} (runs not started yet?)")
    metrics = pd.concat(frames, ignore_index=True)
    runs = pd.DataFrame(infos)
    for col in runs.columns:  # as recorded: a None stays None (NaN: the algorithm has no such field)
        if col.startswith("algorithm."):
            runs[col] = pd.Series([i.get(col, float("nan")) for i in infos], dtype=object)
    return Runs(metrics=metrics, runs=runs, experiment=experiment)
