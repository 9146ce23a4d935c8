"""Optuna tuning: studies of real toy runs, with parallel workers, pruning, kills and replays."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from grpo_zoo.analysis import load_runs
from grpo_zoo.errors import ConfigError
from grpo_zoo.launch.tuning.space import parse_tune
from grpo_zoo.launch.tuning.study import normalize_storage, open_storage
from grpo_zoo.runs import RunDir

from .helpers import ROOT, clean_env, run_module

FAST = {
    "data": {"prompts_per_step": 2, "group_size": 4, "eval_samples": 8},
    "sampling": {"steps": 6, "eval_steps": 6},
    "checkpoint_every": 2,
    "save_eval_videos": False,
}


def write_tune(tmp_path: Path, tune: dict, variants: dict | None = None, name: str = "tiny") -> Path:
    exp = {
        "name": name,
        "base": str(ROOT / "experiments" / "toy" / "base.yaml"),
        "config": FAST,
        "seeds": [0],
        "variants": variants or {"flash_grpo": {"algorithm": {"name": "flash_grpo"}}},
        "tune": {
            "n_trials": 3,
            "budget": {"flops": 3.0e10},
            "rungs": 2,
            "pruner": {"name": "median", "n_startup_trials": 1},
            "sampler": {"name": "random", "seed": 0},
            **tune,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# python -m grpo_zoo.tune {path}\n" + yaml.safe_dump(exp))
    return path


def tune(exp: Path, runs: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return run_module("grpo_zoo.tune", str(exp), "--runs-dir", str(runs), "--threads", "1", *args, env=env)


def trials(storage: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()


def test_spaces_parse_and_bad_input_is_one_line_exit_2(tmp_path):
    spec = parse_tune(
        {"space": {"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True}, "algorithm.k_range": [None, [0, 4]]}},
        ["flash_grpo"],
        [3],
        "tune",
    )
    lr, k = spec.spaces["flash_grpo"]["optim.lr"], spec.spaces["flash_grpo"]["algorithm.k_range"]
    assert (lr.kind, lr.log, k.kind, spec.seed) == ("float", True, "categorical", 3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {str(k.suggest(study.ask())) for _ in range(20)}
    assert seen == {"None", "[0, 4]"}  # lists travel through Optuna as JSON and come back as lists
    with pytest.raises(ConfigError, match="pruner.name"):
        parse_tune({"space": {"optim.lr": [1e-4]}, "pruner": {"name": "hyperband2"}}, ["a"], [0], "tune")
    assert normalize_storage("journal:rel/x.log", tmp_path).startswith("journal:/")
    assert normalize_storage(None, tmp_path) == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"

    cases = [
        ({"space": {"optim.lrr": [1e-4]}}, "optim.lrr"),
        ({"space": {"optim.lr": {"low": 1e-3, "high": 1e-5}}}, "low < high"),
        ({"space": {"data.group_size": [1, 4]}}, "group_size"),
        ({"space": {"optim.lr": [1e-4]}, "variants": ["nope"]}, "no variant 'nope'"),
    ]
    for tune_section, needle in cases:
        exp = write_tune(tmp_path, tune_section)
        out = tune(exp, tmp_path / "runs")
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr
    out = tune(write_tune(tmp_path, {"space": {"optim.lr": [1e-4]}}), tmp_path / "runs", "--storage", "nodb")
    assert out.returncode == 2 and "--storage" in out.stderr
    assert not (tmp_path / "runs" / "tiny-tune" / "optuna.db").exists()


@pytest.mark.slow
def test_two_workers_complete_the_study_prune_and_replay(tmp_path):
    # lr 0.05 wrecks the toy model within a few steps: that trial must be pruned as collapsed
    exp = write_tune(
        tmp_path,
        {"space": {"optim.lr": [3.0e-4, 0.05]}, "enqueue": [{"optim.lr": 3.0e-4}, {"optim.lr": 0.05}]},
    )
    runs = tmp_path / "runs"
    out = tune(exp, runs, "--workers", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    root = runs / "tiny-tune"
    ts = trials(f"sqlite:///{root / 'optuna.db'}", "tiny.flash_grpo")
    states = [t.state for t in ts]
    assert len(ts) == 3 and TrialState.RUNNING not in states, states
    assert states.count(TrialState.PRUNED) >= 1 and states.count(TrialState.COMPLETE) >= 1, states
    pruned = next(t for t in ts if t.state == TrialState.PRUNED)
    assert pruned.params["optim.lr"] == 0.05 and "collapsed" in pruned.user_attrs["reason"]
    assert pruned.intermediate_values, "the pruned trial reported a rung"
    # both workers ran at once: two trials' time spans overlap
    spans = sorted((t.datetime_start, t.datetime_complete) for t in ts)
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:]))
    # trials are ordinary runs the report reads; pruned ones say so
    data = load_runs(root)
    assert len(data) == 3 and set(data.runs["status"]) == {"completed", "pruned"}
    text = (root / "tuning.md").read_text()
    assert "| tiny.flash_grpo |" in text and (root / "history_flash_grpo.png").exists()

    best = max((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    # the tuned experiment: each variant at its best trial, runnable by the sweep as it stands
    from grpo_zoo.config.experiment import load_experiment

    tuned = load_experiment(str(root / "tuned.yaml"), str(runs))
    assert tuned.name == "tiny-tuned" and not tuned.tune
    assert tuned.runs[0].config["optim"]["lr"] == best.params["optim.lr"]
    # at exactly the trials' budget (the experiment's own config says steps: 2), and movable
    trial_budget = RunDir(best.user_attrs["run_dir"]).config()["budget"]
    assert tuned.runs[0].config["budget"] == trial_budget == {"steps": None, "device_hours": None, "flops": 3.0e10}
    assert not Path(yaml.safe_load((root / "tuned.yaml").read_text())["base"]).is_absolute()
    out = tune(exp, runs, "--replay", f"flash_grpo:{best.number}")
    assert out.returncode == 0, out.stderr[-3000:]
    value = float(re.search(r"objective ([0-9.]+)\n", out.stdout).group(1))
    assert abs(value - best.value) < 1e-6, out.stdout
    assert (root / "replays" / f"flash_grpo-t{best.number:04d}-replay_seed0" / "COMPLETED").exists()


@pytest.mark.slow
def test_a_killed_study_resumes_without_losing_a_trial(tmp_path):
    exp = write_tune(tmp_path, {"space": {"optim.lr": {"low": 1e-4, "high": 1e-3, "log": True}}})
    runs = tmp_path / "runs"
    root = runs / "tiny-tune"
    storage = f"journal:{tmp_path / 'study.log'}"
    cmd = [sys.executable, "-m", "grpo_zoo.tune", str(exp), "--runs-dir", str(runs), "--threads", "1"]
    cmd += ["--storage", storage, "--n-trials", "2"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env()
    )
    first = root / "flash_grpo-t0000_seed0" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), proc.communicate()[0].decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its trial's job, mid-run
    proc.wait()
    before = trials(storage, "tiny.flash_grpo")
    assert [t.state for t in before] == [TrialState.RUNNING]

    out = tune(exp, runs, "--storage", storage, "--n-trials", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trial 0: adopted" in out.stdout, out.stdout
    after = trials(storage, "tiny.flash_grpo")
    assert [t.number for t in after] == [0, 1]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after), [t.state for t in after]
    assert after[0].params == before[0].params
    meta = yaml.safe_load((root / "flash_grpo-t0000_seed0" / "meta.json").read_text())
    assert meta.get("resumes"), "trial 0 resumed from its checkpoint instead of starting over"


@pytest.mark.slow
def test_trials_run_as_slurm_jobs_with_journal_storage(tmp_path, slurm):
    exp = write_tune(tmp_path, {"space": {"optim.clip_range": [0.1, 0.2]}, "n_trials": 2})
    storage = f"journal:{tmp_path / 'study.log'}"
    args = ("--executor", "slurm", "--cluster", "slurm/clusters/local-test.yaml", "--workers", "2")
    out = tune(exp, tmp_path / "runs", "--storage", storage, *args, env=slurm)
    assert out.returncode == 0, out.stderr[-3000:]
    ts = trials(storage, "tiny.flash_grpo")
    assert len(ts) == 2 and all(t.state == TrialState.COMPLETE for t in ts), [t.state for t in ts]
    assert all(t.user_attrs["job_id"].isdigit() for t in ts)  # SLURM job ids


def test_drivers_sharing_a_storage_draw_their_own_sampler_streams(tmp_path):
    import io

    from grpo_zoo.launch.tuning.driver import Tuner
    from grpo_zoo.launch.tuning.study import make_sampler

    for sampler in ({"name": "random", "seed": 0}, {"name": "tpe", "seed": 0}):
        space = {"optim.lr": {"low": 1e-5, "high": 1e-2, "log": True}, "optim.beta": {"low": 0.0, "high": 0.1}}
        spec = parse_tune({"space": space, "sampler": sampler}, ["a"], [0], "tune")
        url = f"journal:{tmp_path / (sampler['name'] + '.log')}"

        def driver(spec=spec, url=url):  # a driver process: its own Tuner, its own sampler, the one storage
            return Tuner("x", spec, {"a": {}}, url, "local", lambda: None, tmp_path, None, io.StringIO())

        first, second = driver(), driver()
        tasks = [first.next_task(), second.next_task(), first.next_task()]
        restarted = driver()  # after a kill: a fresh sampler, the trial numbers go on
        tasks.append(restarted.next_task())
        assert [t.number for t in tasks] == [0, 1, 2, 3]
        proposals = {tuple(sorted(t.params.items())) for t in tasks}
        assert len(proposals) == 4, proposals  # nobody proposes what another already runs
        # the stream is the study's and the trial number's: the same history gives the same proposal
        again = optuna.create_study(study_name="x.a", sampler=make_sampler(spec.sampler), direction="maximize")
        trial = again.ask()
        assert {k: p.suggest(trial) for k, p in spec.spaces["a"].items()} == tasks[0].params


def test_a_failed_trial_records_the_runs_own_reason(tmp_path):
    import json

    from grpo_zoo.launch.tuning.driver import outcome

    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"status": "failed", "reason": "RuntimeError: CUDA out of memory"}))
    state, value, reason = outcome(run, "submitit.core.utils.FailedJobError: see log /x/123_0_log.err")
    assert (state, value, reason) == (TrialState.FAIL, None, "RuntimeError: CUDA out of memory")


def test_report_only_and_replay_refuse_a_missing_storage_or_study(tmp_path, capsys):
    exp = write_tune(tmp_path, {"space": {"optim.lr": [1e-4, 3e-4]}})
    runs = tmp_path / "runs"
    journal = tmp_path / "other.log"
    optuna.create_study(study_name="not.this", storage=open_storage(f"journal:{journal}"))
    before = journal.read_bytes()
    from grpo_zoo.launch.tune import main

    for args, needle in [
        (["--report-only"], "no study storage"),
        (["--replay", "0", "--storage", f"journal:{tmp_path / 'none.log'}"], "no study storage"),
        (["--report-only", "--storage", f"sqlite:///{tmp_path / 'none.db'}"], "no study storage"),
        (["--replay", "flash_grpo:0", "--storage", f"journal:{journal}"], "no study 'tiny.flash_grpo'"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([str(exp), "--runs-dir", str(runs), *args])
        assert exit_.value.code == 2, args
        assert needle in capsys.readouterr().err, args
    assert not (runs / "tiny-tune").exists() and not (tmp_path / "none.log").exists()
    assert not (tmp_path / "none.db").exists() and journal.read_bytes() == before


def test_the_search_space_is_checked_against_the_run_config_before_the_first_trial(tmp_path):
    # the toy runs here sample 6 steps: a k_range reaching step 9 cannot run; said before any trial
    exp = write_tune(tmp_path, {"space": {"algorithm.k_range": [[0, 3], [0, 9]]}})
    from grpo_zoo.launch.tune import main

    with pytest.raises(SystemExit) as exit_:
        main([str(exp), "--runs-dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2 and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_drivers_in_parallel_on_one_storage_propose_distinct_params(tmp_path):
    exp = write_tune(tmp_path, {"space": {"optim.lr": {"low": 1e-4, "high": 1e-3, "log": True}}, "n_trials": 4})
    runs = tmp_path / "runs"
    storage = f"journal:{tmp_path / 'study.log'}"
    cmd = [sys.executable, "-m", "grpo_zoo.tune", str(exp), "--runs-dir", str(runs), "--threads", "1"]
    cmd += ["--storage", storage]
    drivers = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
        for _ in range(2)
    ]
    outs = [d.communicate(timeout=1800)[0] for d in drivers]
    assert all(d.returncode == 0 for d in drivers), outs[0][-2000:] + outs[1][-2000:]
    ts = trials(storage, "tiny.flash_grpo")
    assert len(ts) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts), ts
    assert len({t.params["optim.lr"] for t in ts}) == 4, [t.params for t in ts]
    owners = {str(t.user_attrs["owner"]).rsplit(":", 1)[0] for t in ts}
    assert len(owners) == 2, owners  # both drivers ran trials


def test_a_relative_space_is_one_rule_around_each_methods_own_value(tmp_path):
    """`times` searches each variant around its own resolved value (its reference's clip range
    here): the same rule, different ranges; `reference` enqueues that value; a variant whose own
    value is 0 cannot be searched relatively, in one line before any trial."""
    from grpo_zoo.config.experiment import load_experiment
    from grpo_zoo.launch.tune import bases_for
    from grpo_zoo.launch.tuning.space import resolve

    variants = {"flow_grpo": {"algorithm": {"name": "flow_grpo"}}, "mix_grpo": {"algorithm": {"name": "mix_grpo"}}}
    space = {"optim.clip_range": {"times": [0.25, 4], "log": True}, "optim.lr": {"low": 1e-4, "high": 1e-2}}
    path = write_tune(
        tmp_path, {"space": space, "enqueue": [{"optim.clip_range": "reference", "optim.lr": 2e-3}]}, variants
    )
    exp = load_experiment(path, tmp_path / "runs")
    spec = parse_tune(exp.tune, list(variants), [0], "tune")
    resolve(spec, bases_for(exp, spec), "tune")
    own = {"flow_grpo": 1e-3, "mix_grpo": 1e-4}  # their references' clip ranges (Settings per method)
    for v, clip in own.items():
        param = spec.spaces[v]["optim.clip_range"]
        assert (param.low, param.high, param.log) == pytest.approx((clip / 4, clip * 4, True))
        assert spec.enqueued(v) == [{"optim.clip_range": clip, "optim.lr": 2e-3}]
        assert spec.spaces[v]["optim.lr"].low == 1e-4  # an absolute space stays as written
    spec = parse_tune({"space": {"optim.beta": {"times": [0.5, 2]}}}, list(variants), [0], "tune")
    with pytest.raises(ConfigError, match=r"optim.beta: a relative space needs .* mix_grpo has 0.0 .*spaces.mix_grpo"):
        resolve(spec, bases_for(exp, spec), "tune")
    for bad, words in (([4, 0.25], "0 < low < high"), ([0, 1], "0 < low < high"), ([1], "two finite"), ("x", "two")):
        with pytest.raises(ConfigError, match=words):
            parse_tune({"space": {"optim.clip_range": {"times": bad}}}, ["a"], [0], "tune")
    spec = parse_tune({"space": {"optim.lr": [1e-3]}, "enqueue": [{"optim.lr": "reference"}]}, ["flow_grpo"], [0], "t")
    with pytest.raises(ConfigError, match="reference is only for a key searched with times"):
        resolve(spec, bases_for(exp, spec), "t")


def test_the_tuned_leaderboard_is_declared_on_the_leaderboards_runs_with_one_rule():
    """experiments/zoo/tune.yaml: the leaderboard's variants and runs, every study the same
    relative space, trials and budget, its first trial the method at its reference settings."""
    from grpo_zoo.config.experiment import load_experiment
    from grpo_zoo.launch.tune import bases_for
    from grpo_zoo.launch.tuning.space import check_spaces, resolve

    zoo = ROOT / "experiments" / "zoo"
    exp, board = (load_experiment(zoo / f, "/tmp/unused") for f in ("tune.yaml", "leaderboard.yaml"))
    assert [(r.name, r.config) for r in exp.runs] == [(r.name, r.config) for r in board.runs]
    variants = list(dict.fromkeys(r.variant for r in exp.runs))
    spec = parse_tune(exp.tune, variants, [0, 1, 2], "tune")
    assert spec.variants == variants and spec.budget == {"flops": board.runs[0].config["budget"]["flops"]}
    bases = bases_for(exp, spec)
    resolve(spec, bases, "tune")
    check_spaces(spec, bases, "tune")
    for v in variants:
        assert {k: p.times for k, p in spec.spaces[v].items()} == {
            "optim.lr": (0.333, 3.0),
            "optim.clip_range": (0.25, 4.0),
        }
        assert spec.enqueued(v) == [spec.references[v]]
