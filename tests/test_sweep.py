"""Sweeps through submitit: on this machine (local executor) and on a real SLURM cluster."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from grpo_zoo.config.experiment import load_experiment
from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import build, load_config_file, to_dict
from grpo_zoo.errors import ConfigError
from grpo_zoo.runs import RunDir

from .helpers import ROOT, TINY, clean_env, damaged_checkpoint, run_module, slurm_sweep, write_experiment

QUICK_TWIN = {
    "flow_grpo": {"algorithm": {"name": "flow_grpo", "timestep_fraction": 0.5}},
    "flow_grpo_fast1": {"algorithm": {"name": "flow_grpo_fast", "window": 1}},
    "flash_grpo": {"algorithm": {"name": "flash_grpo"}},
}


def sweep(*args, env=None):
    return run_module("grpo_zoo.sweep", *args, "--no-report", env=env)


def test_experiment_files_expand_and_validate():
    for path in sorted((ROOT / "experiments").rglob("*.yaml")):
        if path.parent.name == "toy":
            continue
        first = path.read_text().splitlines()[0]
        if first.startswith("# Not a run:"):  # data an analysis reads (zoo/claims.yaml)
            continue
        if "variants" not in yaml.safe_load(path.read_text()):  # a run config (wan2.1/1.3b.yaml ...)
            assert first.startswith("# ") and (
                "python -m grpo_zoo.train" in first or "Not a run" in path.read_text()
            ), path
            build(RunConfig, load_config_file(path))
            continue
        exp = load_experiment(path, "/tmp/runs")
        verb = "tune" if exp.tune else "sweep"
        assert first.startswith(f"# python -m grpo_zoo.{verb}"), path
        assert exp.runs and len({r.name for r in exp.runs}) == len(exp.runs)
    grid = load_experiment(ROOT / "experiments/paper/ablation_grouping_rectification.yaml", "/tmp/runs")
    assert len(grid.runs) == 2 * 2 * 3
    combos = {(r.config["algorithm"]["grouping"], r.config["algorithm"]["rectify"]) for r in grid.runs}
    assert len(combos) == 4


def test_report_baseline_is_declared_by_name_exactly(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, "plain", QUICK_TWIN), tmp_path / "runs")
    assert exp.record()["variants"] == list(QUICK_TWIN) and exp.record()["baseline"] is None
    assert exp.baseline == "flow_grpo"  # undeclared: the first variant
    exp = load_experiment(write_experiment(tmp_path, "declared", QUICK_TWIN, report={"baseline": "flash_grpo"}))
    assert exp.baseline == exp.record()["baseline"] == "flash_grpo"
    grid = load_experiment(ROOT / "experiments/paper/ablation_grouping_rectification.yaml")
    assert grid.baseline == grid.variants[0] == "flash_grpo_grouping-isotemporal_rectify-true"  # with its grid values
    assert load_experiment(ROOT / "experiments/paper/efficiency.yaml").record()["baseline"] == "flow_grpo"
    for wrong in ("flow_grpo_fast", "flow_grpo_seed0", "FLOW_GRPO"):  # names match exactly
        path = write_experiment(tmp_path, "wrong", QUICK_TWIN, report={"baseline": wrong})
        with pytest.raises(ConfigError, match="variants: flow_grpo, flow_grpo_fast1, flash_grpo"):
            load_experiment(path)
        out = sweep(str(path), "--runs-dir", str(tmp_path / "runs"))  # refused before anything is submitted
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "report.baseline" in out.stderr
        assert not (tmp_path / "runs").exists()


def test_dry_run_lists_runs_and_submits_nothing(tmp_path):
    exp = write_experiment(tmp_path, "twin", QUICK_TWIN)
    out = sweep(str(exp), "--runs-dir", str(tmp_path / "runs"), "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("new") == 3 and not (tmp_path / "runs" / "twin").exists()
    assert "twin: 3 runs, 3 to submit (local); nothing was submitted" in out.stdout
    # a SLURM sweep is listed without a scheduler at hand (no sbatch on this PATH)
    out = sweep(str(exp), "--runs-dir", str(tmp_path / "runs"), "--executor", "slurm", "--dry-run", env={"PATH": ""})
    assert out.returncode == 0 and "3 to submit (slurm)" in out.stdout, out.stderr[-2000:]
    # with what it would spend and the sbatch script each run's job gets, and still nothing written
    assert re.search(r"^budget: \S+ (training FLOPs|steps).* at most over the 3 runs to submit", out.stdout, re.M), (
        out.stdout
    )
    script = out.stdout.split("sbatch script of a run's job", 1)[1]
    assert "#!/bin/bash" in script and "#SBATCH --ntasks-per-node=1" in script and "srun " in script
    assert str(tmp_path / "runs" / "twin" / ".submitit") in script and not (tmp_path / "runs").exists()


def test_bad_experiment_is_one_line_exit_2(tmp_path):
    exp = write_experiment(tmp_path, "bad", {"x": {"algorithm": {"name": "flash_grpo", "k_range": [0, 99]}}})
    out = sweep(str(exp), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "k_range" in out.stderr
    out = sweep(str(exp), "--executor", "slurm", "--cluster", "slurm/clusters/nope.yaml")
    assert out.returncode == 2 and "--cluster" in out.stderr


@pytest.mark.slow
def test_local_sweep_runs_skips_and_reports(tmp_path):
    exp = write_experiment(tmp_path, "twin", QUICK_TWIN)
    runs = tmp_path / "runs"
    out = run_module("grpo_zoo.sweep", str(exp), "--runs-dir", str(runs), "--executor", "local")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for name in QUICK_TWIN:
        assert RunDir(runs / "twin" / f"{name}_seed0").is_complete()
    assert (runs / "twin" / "report" / "report.md").exists()
    record = json.loads((runs / "twin" / "experiment.json").read_text())
    assert record["variants"] == list(QUICK_TWIN) and record["baseline"] is None  # the report's order, baseline
    assert (
        "Speed-ups against flow_grpo: the experiment's first variant." in (runs / "twin/report/report.md").read_text()
    )
    assert f"runs: {runs / 'twin'}" in out.stdout
    again = sweep(str(exp), "--runs-dir", str(runs), "--executor", "local")
    assert again.returncode == 0 and "3 already finished, submitting 0" in again.stdout


def test_a_second_sweep_of_the_same_experiment_exits_2_naming_the_first(tmp_path, capsys):
    """The sweep holds RUNS_DIR/<experiment>/sweep.lock while it submits and waits: a second
    sweep started beside it would submit the same runs. It gets one line and exit 2, submits
    nothing, and runs once the first has let go."""
    from grpo_zoo.launch.sweep import SWEEP_LOCK, SWEEP_RULE
    from grpo_zoo.launch.sweep import main as sweep_main
    from grpo_zoo.runs import RunLock

    exp = write_experiment(tmp_path, "twice", QUICK_TWIN)
    runs = tmp_path / "runs"
    first = RunLock(runs / "twice", SWEEP_LOCK, "sweep", SWEEP_RULE).acquire()  # as a running sweep holds it
    try:
        with pytest.raises(SystemExit) as end:
            sweep_main([str(exp), "--runs-dir", str(runs), "--no-wait", "--no-report"])
        assert end.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is being written by" in err and f"pid {os.getpid()}" in err, err
        assert "one sweep at a time" in err and not (runs / "twice" / "sweep.json").exists()
    finally:
        first.release()
    assert sweep_main([str(exp), "--runs-dir", str(runs), "--dry-run"]) == 0


@pytest.mark.slow
def test_debug_executor_runs_several_jobs_in_one_process_without_a_debugger(tmp_path):
    """Three runs one after another in the sweep's own process (one DeepSpeed process group
    after another), plus a fourth that fails: the sweep ends by itself with no stdin (no pdb),
    the failed run's status says why, and the three others complete."""
    variants = {
        **QUICK_TWIN,
        "broken": {"algorithm": {"name": "flash_grpo"}, "model": {"path": str(damaged_checkpoint(tmp_path / "cut"))}},
    }
    exp = write_experiment(tmp_path, "dbg", variants)
    runs = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "-m", "grpo_zoo.sweep", str(exp), "--runs-dir", str(runs), "--executor", "debug", "--no-report"],
        capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "GRPO_ZOO_PDB"},
    )  # fmt: skip
    assert "(Pdb)" not in out.stdout, out.stdout[-2000:]
    for name in QUICK_TWIN:
        assert RunDir(runs / "dbg" / f"{name}_seed0").is_complete(), out.stdout[-2000:] + out.stderr[-2000:]
    status = RunDir(runs / "dbg" / "broken_seed0").status()
    assert status["status"] == "failed" and status["reason"], status


