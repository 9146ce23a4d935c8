"""Run an experiment's runs: `python -m grpo_zoo.sweep EXPERIMENT.yaml [options]`.

Expands the experiment (variants x grid x seeds), skips runs already completed with the
same resolved config, and submits the rest as submitit jobs: a SLURM job array
(`--executor slurm`, resources from `--cluster slurm/clusters/NAME.yaml`), subprocesses on
this machine (`--executor local`, `--max-parallel` at a time), or in this process
(`--executor debug`). Run directories land in RUNS_DIR/<experiment>/<run>. A failing run
never stops the others; rerunning the command resubmits failed runs (they resume from
their last checkpoint). At the end it writes the report and says where everything is;
RUNS_DIR/<experiment>/experiment.json tells the report the variants' order and the baseline.

Sweeps know their jobs: RUNS_DIR/<experiment>/sweep.json records each run's job id. A rerun
asks the scheduler (squeue, scontrol; no accounting needed) about them first and submits
nothing for a run whose job is still queued, running or held for a requeue; it waits for
those jobs too. A job the scheduler no longer lists has ended (cancelled, killed): the run's
own status says how far it got. `--status` shows the scheduler's state beside each run's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from grpo_zoo.config.cluster import ClusterProfile, submitit_parameters
from grpo_zoo.config.experiment import Experiment, Resources, RunSpec, check_runs, load_experiment
from grpo_zoo.config.schema import build
from grpo_zoo.errors import AT_LEAST_ONE, ArgParser, ConfigError, cli, number, readable_file, writable_dir
from grpo_zoo.launch.jobs import is_active, job_state
from grpo_zoo.runs import (
    CONFIG,
    EXPERIMENT,
    RunDir,
    RunLock,
    atomic_write,
    budget_shrinks,
    read_experiment,
    run_difference,
)
from grpo_zoo.runs.files import read_state

EXECUTORS = ("local", "slurm", "debug")


def load_cluster(path: str | None) -> ClusterProfile:
    """The cluster profile at `path` (built and checked like a run config); None: an empty one."""
    if path is None:
        return ClusterProfile()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--cluster: no cluster profile {path!r} (see slurm/clusters/)")
    readable_file(p, "--cluster")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--cluster: {path}: not valid YAML{at} (see slurm/clusters/local-test.yaml)") from None
    try:
        return build(ClusterProfile, data)
    except ConfigError as err:
        raise ConfigError(f"--cluster: {path}: {err}") from None


def run_state(spec: RunSpec) -> str:
    """done | diverged | stale | failed | partial | new."""
    run = RunDir(spec.config["run_dir"])
    if not run.path.exists():
        return "new"
    run.check_state()  # a damaged file: one line naming it, and nothing submitted
    if not (run.path / CONFIG).is_file():
        return "partial"
    stored = run.config()
    if run_difference(stored, spec.config):
        return "stale"
    if run.is_finished() and budget_shrinks(stored, spec.config):  # its rows are past the new budget
        return "stale"
    status = run.status().get("status")
    if run.is_complete():  # a raised budget extends it from its last checkpoint
        return "done" if stored.get("budget") == spec.config.get("budget") else "partial"
    if status == "diverged":
        return "diverged"
    if status == "failed":
        return "failed"
    return "partial"


def sbatch_script(exp: Experiment, cluster: ClusterProfile, root: Path, max_parallel: int) -> str:
    """The sbatch script submitit writes for each run's job (one array of them), as --dry-run
    shows it: made in a scratch folder (nothing is written under the experiment's), needing no sbatch."""
    import tempfile

    from submitit.slurm.slurm import SlurmExecutor

    class Preview(SlurmExecutor):  # submitit's own SLURM executor, less its check that srun is here
        @classmethod
        def affinity(cls) -> int:
            return 1

    params = submitit_parameters("slurm", cluster, exp.resources, max_parallel)
    with tempfile.TemporaryDirectory() as scratch:
        ex = Preview(scratch)
        generic = ex._convert_parameters({k: v for k, v in params.items() if not k.startswith("slurm_")})
        ex.update_parameters(
            **generic, **{k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
        )
        text = ex._make_submission_file_text(ex._submitit_command_str, "DRYRUN").replace(
            scratch, str(root / ".submitit")
        )
    return text


def budget_line(exp: Experiment, states: dict[str, str]) -> str:
    """What the runs to submit will spend at most, in the units their budgets are given in (a run
    that resumes spends what is left of it)."""
    total: dict[str, float] = {}
    todo = [spec for spec in exp.runs if states[spec.name] not in ("done", "diverged")]
    for spec in todo:
        for unit, value in (spec.config.get("budget") or {}).items():
            if value:
                total[unit] = total.get(unit, 0.0) + float(value)
    spent = ", ".join(
        f"{value:.3g} training FLOPs" if unit == "flops" else f"{value:g} {unit.replace('_', '-')}"
        for unit, value in total.items()
    )
    return f"budget: {spent or 'nothing'} at most over the {len(todo)} runs to submit (each stops at its first limit)"


def make_executor(kind: str, folder: Path, cluster: ClusterProfile, resources: Resources, max_parallel: int):
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster=kind)
    ex.update_parameters(**submitit_parameters(kind, cluster, resources, max_parallel))
    return ex


def read_record(root: Path) -> dict:
    """sweep.json: each run's last job (key, job_id, executor, submitted)."""
    return read_state(root / "sweep.json", default={}, what="sweep record", check=_record_problem)


def _record_problem(record: dict) -> str | None:
    for name, entry in record.items():
        if not isinstance(entry, dict):
            return f"the entry of {name!r} is {entry!r}, expected a mapping (job_id, executor, submitted)"
        for key in ("job_id", "executor"):
            if not isinstance(entry.get(key), str | int | None):
                return f"{name}.{key} is {entry.get(key)!r}, expected a string"
    return None


def recorded_job(record: dict, name: str) -> tuple[str | None, str | None]:
    """(job id, the scheduler's state of it now) for a run's recorded job."""
    entry = record.get(name) or {}
    job_id = entry.get("job_id")
    return job_id, job_state(entry.get("executor", ""), job_id) if job_id else None


def print_status(exp: Experiment, root: Path | None = None) -> None:
    """One line per run; every run's files are read (a damaged one: one error line) before any is printed."""
    record = read_record(root) if root is not None else {}
    lines = [f"{'run':<48} {'state':<9} {'job':<22} {'step':>5} {'spent':>6} {'eval/reward':>11} {'device-s':>9}"]
    for spec in exp.runs:
        state = run_state(spec)
        rows = RunDir(spec.config["run_dir"]).rows() if state != "new" else []
        evals = [r for r in rows if r.get("kind") == "eval"]
        last = rows[-1] if rows else {}
        reward = f"{evals[-1]['eval/reward']:.4f}" if evals else "-"
        seconds = f"{last.get('compute/device_seconds') or 0:.0f}" if last else "-"
        job_id, job = recorded_job(record, spec.name)
        shown = f"{job or 'ended'} {job_id}" if job_id else "-"
        share = spent_share(spec.config.get("budget") or {}, last) if last else None
        spent = f"{share:.0%}" if share is not None else "-"
        lines.append(
            f"{spec.name:<48} {state:<9} {shown:<22} {last.get('step', '-'):>5} {spent:>6} {reward:>11} {seconds:>9}"
        )
    print("\n".join(lines))


def spent_share(budget: dict, row: dict) -> float | None:
    """The share of a run's budget its metrics row `row` had spent: the largest over the budgets set."""
    shares = []
    for limit, key, scale in (
        ("steps", "step", 1),
        ("flops", "compute/flops", 1),
        ("device_hours", "compute/device_seconds", 3600),
    ):
        value, have = budget.get(limit), row.get(key)
        if isinstance(value, (int, float)) and value > 0 and isinstance(have, (int, float)):
            shares.append(have / scale / value)
    return max(shares) if shares else None


def ended(spec: RunSpec, job_id: str, scheduler: str | None, grace: float = 5.0) -> tuple[str, str]:
    """A run whose job has ended: (its state, why), decided by the run's own status.json. A job
    no longer listed is never alone a verdict: a status still `running` is read again for
    `grace` seconds (a file system may show the last writes late) before the run is called
    ended unfinished."""
    run = RunDir(spec.config["run_dir"])
    deadline = time.monotonic() + grace
    while True:
        state = run_state(spec)
        status = run.status() if run.path.exists() else {}
        said = status.get("status")
        if state in ("done", "diverged") or (said in FINISHED and state != "stale"):
            return ("diverged" if said == "diverged" else "done"), status.get("reason", "")
        if state == "failed" or said == "failed":
            return "failed", status.get("reason") or "failed"
        if said != "running" or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    rows = run.rows() if run.path.exists() else []
    step = rows[-1].get("step", 0) if rows else 0
    how = scheduler.lower() if scheduler else "no longer listed by the scheduler"
    return "ended", f"job {job_id} ended ({how}) with the run {said or state} at step {step}"


FINISHED = ("completed", "pruned", "diverged")
"""What a run's status.json says once the run has its outcome."""


def sweep(
    exp: Experiment,
    executor: str,
    cluster: ClusterProfile,
    max_parallel: int,
    wait: bool,
    threads: int | None,
    out=None,
) -> dict[str, str]:
    """Submit what is not done and has no live job; return each run's final state (when waiting).
    The experiment's folder is locked while this runs: a second sweep of it exits 2 naming the first."""
    out = out or sys.stdout  # read at call time: a caller may have redirected it
    root = Path(exp.runs[0].config["run_dir"]).parent
    root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(root, SWEEP_LOCK, "sweep", SWEEP_RULE).acquire()  # released when this call returns
    try:
        return _sweep(exp, executor, cluster, max_parallel, wait, threads, out, root)
    finally:
        lock.release()


SWEEP_LOCK = "sweep.lock"
SWEEP_RULE = "one sweep at a time per experiment folder (wait for it to end or stop it; --status reads without it)"


def _sweep(exp, executor, cluster, max_parallel, wait, threads, out, root: Path) -> dict[str, str]:
    from tqdm import tqdm

    from grpo_zoo.launch.jobs import TrainJob

    record_path = root / "sweep.json"
    record = read_record(root)
    states = {spec.name: run_state(spec) for spec in exp.runs}  # a damaged run: one line, nothing written
    read_experiment(root)  # the same for the sweep's own record of the experiment
    atomic_write(root / EXPERIMENT, json.dumps(exp.record(), indent=1))  # the report's variant order and baseline
    todo: list[RunSpec] = []
    live: dict[str, tuple[str, str]] = {}  # run -> (executor, job id) of a job submitted before
    for spec in exp.runs:
        state = states[spec.name]
        if state in ("done", "diverged"):
            continue
        job_id, job = recorded_job(record, spec.name)
        if is_active(job):  # a writer is (or will be) on this run: never a second one
            live[spec.name] = (record[spec.name].get("executor", executor), job_id)
            print(f"{spec.name}: its job {job_id} is {job}; not submitted again", file=out)
            continue
        if state == "stale":  # another config lived here: keep it, aside, and start afresh
            path = Path(spec.config["run_dir"])
            shutil.move(str(path), str(path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")))
        todo.append(spec)
    skipped = len(exp.runs) - len(todo) - len(live)
    print(
        f"{exp.name}: {len(exp.runs)} runs, {skipped} already finished, submitting {len(todo)} ({executor})"
        + (f"; {len(live)} already queued or running" if live else ""),
        file=out,
    )
    if not todo and (not live or not wait):
        return {s.name: "submitted" if s.name in live else states[s.name] for s in exp.runs}
    jobs: dict[str, object] = {}
    ex = make_executor(executor, root / ".submitit", cluster, exp.resources, max_parallel) if todo else None

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
    if queue:
        submit([queue.pop(0) for _ in range(min(window, len(queue)))])
    if not wait:
        print(f"submitted; check with: python -m grpo_zoo.sweep {exp.path} --status", file=out)
        return {s.name: "submitted" for s in todo} | {n: "submitted" for n in live}
    specs = {s.name: s for s in exp.runs}
    waiting = len(todo) + len(live)
    final: dict[str, str] = {}
    bar = tqdm(total=waiting, desc=exp.name, unit="run", disable=os.environ.get("TQDM_DISABLE") == "1")

    def report(name: str, state: str, why: str) -> None:
        final[name] = state
        if state not in ("done", "diverged"):
            print(
                f"\n{name}: {'FAILED' if state == 'failed' else 'ENDED'} ({why}); log: {root / '.submitit'}", file=out
            )
        bar.update(1)
        bar.set_postfix_str(f"{name}: {state}")

    while len(final) < waiting:
        for name, job in list(jobs.items()):
            if name in final or not job_finished(executor, job):
                continue
            if executor == "slurm" and not job.paths.result_pickle.exists():  # cancelled, killed: no result
                report(name, *ended(specs[name], str(job.job_id), job_state(executor, str(job.job_id))))
                continue
            try:
                job.results()  # every task of a multi-task job
                report(name, *ended(specs[name], str(job.job_id), None))
            except Exception as err:  # one failing run never stops the others
                state, why = ended(specs[name], str(job.job_id), None)
                if state != "failed":
                    msg = str(err).strip().splitlines()
                    state, why = "failed", msg[-1] if msg else type(err).__name__
                report(name, state, why)
        for name, (kind, job_id) in live.items():
            if name not in final:
                job = job_state(kind, job_id)
                if not is_active(job):
                    report(name, *ended(specs[name], job_id, job))
        free = window - sum(1 for n in jobs if n not in final)
        if queue and free > 0:
            submit([queue.pop(0) for _ in range(min(free, len(queue)))])
        if len(final) < waiting:
            time.sleep(0.5)
    bar.close()
    return {s.name: final.get(s.name, states[s.name]) for s in exp.runs}


def job_finished(executor: str, job) -> bool:
    """Whether a job submitted here has ended. On SLURM the scheduler is asked (squeue, scontrol):
    submitit's own check reads accounting (sacct), which a cluster may not have."""
    if executor != "slurm":
        return job.done()
    return job.paths.result_pickle.exists() or not is_active(job_state("slurm", str(job.job_id)))


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.sweep", description=__doc__.split("\n")[0])
    p.add_argument("experiment", help="experiment YAML (experiments/...)")
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--cluster", default=None, help="cluster profile YAML (slurm/clusters/NAME.yaml)")
    p.add_argument("--runs-dir", default="runs", help="runs land in RUNS_DIR/<experiment>/<run> (default runs)")
    p.add_argument(
        "--max-parallel",
        type=number(int, AT_LEAST_ONE),
        default=1,
        help="runs at a time (local) or array parallelism (slurm)",
    )
    p.add_argument("--threads", type=number(int, AT_LEAST_ONE), default=None, help="torch threads per run (CPU)")
    look = p.add_mutually_exclusive_group()  # one way to look without submitting
    look.add_argument("--dry-run", action="store_true", help="list the runs and what would be submitted; run nothing")
    look.add_argument("--status", action="store_true", help="show each run's state and latest numbers")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    readable_file(args.experiment, "experiment")
    writable_dir(args.runs_dir, "--runs-dir")
    exp = load_experiment(args.experiment, args.runs_dir)
    cluster = load_cluster(args.cluster)
    looking = args.status or args.dry_run  # neither submits: no scheduler needed
    if args.executor == "slurm" and not looking and shutil.which("sbatch") is None:
        raise ConfigError(
            "--executor slurm: no sbatch on PATH (start slurm/test-cluster/start.sh or use --executor local)"
        )
    root = Path(args.runs_dir) / exp.name
    writable_dir(root, "--runs-dir")
    if args.status:
        print_status(exp, root)
        return 0
    check_runs(exp)
    if args.dry_run:
        read_record(root), read_experiment(root)  # the sweep's own state, damaged: one line
        states = {spec.name: run_state(spec) for spec in exp.runs}
        for spec in exp.runs:
            print(f"{states[spec.name]:<9} {spec.config['run_dir']}  {json.dumps(spec.overrides)}")
        todo = sum(1 for state in states.values() if state not in ("done", "diverged"))
        print(budget_line(exp, states))
        if args.executor == "slurm":
            print(
                f"sbatch script of a run's job (submitted as one array of {todo}, at most {args.max_parallel} at "
                "a time: submitit adds --array and names the logs %A_%a):\n"
                + sbatch_script(exp, cluster, root, args.max_parallel)
            )
        print(f"{exp.name}: {len(exp.runs)} runs, {todo} to submit ({args.executor}); nothing was submitted")
        return 0
    start = time.time()
    result = sweep(exp, args.executor, cluster, args.max_parallel, not args.no_wait, args.threads)
    if args.no_wait:
        return 0
    print_status(exp, root)
    report_at = None
    if not args.no_report:
        from grpo_zoo.report import write_report

        report_at = write_report(root)
    print(f"\nruns: {root}")
    if report_at:
        print(f"report: {report_at}")
        print("\n" + (report_at.parent / "headline.txt").read_text().strip())
    print(f"wall time: {time.time() - start:.0f} s")
    failed = [n for n, s in result.items() if s in ("failed", "ended")]
    if failed:
        print(
            f"{len(failed)} run(s) failed or ended unfinished: {', '.join(failed)}; "
            "rerun the same command to resubmit them (they resume from their last checkpoint)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
