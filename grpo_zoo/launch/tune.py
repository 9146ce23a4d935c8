"""Tune an experiment's algorithms with Optuna at equal compute: `python -m grpo_zoo.tune EXPERIMENT`.

One study per variant (`<experiment>.<variant>`), searching the `tune:` section's spaces
(grpo_zoo/launch/tuning/space.py). Every trial is a run with the same fixed budget, dispatched by
the sweep's submitit executors (`--executor local|slurm`); `--workers K` trials run at once,
and several tune commands may share one `--storage`. The objective is the final eval reward;
evaluations at the rungs feed the pruner; NaN runs fail and collapsed runs are pruned, and
the study goes on. Kill it and run the same command again: RUNNING trials are adopted and
resumed from their checkpoints, and the study continues to --n-trials per variant.
Trials land in RUNS_DIR/<experiment>-tune/<variant>-tNNNN_seed<s> (the report reads them);
tuning.md there has each study's history, importances and best parameters.
`--replay VARIANT:N` runs trial N again from its complete config and compares the objective.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from grpo_zoo.errors import AT_LEAST_ONE, ArgParser, ConfigError, cli, number, readable_file, writable_dir

EXECUTORS = ("local", "slurm")


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.tune", description=__doc__.split("\n")[0])
    p.add_argument("experiment", help="experiment YAML with a tune: section")
    p.add_argument(
        "--n-trials",
        type=number(int, AT_LEAST_ONE),
        default=None,
        help="trials per variant's study (default: tune.n_trials)",
    )
    p.add_argument(
        "--storage", default=None, help="sqlite:///PATH (default in the tuning folder), journal:PATH, or a DB URL"
    )
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--workers", type=number(int, AT_LEAST_ONE), default=1, help="trials at a time (this command)")
    p.add_argument("--cluster", default=None, help="cluster profile YAML (slurm/clusters/NAME.yaml)")
    p.add_argument("--runs-dir", default="runs", help="trials land in RUNS_DIR/<experiment>-tune (default runs)")
    p.add_argument("--threads", type=number(int, AT_LEAST_ONE), default=None, help="torch threads per trial (CPU)")
    p.add_argument("--replay", default=None, metavar="[VARIANT:]N", help="run trial N again and compare its objective")
    p.add_argument("--report-only", action="store_true", help="write tuning.md from an existing storage; run nothing")
    return p


def bases_for(exp, spec) -> dict[str, dict]:
    """Each tuned variant's run config (its first run with the tuning seed, else its first)."""
    out = {}
    for v in spec.variants:
        runs = [r for r in exp.runs if r.variant == v]
        same_seed = [r for r in runs if r.seed == spec.seed]
        out[v] = (same_seed or runs)[0].config
    return out


def parse_replay(text: str, variants: list[str]) -> tuple[str, int]:
    variant, _, number = text.rpartition(":")
    if not variant:
        if len(variants) != 1:
            raise ConfigError(f"--replay: several studies ({', '.join(variants)}); write VARIANT:N")
        variant = variants[0]
    if variant not in variants or not number.isdigit():
        raise ConfigError(f"--replay: expected [VARIANT:]N with VARIANT in {', '.join(variants)}, got {text!r}")
    return variant, int(number)


