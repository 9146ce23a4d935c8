"""The tuning driver: K workers, each asks a study for a trial, runs it as a job, tells the result.

Several drivers (on several login nodes, or one restarted after a kill) may share one storage.
Each trial it runs carries the driver's `owner` and a `heartbeat` in its user attributes. A
RUNNING trial whose owner is gone (its process is dead on this host, or its heartbeat is older
than OWNER_STALE_S) is adopted: its job is waited for if it still runs, and otherwise
resubmitted, resuming from the run's last checkpoint. No trial is lost or run twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from grpo_zoo.errors import ConfigError
from grpo_zoo.launch.tuning.space import TuneSpec, decode, encode, trial_config
from grpo_zoo.launch.tuning.study import TrialReporter, job_alive, load_study
from grpo_zoo.runs import RunDir

OWNER_STALE_S = 120.0
HEARTBEAT_S = 15.0


@dataclass
class Task:
    variant: str
    number: int
    trial_id: int
    params: dict
    adopted: bool


def outcome(run_dir: Path, error: str | None) -> tuple[TrialState, float | None, str]:
    """What a finished job's run directory says: (state, objective, reason)."""
    status = RunDir(run_dir).status()
    kind = status.get("status")
    if kind == "completed":
        value = status.get("eval/reward")
        if value is not None and math.isfinite(value):
            return TrialState.COMPLETE, float(value), status.get("reason", "")
        return TrialState.FAIL, None, f"non-finite objective {value}"
    if kind == "pruned":
        return TrialState.PRUNED, None, status.get("reason", "")
    if kind == "diverged":
        return TrialState.FAIL, None, f"diverged: {status.get('reason', '')}"
    # the run's own reason (its status.json) says why; the job's error is only the fallback
    return TrialState.FAIL, None, status.get("reason") or error or f"run ended as {kind!r}"


