"""Run an experiment's runs: `python -m grpo_zoo.sweep EXPERIMENT.yaml [options]`.

Expands the experiment (variants x grid x seeds), skips runs already completed with the
same resolved config, and submits the rest as submitit jobs: a SLURM job array
(`--executor slurm`, resources from `--cluster slurm/clusters/NAME.yaml`), subprocesses on
this machine (`--executor local`, `--max-parallel` at a time), or in this process
(`--executor debug`). Run directories land in RUNS_DIR/<experiment>/<run>. A failing run
never stops the others; rerunning the command resubmits failed runs (they resume from
their last checkpoint). At the end it writes the report and says where everything is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from grpo_zoo.cluster import CLUSTER_KEYS, submitit_parameters
from grpo_zoo.errors import ArgParser, ConfigError, cli
from grpo_zoo.experiment import Experiment, RunSpec, check_runs, load_experiment
from grpo_zoo.runs import RunDir, atomic_write

EXECUTORS = ("local", "slurm", "debug")


def load_cluster(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--cluster: no cluster profile {path!r} (see slurm/clusters/)")
    data = yaml.safe_load(p.read_text()) or {}
    unknown = set(data) - CLUSTER_KEYS
    if unknown:
        raise ConfigError(
            f"--cluster: {path}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(CLUSTER_KEYS))})"
        )
    return data


def run_state(spec: RunSpec) -> str:
    """done | diverged | stale | failed | partial | new."""
    run = RunDir(spec.config["run_dir"])
    if not run.path.exists():
        return "new"
    try:
        stored = run.config()
    except (FileNotFoundError, yaml.YAMLError):
        return "partial"
    strip = lambda d: {k: v for k, v in d.items() if k not in ("run_dir", "logging")}  # noqa: E731
    if strip(stored) != strip(spec.config):
        return "stale"
    status = run.status().get("status")
    if run.is_complete():
        return "done"
    if status == "diverged":
        return "diverged"
    if status == "failed":
        return "failed"
    return "partial"


def make_executor(kind: str, folder: Path, cluster: dict, resources: dict, max_parallel: int):
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster=kind)
    ex.update_parameters(**submitit_parameters(kind, cluster, resources, max_parallel))
    return ex


def print_status(exp: Experiment) -> None:
    print(f"{'run':<48} {'state':<9} {'step':>5} {'eval/reward':>11} {'device-s':>9}")
    for spec in exp.runs:
        state = run_state(spec)
        rows = RunDir(spec.config["run_dir"]).rows() if state != "new" else []
        evals = [r for r in rows if r.get("kind") == "eval"]
        last = rows[-1] if rows else {}
        reward = f"{evals[-1]['eval/reward']:.4f}" if evals else "-"
        seconds = f"{last.get('compute/device_seconds', 0):.0f}" if last else "-"
        print(f"{spec.name:<48} {state:<9} {last.get('step', '-'):>5} {reward:>11} {seconds:>9}")


def sweep(
    exp: Experiment,
    executor: str,
    cluster: dict,
    max_parallel: int,
    wait: bool,
    threads: int | None,
    out=sys.stdout,
) -> dict[str, str]:
    """Submit what is not done; return each run's final state (when waiting)."""
    from tqdm import tqdm

    from grpo_zoo.jobs import TrainJob

    root = Path(exp.runs[0].config["run_dir"]).parent
    root.mkdir(parents=True, exist_ok=True)
    states = {spec.name: run_state(spec) for spec in exp.runs}
    todo = []
    for spec in exp.runs:
        state = states[spec.name]
        if state in ("done", "diverged"):
            continue
        if state == "stale":  # another config lived here: keep it, aside, and start afresh
            path = Path(spec.config["run_dir"])
            shutil.move(str(path), str(path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")))
        todo.append(spec)
    skipped = len(exp.runs) - len(todo)
    print(
        f"{exp.name}: {len(exp.runs)} runs, {skipped} already finished, submitting {len(todo)} ({executor})", file=out
    )
    if not todo:
        return {s.name: states[s.name] for s in exp.runs}
    ex = make_executor(executor, root / ".submitit", cluster, exp.resources, max_parallel)
    jobs: dict[str, object] = {}
    record_path = root / "sweep.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}

    def submit(specs: list[RunSpec]) -> None:
        if executor == "slurm":
            with ex.batch():
                submitted = [(s, ex.submit(TrainJob(s.config, threads))) for s in specs]
        else:
            submitted = [(s, ex.submit(TrainJob(s.config, threads))) for s in specs]
        for s, job in submitted:
            jobs[s.name] = job
            record[s.name] = {"key": s.key, "job_id": str(job.job_id), "executor": executor, "submitted": time.time()}
        atomic_write(record_path, json.dumps(record, indent=1))

    window = len(todo) if executor == "slurm" else max(1, max_parallel)
    queue = list(todo)
    submit([queue.pop(0) for _ in range(min(window, len(queue)))])
    if not wait:
        print(f"submitted; check with: python -m grpo_zoo.sweep {exp.path} --status", file=out)
        return {s.name: "submitted" for s in todo}
    final: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=exp.name, unit="run", disable=os.environ.get("TQDM_DISABLE") == "1")
    while len(final) < len(todo):
        for name, job in list(jobs.items()):
            if name in final or not job.done():
                continue
            spec = next(s for s in todo if s.name == name)
            try:
                job.results()  # every task of a multi-task job
                final[name] = run_state(spec)
            except Exception as err:  # one failing run never stops the others
                final[name] = "failed"
                msg = str(err).strip().splitlines()
                print(
                    f"\n{name}: FAILED ({msg[-1] if msg else type(err).__name__}); log: {root / '.submitit'}", file=out
                )
            bar.update(1)
            bar.set_postfix_str(f"{name}: {final[name]}")
        free = window - sum(1 for n in jobs if n not in final)
        if queue and free > 0:
            submit([queue.pop(0) for _ in range(min(free, len(queue)))])
        if len(final) < len(todo):
            time.sleep(0.5)
    bar.close()
    return {s.name: final.get(s.name, states[s.name]) for s in exp.runs}


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.sweep", description=__doc__.split("\n")[0])
    p.add_argument("experiment", help="experiment YAML (experiments/...)")
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--cluster", default=None, help="cluster profile YAML (slurm/clusters/NAME.yaml)")
    p.add_argument("--runs-dir", default="runs", help="runs land in RUNS_DIR/<experiment>/<run> (default runs)")
    p.add_argument("--max-parallel", type=int, default=1, help="runs at a time (local) or array parallelism (slurm)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (CPU)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what would be submitted; run nothing")
    p.add_argument("--status", action="store_true", help="show each run's state and latest numbers")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be at least 1, got {args.max_parallel}")
    exp = load_experiment(args.experiment, args.runs_dir)
    cluster = load_cluster(args.cluster)
    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--executor slurm: no sbatch on PATH (start slurm/test-cluster/start.sh or use --executor local)"
        )
    root = Path(args.runs_dir) / exp.name
    if args.status:
        print_status(exp)
        return 0
    check_runs(exp)
    if args.dry_run:
        for spec in exp.runs:
            print(f"{run_state(spec):<9} {spec.config['run_dir']}  {json.dumps(spec.overrides)}")
        return 0
    start = time.time()
    result = sweep(exp, args.executor, cluster, args.max_parallel, not args.no_wait, args.threads)
    if args.no_wait:
        return 0
    print_status(exp)
    report_at = None
    if not args.no_report:
        from grpo_zoo.report import write_report

        report_at = write_report(root)
    print(f"\nruns: {root}")
    if report_at:
        print(f"report: {report_at}")
        print("\n" + (report_at.parent / "headline.txt").read_text().strip())
    print(f"wall time: {time.time() - start:.0f} s")
    failed = [n for n, s in result.items() if s == "failed"]
    if failed:
        print(
            f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun the same command to resubmit them",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