# -- against a real SLURM ------------------------------------------------------------------


@pytest.mark.slow
def test_slurm_sweep_completes_skips_and_survives_a_failing_run(tmp_path, slurm):
    broken = damaged_checkpoint(tmp_path / "broken-model")  # passes every check, fails to load in the job
    variants = {**QUICK_TWIN, "broken": {"algorithm": {"name": "flash_grpo"}, "model": {"path": str(broken)}}}
    exp = write_experiment(tmp_path, "slurm_twin", variants)
    runs = tmp_path / "runs"
    out = slurm_sweep(exp, runs, slurm)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "broken_seed0: FAILED" in out.stdout and "broken_seed0" in out.stderr
    for name in QUICK_TWIN:
        assert RunDir(runs / "slurm_twin" / f"{name}_seed0").is_complete(), name
    assert RunDir(runs / "slurm_twin" / "broken_seed0").status()["status"] == "failed"
    record = json.loads((runs / "slurm_twin" / "sweep.json").read_text())
    assert all(r["executor"] == "slurm" and r["job_id"].split("_")[0].isdigit() for r in record.values())
    again = slurm_sweep(exp, runs, slurm)
    assert "3 already finished, submitting 1" in again.stdout
    # the local executor gives the same runs (same rows, compute time aside)
    local_runs = tmp_path / "local"
    exp_local = write_experiment(tmp_path, "slurm_twin", QUICK_TWIN)
    # the same thread count as the SLURM jobs: float sums split over other thread counts may
    # round otherwise (measured on AVX-512 kernels), and that is not what this compares
    out = run_module("grpo_zoo.sweep", str(exp_local), "--runs-dir", str(local_runs), "--threads", "1", "--no-report")
    assert out.returncode == 0, out.stderr[-2000:]
    drop = ("compute/device_seconds", "compute/device_hours")
    for name in QUICK_TWIN:
        a = [
            {k: v for k, v in r.items() if k not in drop} for r in RunDir(runs / "slurm_twin" / f"{name}_seed0").rows()
        ]
        b = [
            {k: v for k, v in r.items() if k not in drop}
            for r in RunDir(local_runs / "slurm_twin" / f"{name}_seed0").rows()
        ]
        assert a == b, name


