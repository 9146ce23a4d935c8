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
import zlib
from pathlib import Path

import optuna

from grpo_zoo.errors import ConfigError, given_path, readable_file, writable_file
from grpo_zoo.training.trainer import Hook, StopRun

DIRECTION = "maximize"


def normalize_storage(url: str | None, default_dir: Path) -> str:
    """An absolute, self-contained storage URL (jobs on other nodes open the same one)."""
    if url is None:
        return f"sqlite:///{(default_dir / 'optuna.db').resolve()}"
    if url.startswith("journal:"):
        return f"journal:{given_path(url[len('journal:') :], '--storage', 'journal file').expanduser().resolve()}"
    if url.endswith((".log", ".journal")) and "://" not in url:
        return f"journal:{given_path(url, '--storage', 'journal file').expanduser().resolve()}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{given_path(url[len('sqlite:///') :], '--storage', 'database file').resolve()}"
    if "://" not in url:
        raise ConfigError(f"--storage: {url!r} is neither journal:PATH nor a database URL (sqlite:///PATH, ...)")
    return url


def storage_file(url: str) -> Path | None:
    """The file a journal or sqlite storage lives in (None for a database server)."""
    if url.startswith("journal:"):
        return Path(url[len("journal:") :])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


def check_storage(url: str, must_exist: bool) -> None:
    """Before any compute: a storage file is readable (must_exist) or can be created."""
    path = storage_file(url)
    if path is None:
        return
    if must_exist:
        if not path.is_file():
            raise ConfigError(f"--storage: no study storage at {str(path)!r} (give the --storage the study ran with)")
        readable_file(path, "--storage")
    elif path.exists():
        if not path.is_file():
            raise ConfigError(f"--storage: {str(path)!r} is not a file")
        writable_file(path, "--storage")
    else:
        writable_file(path, "--storage")


def open_storage(url: str, create: bool = True):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        if create:
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # several processes write one file: wait on its lock instead of failing
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        except Exception as err:  # not a database, or an unwritable one: say so before any compute
            first = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
            raise ConfigError(f"--storage: cannot open {url!r}: {type(err).__name__}: {first}") from None
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
    except (TypeError, ValueError) as err:
        raise ConfigError(f"tune.pruner: {err}") from None
    return optuna.pruners.NopPruner()


def _sampler(spec: dict, seed: int | None) -> optuna.samplers.BaseSampler:
    opts = {k: v for k, v in spec.items() if k not in ("name", "seed")}
    try:
        if spec["name"] == "random":
            return optuna.samplers.RandomSampler(seed=seed, **opts)
        return optuna.samplers.TPESampler(seed=seed, **opts)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"tune.sampler: {err}") from None


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A seeded sampler whose stream is drawn per trial: trial N of study S samples with the seed
    (seed, S, N). The storage hands out trial numbers, so drivers that share it (in parallel, or
    one restarted after a kill) never replay one stream and propose the same parameters, while
    the same study history and trial number still give the same proposal."""

    def __init__(self, spec: dict, seed: int):
        self.spec, self.seed = spec, int(seed)
        self._by_trial: dict[tuple[str, int], optuna.samplers.BaseSampler] = {}
        _sampler(spec, 0)  # bad options fail now, not at the first trial

    def inner(self, study, trial) -> optuna.samplers.BaseSampler:
        key = (study.study_name, trial.number)
        if key not in self._by_trial:
            if len(self._by_trial) > 256:
                self._by_trial.clear()
            seed = zlib.crc32(f"{self.seed}:{study.study_name}:{trial.number}".encode())
            self._by_trial[key] = _sampler(self.spec, seed)
        return self._by_trial[key]

    def infer_relative_search_space(self, study, trial):
        return self.inner(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner(study, trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner(study, trial).after_trial(study, trial, state, values)
        self._by_trial.pop((study.study_name, trial.number), None)

    def reseed_rng(self) -> None:  # the streams are fixed by (seed, study, trial number)
        pass


def make_sampler(spec: dict, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler: seeded per trial when the spec has a seed (see TrialSeededSampler)."""
    seed = spec.get("seed")
    if seed is None:
        return _sampler(spec, None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"tune.sampler.seed: an integer, got {seed!r}")
    return TrialSeededSampler(spec, seed + salt)


def load_study(
    storage_url: str,
    name: str,
    pruner_spec: dict,
    sampler_spec: dict | None = None,
    salt: int = 0,
    create: bool = True,
):
    """The study `name` in the storage; with create=False a missing storage or study is a
    ConfigError and nothing is created."""
    sampler = make_sampler(sampler_spec, salt) if sampler_spec else None
    if not create:
        check_storage(storage_url, must_exist=True)
        storage = open_storage(storage_url, create=False)
        try:
            names = [s.study_name for s in storage.get_all_studies()]
        except Exception as err:  # a file that is no storage
            raise ConfigError(f"--storage: cannot read {storage_url}: {type(err).__name__}") from None
        if name not in names:
            have = f"it holds {', '.join(names)}" if names else "it holds no study"
            raise ConfigError(f"--storage: no study {name!r} in {storage_url} ({have})")
        return optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(pruner_spec), sampler=sampler)
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
    """Whether a trial's job (from a driver that died) still runs (or is queued): then it is waited for."""
    from grpo_zoo.launch.jobs import is_active, job_state

    return is_active(job_state(executor, job_id))
