"""Time to target: the compute each algorithm needs to reach a fixed eval reward.

Runs benchmarks/time_to_target.yaml through the sweep (3 seeds per algorithm, the same FLOPs
budget; finished runs are reused), then reads the run directories: per run, the device-hours
and FLOPs at which the eval reward first reaches the target (linear interpolation between
evaluations), averaged over seeds, and the ratio to Flow-GRPO's (the paper reports 6x).
Two means: over the seeds that reach the target, and over all seeds with a seed that never
reaches it counted at the whole budget it spent (a lower bound on its cost; the "bounded"
speed-ups use it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TARGET = 0.305


def run_sweep(runs_dir: Path, log=print) -> Path:
    import os

    from grpo_zoo.config.experiment import check_runs, load_experiment
    from grpo_zoo.launch.sweep import sweep

    exp = load_experiment(HERE / "time_to_target.yaml", runs_dir)
    check_runs(exp)
    # the runs are subprocesses with their own rendezvous, not ranks of this process's group
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    sweep(exp, "local", {}, max_parallel=1, wait=True, threads=None)
    return Path(runs_dir) / exp.name


def measure(root: Path, target: float = TARGET) -> dict:
    from grpo_zoo.analysis import load_runs
    from grpo_zoo.analysis.stats import cost_to_target

    data = load_runs(root)
    out = {"target": target, "algorithms": {}}
    for x in ("compute/device_hours", "compute/flops"):
        hits = cost_to_target(data, target, x)
        for variant, g in hits.groupby("variant"):
            vals = g[x].to_numpy(float)
            reached = g["reached"].to_numpy(float) > 0
            entry = out["algorithms"].setdefault(variant, {"seeds": len(vals), "reached": int(reached.sum())})
            entry[x] = float(vals[reached].mean()) if reached.any() else float("nan")
            # a seed that never reaches the target counts as the whole budget: a lower bound on its cost
            bound = g["cost"].to_numpy(float)
            entry[x + "_lower_bound"] = float(bound.mean())
            final = data.runs[data.runs["variant"] == variant]["eval/reward"]
            entry["final_eval_reward"] = float(final.mean())
    base = out["algorithms"].get("flow_grpo", {})
    for entry in out["algorithms"].values():
        for x, key in (("compute/device_hours", "speedup_device_hours"), ("compute/flops", "speedup_flops")):
            for suffix in ("", "_lower_bound"):
                b, c = base.get(x + suffix, float("nan")), entry.get(x + suffix, float("nan"))
                ok = np.isfinite(b) and np.isfinite(c) and c > 0
                entry[key + suffix.replace("_lower_bound", "_bounded")] = b / c if ok else float("nan")
    return out


def run(runs_dir: Path, target: float = TARGET, log=print) -> dict:
    root = run_sweep(runs_dir, log)
    res = measure(root, target)
    for name, e in res["algorithms"].items():
        log(
            f"  {name:<16} reached {e['reached']}/{e['seeds']}: {e['compute/device_hours'] * 3600:.1f} device-s, "
            f"{e['compute/flops']:.3g} FLOPs; speed-up vs flow_grpo {e['speedup_device_hours']:.2f}x (time), "
            f"{e['speedup_flops']:.2f}x (FLOPs); final eval {e['final_eval_reward']:.3f}"
        )
    return res