@pytest.mark.slow
def test_scontrol_requeue_resumes_from_the_checkpoint(tmp_path, slurm):
    steps = 40
    exp = write_experiment(
        tmp_path, "requeue", {"flash": {"algorithm": {"name": "flash_grpo"}}}, {"budget": {"steps": steps}}
    )
    runs = tmp_path / "runs"
    out = slurm_sweep(exp, runs, slurm, "--no-wait")
    assert out.returncode == 0, out.stderr[-2000:]
    run = runs / "requeue" / "flash_seed0"
    job_id = json.loads((runs / "requeue" / "sweep.json").read_text())["flash_seed0"]["job_id"]
    deadline = time.time() + 600
    while time.time() < deadline:
        latest = run / "checkpoints" / "latest"
        if latest.exists() and int(latest.read_text().split("-")[1]) >= 3:
            break
        time.sleep(0.2)
    assert not RunDir(run).is_complete()  # the requeue lands mid-run
    env = {**clean_env(), **slurm}
    subprocess.run(["scontrol", "requeue", job_id], check=True, env=env)
    # SLURM holds a requeued job back for a while (its begin time moves ~2 minutes ahead);
    # let it start as soon as it is pending again, as an idle cluster would
    for _ in range(100):
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, env=env)
        if "PENDING" in state.stdout:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env)
            break
        time.sleep(0.2)
    while time.time() < deadline and not RunDir(run).is_complete():
        time.sleep(0.5)
    assert RunDir(run).is_complete(), (run / "status.json").read_text()
    rows = [r for r in RunDir(run).rows() if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # no step lost, none twice
    meta = json.loads((run / "meta.json").read_text())
    assert len(meta.get("resumes", [])) >= 1


def test_sweep_status_shows_runs(tmp_path):
    exp = write_experiment(tmp_path, "st", QUICK_TWIN)
    out = run_module("grpo_zoo.sweep", str(exp), "--runs-dir", str(tmp_path), "--status")
    assert out.returncode == 0 and out.stdout.count("new") == 3


@pytest.mark.parametrize(
    ("status", "finished", "budget_change"),
    [
        ("running", False, "partial"),
        ("failed", False, "failed"),
        ("diverged", True, "diverged"),
        ("completed", True, "partial"),
    ],
)
def test_one_same_run_rule_for_sweep_and_train(tmp_path, status, finished, budget_change):
    """runs.run_difference decides for the sweep, train and the trainer: run_dir, logging and the
    budget never make another run; a raised budget extends a finished run (the sweep resubmits a
    completed one), a lowered one is refused once the run is finished (its rows are past it)."""
    from grpo_zoo.config.experiment import RunSpec
    from grpo_zoo.launch.sweep import run_state
    from grpo_zoo.runs import COMPLETED, run_difference

    run = RunDir(tmp_path / "run")
    stored = build(RunConfig, {**TINY, "run_dir": str(run.path)})
    run.path.mkdir()
    (run.path / "config.yaml").write_text(yaml.safe_dump(to_dict(stored)))
    run.set_status(status)
    if status == "completed":
        (run.path / COMPLETED).write_text("{}")
    assert run.is_finished() == finished

    def spec(**changes) -> RunSpec:
        return RunSpec("run", "v", 0, to_dict(build(RunConfig, {**TINY, "run_dir": str(run.path), **changes})))

    moved = spec(logging={"project": "elsewhere"}, run_dir=str(tmp_path / "elsewhere"))
    assert run_difference(to_dict(stored), moved.config) is None
    assert run_state(spec(budget={"steps": 3})) == budget_change
    assert run_state(spec(seed=1)) == "stale"
    longer = to_dict(build(RunConfig, {**TINY, "run_dir": str(run.path), "budget": {"steps": 3}}))
    run.check_config(longer)  # a raised budget: resumed, or extended when finished
    shorter = to_dict(build(RunConfig, {**TINY, "run_dir": str(run.path), "budget": {"steps": 1}}))
    if finished:
        assert run_state(spec(budget={"steps": 1})) == "stale"
        with pytest.raises(ConfigError, match=r"ran to a larger budget \(budget.steps: 2 -> 1\)"):
            run.check_config(shorter)
    else:
        run.check_config(shorter)  # an unfinished run stops at the new budget


@pytest.mark.parametrize(
    ("status", "marker", "expected"),
    [
        ("completed", False, "done"),  # the job is gone and COMPLETED not seen yet: status.json decides
        ("completed", True, "done"),
        ("pruned", False, "done"),
        ("diverged", False, "diverged"),
        ("failed", False, "failed"),
        ("running", False, "ended"),  # gone while its status still says running: ended unfinished
    ],
)
def test_the_monitor_decides_from_the_runs_status_not_from_a_missing_job(tmp_path, status, marker, expected):
    from grpo_zoo.launch.sweep import ended

    exp = load_experiment(write_experiment(tmp_path, "mon", {"flash": {"algorithm": {"name": "flash_grpo"}}}), tmp_path)
    spec = exp.runs[0]
    run = RunDir(spec.config["run_dir"])
    run.start(spec.config, world_size=1, device="cpu", resume=False)
    run.log({"step": 0, "kind": "eval", "eval/reward": 0.4})
    run.set_status(status, step=2, reason="steps budget 2 reached" if status == "completed" else status)
    if marker:
        (run.path / "COMPLETED").write_text(json.dumps({"step": 2}))
    state, why = ended(spec, "123", None, grace=0.2)
    assert state == expected, (state, why)
    if expected == "ended":
        assert "job 123 ended (no longer listed by the scheduler) with the run running" in why
