"""Optuna plumbing: storages, samplers, pruners, and the hook that reports from inside a run.

Storage URLs (`--storage`):
- none: sqlite in the tuning folder (RUNS/<experiment>-tune/optuna.db);
- `journal:PATH` (or a path ending .log / .journal): Optuna's journal file storage, the one
  to use on a shared filesystem (NFS, Lustre) where sqlite locking is unreliable;
- any SQLAlchemy URL: `sqlite:///study.db`, `postgresql://user@host/db`, `mysql+pymysql://...`.

A trial is a training run in a submitit job. Inside that job `TrialReporter` evaluates at
each rung (a fraction of the budget), reports the eval reward to the study, and ends the run
as `pruned` when the pruner says so or when the reward has collapsed.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import optuna

from grpo_zoo.errors import ConfigError
from grpo_zoo.trainer import Hook, StopRun

DIRECTION = "maximize"


def normalize_storage(url: str | None, default_dir: Path) -> str:
    """An absolute, self-contained storage URL (jobs on other nodes open the same one)."""
    if url is None:
        return f"sqlite:///{(default_dir / 'optuna.db').resolve()}"
    if url.startswith("journal:"):
        return f"journal:{Path(url[len('journal:') :]).expanduser().resolve()}"
    if url.endswith((".log", ".journal")) and "://" not in url:
        return f"journal:{Path(url).expanduser().resolve()}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{Path(url[len('sqlite:///') :]).resolve()}"
    if "://" not in url:
        raise ConfigError(f"--storage: {url!r} is neither journal:PATH nor a database URL (sqlite:///PATH, ...)")
    return url


def open_storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # several processes write one file: wait on its lock instead of failing
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # a missing driver or an unreachable server: say so before any compute
        raise ConfigError(f"--storage: cannot open {url!r}: {type(err).__name__}: {err}") from None


def make_pruner(spec: dict) -> optuna.pruners.BasePruner:
    opts = {k: v for k, v in spec.items() if k != "name"}
    try:
        if spec["name"] == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 0, **opts})
        if spec["name"] == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, "reduction_factor": 2, **opts})
    except TypeError as err:
        raise ConfigError(f"tune.pruner: {err}") from None
    return optuna.pruners.NopPruner()


def make_sampler(spec: dict, salt: int = 0) -> optuna.samplers.BaseSampler:
    opts = {k: v for k, v in spec.items() if k != "name"}
    if "seed" in opts and opts["seed"] is not None:
        opts["seed"] = int(opts["seed"]) + salt  # each study its own stream
    try:
        if spec["name"] == "random":
            return optuna.samplers.RandomSampler(**opts)
        return optuna.samplers.TPESampler(**opts)
    except TypeError as err:
        raise ConfigError(f"tune.sampler: {err}") from None


def load_study(storage_url: str, name: str, pruner_spec: dict, sampler_spec: dict | None = None, salt: int = 0):
    sampler = make_sampler(sampler_spec, salt) if sampler_spec else None
    return optuna.create_study(
        study_name=name,
        storage=open_storage(storage_url),
        direction=DIRECTION,
        pruner=make_pruner(pruner_spec),
        sampler=sampler,
        load_if_exists=True,
    )


class TrialReporter(Hook):
    """Reports a run's eval reward at each rung to its Optuna trial; prunes it when told to.

    Picklable (it travels in the submitit job); connects to the storage on first use. Only
    rank 0 talks to the storage; the decision is broadcast so every rank stops together.
    """

    def __init__(self, storage_url: str, study_name: str, trial_id: int, pruner: dict, rungs: int, drop: float):
        self.storage_url, self.study_name, self.trial_id = storage_url, study_name, trial_id
        self.pruner, self.rungs, self.drop = pruner, rungs, drop
        self.reported = 0
        self.best = -math.inf
        self._trial = None

    def __getstate__(self) -> dict:  # a requeued job pickles its hooks: not the connection
        return {**self.__dict__, "_trial": None}

    def trial(self) -> optuna.Trial:
        if self._trial is None:
            study = load_study(self.storage_url, self.study_name, self.pruner)
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_start(self, trainer) -> None:
        # a resumed run does not evaluate again at the rungs it already passed
        self.reported = math.floor(trainer.budget_fraction() * self.rungs + 1e-9)

    def on_eval(self, trainer, row: dict) -> None:
        value = row["eval/reward"]
        if math.isfinite(value):
            self.best = max(self.best, value)

    def after_iteration(self, trainer) -> None:
        rung = math.floor(trainer.budget_fraction() * self.rungs + 1e-9)
        if rung <= self.reported or rung >= self.rungs:  # the last rung is the objective itself
            return
        self.reported = rung
        value = trainer.evaluate_and_log()["eval/reward"]
        verdict = 0.0
        if trainer.rank == 0:
            trial = self.trial()
            if not math.isfinite(value):
                verdict = 1.0
            else:
                trial.report(value, rung)
                if value < self.best * (1 - self.drop):
                    verdict = 2.0
                elif trial.should_prune():
                    verdict = 3.0
        verdict = trainer.engine.broadcast_float(verdict)
        reasons = {
            1.0: f"non-finite eval reward at rung {rung}/{self.rungs}",
            2.0: f"collapsed: eval reward {value:.4g} fell {self.drop:.0%} below its best {self.best:.4g}",
            3.0: f"pruned at rung {rung}/{self.rungs} (eval reward {value:.4g})",
        }
        if verdict:
            raise StopRun("pruned", reasons[verdict])


def job_alive(executor: str, job_id: str | None) -> bool:
    """Whether a trial's job (from a driver that died) still runs: then it is waited for."""
    if not job_id:
        return False
    if executor == "slurm":
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0 and bool(out.stdout.strip())
    try:
        pid = int(job_id)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))