class Tuner:
    def __init__(self, name, spec: TuneSpec, bases, storage_url, executor, make_executor, root, threads, out):
        self.spec, self.bases, self.storage_url = spec, bases, storage_url
        self.executor_kind, self.root, self.threads, self.out = executor, Path(root), threads, out
        self.studies = {
            v: load_study(storage_url, f"{name}.{v}", spec.pruner, spec.sampler, salt=i)
            for i, v in enumerate(spec.variants)
        }
        for v, study in self.studies.items():
            if not study.trials:
                for entry in spec.enqueued(v):
                    study.enqueue_trial({k: encode(val) for k, val in entry.items()}, skip_if_exists=True)
            study.set_user_attr("objective", "final eval/reward at the budget (maximised)")
            study.set_user_attr("budget", spec.budget)
        self.executor = make_executor()
        self.host = socket.gethostname()
        self.token = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock = threading.Lock()
        self.owned: dict[int, str] = {}  # trial_id -> variant
        self.done = threading.Event()
        self.errors: list[BaseException] = []

    # -- which trial next ---------------------------------------------------------------
    def orphaned(self, t: optuna.trial.FrozenTrial) -> bool:
        owner = str(t.user_attrs.get("owner", ""))
        if owner == self.token:
            return False
        beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else 0)
        host, _, pid = owner.partition(":")
        if host == self.host and pid.split(":")[0].isdigit() and not job_alive("local", pid.split(":")[0]):
            return True
        return time.time() - float(beat) > OWNER_STALE_S

    def claim(self, study, t) -> bool:
        trial = optuna.trial.Trial(study, t._trial_id)
        trial.set_user_attr("owner", self.token)
        trial.set_user_attr("heartbeat", time.time())
        time.sleep(0.5)  # another driver adopting it at the same moment: the later write wins
        return study._storage.get_trial(t._trial_id).user_attrs.get("owner") == self.token

    def next_task(self) -> Task | None:
        with self.lock:
            for v, study in self.studies.items():
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if t._trial_id not in self.owned and self.orphaned(t) and self.claim(study, t):
                        self.owned[t._trial_id] = v
                        params = {k: decode(p) for k, p in t.params.items()}
                        return Task(v, t.number, t._trial_id, params, adopted=True)
            load = []
            for i, (v, study) in enumerate(self.studies.items()):
                started = sum(1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)
                if started < self.spec.n_trials:
                    load.append((started, i, v))
            if not load:
                return None
            v = min(load)[2]
            trial = self.studies[v].ask()
            params = {k: p.suggest(trial) for k, p in self.spec.spaces[v].items()}
            trial.set_user_attr("owner", self.token)
            trial.set_user_attr("heartbeat", time.time())
            self.owned[trial._trial_id] = v
            return Task(v, trial.number, trial._trial_id, params, adopted=False)

    # -- running one --------------------------------------------------------------------
    def run_dir(self, task: Task) -> Path:
        return self.root / f"{task.variant}-t{task.number:04d}_seed{self.spec.seed}"

    def execute(self, task: Task) -> None:
        from grpo_zoo.launch.jobs import TrainJob

        study = self.studies[task.variant]
        trial = optuna.trial.Trial(study, task.trial_id)
        run_dir = self.run_dir(task)
        missing = set(self.spec.spaces[task.variant]) - set(task.params)
        if missing:  # its driver died between asking and drawing: it never ran, and cannot be rebuilt
            self.finish(task, TrialState.FAIL, None, f"orphaned before {sorted(missing)[0]} was drawn")
            return
        try:
            config = trial_config(self.bases[task.variant], self.spec, task.params, str(run_dir.resolve()))
        except ConfigError as err:
            self.finish(task, TrialState.FAIL, None, f"invalid config: {err}")
            return
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("overrides", json.dumps(task.params))
        trial.set_user_attr("threads", self.threads)
        error = None
        job_id = trial.user_attrs.get("job_id") if task.adopted else None
        if task.adopted and job_alive(self.executor_kind, job_id):
            self.say(f"{task.variant} trial {task.number}: adopted, waiting for its job {job_id}")
            while job_alive(self.executor_kind, job_id):
                time.sleep(2)
        elif not RunDir(run_dir).is_complete():
            if task.adopted:
                self.say(f"{task.variant} trial {task.number}: adopted, resuming {run_dir.name}")
            hook = TrialReporter(
                self.storage_url,
                study.study_name,
                task.trial_id,
                self.spec.pruner,
                self.spec.rungs,
                self.spec.collapse_drop,
            )
            try:
                with self.lock:
                    job = self.executor.submit(TrainJob(config, self.threads, hooks=[hook]))
                trial.set_user_attr("job_id", str(job.job_id))
                while not job.done():
                    time.sleep(1)
                job.results()  # every task of a multi-task job
            except Exception as err:  # the job failed (or could not be submitted): the trial fails, the study goes on
                lines = str(err).strip().splitlines()
                error = lines[-1] if lines else type(err).__name__
        state, value, reason = outcome(run_dir, error)
        self.finish(task, state, value, reason)

    def finish(self, task: Task, state: TrialState, value: float | None, reason: str) -> None:
        study = self.studies[task.variant]
        trial = optuna.trial.Trial(study, task.trial_id)
        trial.set_user_attr("reason", reason[:500])
        try:
            study.tell(task.number, value if state == TrialState.COMPLETE else None, state=state)
        except (ValueError, RuntimeError) as err:  # already told by another driver
            self.say(f"{task.variant} trial {task.number}: {err}")
        with self.lock:
            self.owned.pop(task.trial_id, None)
        shown = f"{value:.4f}" if value is not None else "-"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in task.params.items())
        self.say(f"{task.variant} trial {task.number}: {state.name.lower()} {shown} ({params}) {reason}")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- the workers ----------------------------------------------------------------------
    def worker(self) -> None:
        try:
            while not self.done.is_set() and (task := self.next_task()) is not None:
                self.execute(task)
        except BaseException as err:  # reported by run(); the other workers go on
            self.errors.append(err)

    def heartbeat(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            with self.lock:
                owned = dict(self.owned)
            for trial_id, v in owned.items():
                with contextlib.suppress(Exception):  # a finished trial is read-only: nothing to keep alive
                    optuna.trial.Trial(self.studies[v], trial_id).set_user_attr("heartbeat", time.time())

    def run(self, workers: int) -> None:
        beat = threading.Thread(target=self.heartbeat, daemon=True)
        beat.start()
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(workers)]
        for i, t in enumerate(threads):
            t.start()
            if i + 1 < len(threads):
                time.sleep(1.0)  # the sampler sees the trials already asked
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(0.5)
        finally:
            self.done.set()
        if self.errors:
            raise self.errors[0]


def summary_lines(studies: dict) -> list[str]:
    lines = []
    for v, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
        text = (
            f"{v}: {len(trials)} trials, {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
            f"{count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running"
        )
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if done:
            best = max(done, key=lambda t: t.value)
            text += f"; best trial {best.number}: {best.value:.4f} with {json.dumps(best.params)}"
        lines.append(text)
    return lines