def replay(tuner_args, studies, spec, bases, root: Path, executor_factory, out=None) -> int:
    out = out or sys.stdout  # read at call time: a caller may have redirected it
    from optuna.trial import TrialState

    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build, to_dict
    from grpo_zoo.launch.jobs import TrainJob
    from grpo_zoo.launch.tuning.space import decode, trial_config
    from grpo_zoo.runs import RunDir

    variant, number = tuner_args
    trials = [t for t in studies[variant].get_trials(deepcopy=False) if t.number == number]
    if not trials or trials[0].state in (TrialState.WAITING,):
        raise ConfigError(f"--replay: study {studies[variant].study_name} has no trial {number}")
    t = trials[0]
    name = f"{variant}-t{number:04d}-replay_seed{spec.seed}"
    run_dir = (root / "replays" / name).resolve()
    source = Path(str(t.user_attrs.get("run_dir", "")))
    if (source / "config.yaml").exists():  # the trial's complete, resolved config
        config = to_dict(build(RunConfig, {**RunDir(source).config(), "run_dir": str(run_dir)}))
    else:
        params = {k: decode(v) for k, v in t.params.items()}
        config = trial_config(bases[variant], spec, params, str(run_dir))
    threads = t.user_attrs.get("threads")
    if not RunDir(run_dir).is_complete():
        job = executor_factory().submit(TrainJob(config, threads))
        while not job.done():
            time.sleep(1)
        job.results()
    status = RunDir(run_dir).status()
    value = status.get("eval/reward")
    if value is None:
        print(
            f"replay of {variant} trial {number}: the run ended {status.get('status')!r} without an objective "
            f"({status.get('reason', '')})",
            file=out,
        )
        return 1
    print(f"replay of {variant} trial {number} ({t.state.name.lower()}): objective {value:.6f}", file=out)
    if t.value is not None:
        print(f"trial's objective {t.value:.6f}, difference {abs(value - t.value):.2e}", file=out)
    print(f"config: {run_dir / 'config.yaml'}  (python -m grpo_zoo.train {run_dir / 'config.yaml'})", file=out)
    return 0


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from grpo_zoo.config.experiment import load_experiment
    from grpo_zoo.launch.sweep import load_cluster, make_executor
    from grpo_zoo.launch.tuning.space import check_spaces, parse_tune, resolve

    if args.report_only and args.replay:
        raise ConfigError("--report-only and --replay: give one of them")
    readable_file(args.experiment, "experiment")
    writable_dir(args.runs_dir, "--runs-dir")
    exp = load_experiment(args.experiment, args.runs_dir)
    variants = list(dict.fromkeys(r.variant for r in exp.runs))
    spec = parse_tune(exp.tune, variants, sorted({r.seed for r in exp.runs}), f"{exp.path}: tune")
    if args.n_trials is not None:
        spec.n_trials = args.n_trials
    from grpo_zoo.launch.tuning.study import make_pruner, make_sampler

    make_pruner(spec.pruner), make_sampler(spec.sampler)  # bad options: one line now, not at the first trial
    bases = bases_for(exp, spec)
    resolve(spec, bases, f"{exp.path}: tune")  # relative spaces around each variant's own values
    check_spaces(spec, bases, f"{exp.path}: tune")  # every value, before the first trial
    cluster = load_cluster(args.cluster)
    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--executor slurm: no sbatch on PATH (start slurm/test-cluster/start.sh or use --executor local)"
        )
    root = Path(args.runs_dir) / f"{exp.name}-tune"
    writable_dir(root, "--runs-dir")
    replay_of = parse_replay(args.replay, spec.variants) if args.replay else None

    from grpo_zoo.launch.tuning.driver import Tuner, summary_lines
    from grpo_zoo.launch.tuning.report import write_tuning_report
    from grpo_zoo.launch.tuning.study import check_storage, load_study, normalize_storage

    url = normalize_storage(args.storage, root)
    existing = bool(args.report_only or replay_of)  # these read a study: they never create one
    check_storage(url, must_exist=existing)
    if existing:
        studies = {
            v: load_study(url, f"{exp.name}.{v}", spec.pruner, spec.sampler, salt=i, create=False)
            for i, v in enumerate(spec.variants)
        }
    root.mkdir(parents=True, exist_ok=True)

    def executor_factory():
        return make_executor(args.executor, root / ".submitit", cluster, exp.resources, args.workers)

    if existing:
        if replay_of:
            return replay(replay_of, studies, spec, bases, root, executor_factory)
    else:
        start = time.time()
        print(
            f"{exp.name}: {len(spec.variants)} studies x {spec.n_trials} trials, {args.workers} worker(s), "
            f"storage {url}",
            flush=True,
        )
        tuner = Tuner(exp.name, spec, bases, url, args.executor, executor_factory, root, args.threads, sys.stdout)
        tuner.run(args.workers)
        studies = tuner.studies
        print(f"wall time: {time.time() - start:.0f} s")
    for line in summary_lines(studies):
        print(line)
    print(f"tuning report: {write_tuning_report(root, studies)}")
    from grpo_zoo.launch.tuning.report import write_tuned_experiment

    print(f"tuned experiment: {write_tuned_experiment(root, exp, studies, spec.budget)}")
    print(f"trials: {root}  (python -m grpo_zoo.report {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
