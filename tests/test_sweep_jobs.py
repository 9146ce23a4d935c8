"""Sweeps know their jobs on a real SLURM without accounting (the shipped test cluster):
a cancelled job ends a waiting sweep, and a rerun never submits a second writer onto a run
whose job is queued, running or held for a requeue."""

import json
import subprocess
import sys
import time

import pytest

from grpo_zoo.launch.jobs import is_active, job_state
from grpo_zoo.runs import RunDir

from .helpers import ROOT, clean_env, run_module, slurm_sweep, write_experiment

DROP = ("compute/device_seconds", "compute/device_hours")


def rows_without_time(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in DROP} for r in RunDir(run).rows()]


def wait_for(predicate, what: str, limit: float = 600):
    deadline = time.time() + limit  # a bound so a broken sweep fails the test instead of hanging it
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"never happened: {what}")


def recorded_job(runs, exp_name: str, run: str) -> str | None:
    path = runs / exp_name / "sweep.json"
    try:
        return json.loads(path.read_text())[run]["job_id"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def steps_done(run) -> int:
    latest = run / "checkpoints" / "latest"
    try:
        return int(latest.read_text().split("-")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def uninterrupted(tmp_path, name, variants, config) -> list[dict]:
    exp = write_experiment(tmp_path / "reference", name, variants, config)
    out = run_module("grpo_zoo.sweep", str(exp), "--runs-dir", str(tmp_path / "ref"), "--no-report", "--threads", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    return rows_without_time(tmp_path / "ref" / name / f"{next(iter(variants))}_seed0")


@pytest.mark.slow
def test_a_cancelled_job_ends_a_waiting_sweep_and_a_rerun_resumes_it(tmp_path, slurm):
    variants = {"flash": {"algorithm": {"name": "flash_grpo"}}}
    config = {"budget": {"steps": 12}}
    (tmp_path / "reference").mkdir()
    exp = write_experiment(tmp_path, "cancel", variants, config)
    runs = tmp_path / "runs"
    run = runs / "cancel" / "flash_seed0"
    # the job pauses itself (SIGSTOP) at its step-4 row, so a fast machine cannot finish the run
    # before the test cancels it; the rerun below runs without this
    env = {**clean_env(), **slurm, "GRPO_ZOO_STOP_AT": "row@4"}
    cmd = [sys.executable, "-m", "grpo_zoo.sweep", str(exp), "--runs-dir", str(runs), "--executor", "slurm"]
    cmd += ["--cluster", "slurm/clusters/local-test.yaml", "--threads", "1", "--no-report"]
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: steps_done(run) >= 2, "the job reached its second checkpoint")
        job_id = recorded_job(runs, "cancel", "flash_seed0")
        subprocess.run(["scancel", job_id], check=True, env=env)
        out, err = sweep.communicate(timeout=300)  # it returns: SLURM no longer runs the job
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, out[-3000:] + err[-3000:]
    assert f"flash_seed0: ENDED (job {job_id} ended (cancelled" in out, out[-3000:]
    assert "flash_seed0" in err and "rerun the same command" in err
    assert not RunDir(run).is_complete()
    status = run_module("grpo_zoo.sweep", str(exp), "--runs-dir", str(runs), "--status", env=slurm)
    assert f"CANCELLED {job_id}" in status.stdout or f"ended {job_id}" in status.stdout, status.stdout

    again = slurm_sweep(exp, runs, slurm)  # the job ended: the rerun resubmits and resumes it
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "submitting 1" in again.stdout and RunDir(run).is_complete()
    assert recorded_job(runs, "cancel", "flash_seed0") != job_id
    assert json.loads((run / "meta.json").read_text()).get("resumes"), "it resumed from its checkpoint"
    assert rows_without_time(run) == uninterrupted(tmp_path, "cancel", variants, config)


@pytest.mark.slow
def test_a_rerun_never_submits_a_second_job_onto_a_run(tmp_path, slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])  # job_state() below asks SLURM from this process
    variants = {"flash": {"algorithm": {"name": "flash_grpo"}}}
    config = {"budget": {"steps": 5000}}  # it runs for as long as the test looks at it; cancelled at the end
    exp = write_experiment(tmp_path, "rerun", variants, config)
    runs = tmp_path / "runs"
    run = runs / "rerun" / "flash_seed0"
    first = slurm_sweep(exp, runs, slurm, "--no-wait")
    assert first.returncode == 0, first.stderr[-2000:]
    job_id = recorded_job(runs, "rerun", "flash_seed0")
    try:
        look_while_it_runs(exp, runs, run, job_id, slurm)
    finally:  # never leave a long job on the shared cluster
        subprocess.run(
            ["scancel", job_id, str(recorded_job(runs, "rerun", "flash_seed0"))], env={**clean_env(), **slurm}
        )


def look_while_it_runs(exp, runs, run, job_id: str, slurm: dict) -> None:
    env = {**clean_env(), **slurm}
    wait_for(lambda: steps_done(run) >= 1, "the job started training")

    # while it runs: a rerun submits nothing, and --status shows SLURM's state beside the run's
    again = slurm_sweep(exp, runs, slurm, "--no-wait")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "submitting 0" in again.stdout and f"its job {job_id} is RUNNING" in again.stdout, again.stdout
    assert recorded_job(runs, "rerun", "flash_seed0") == job_id
    status = run_module("grpo_zoo.sweep", str(exp), "--runs-dir", str(runs), "--status", env=slurm)
    assert f"RUNNING {job_id}" in status.stdout, status.stdout

    # preempted and held for a requeue (whatever status.json says): still not resubmitted
    subprocess.run(["scontrol", "requeuehold", job_id], check=True, env=env)
    wait_for(lambda: job_state("slurm", job_id) not in ("RUNNING", "COMPLETING"), "the job left the node")
    assert is_active(job_state("slurm", job_id))
    held = slurm_sweep(exp, runs, slurm, "--no-wait")
    assert "submitting 0" in held.stdout and recorded_job(runs, "rerun", "flash_seed0") == job_id, held.stdout

    # a waiting rerun waits on that same job (released, resumed), and returns once SLURM ends it
    subprocess.run(["scontrol", "release", job_id], check=True, env=env)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env)
    cmd = [sys.executable, "-m", "grpo_zoo.sweep", str(exp), "--runs-dir", str(runs), "--executor", "slurm"]
    cmd += ["--cluster", "slurm/clusters/local-test.yaml", "--threads", "1", "--no-report"]
    unbuffered = {**env, "PYTHONUNBUFFERED": "1"}
    waiting = subprocess.Popen(cmd, cwd=ROOT, env=unbuffered, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        resumed_from = steps_done(run)
        wait_for(lambda: job_state("slurm", job_id) == "RUNNING", "the released job runs again")
        seen = waiting.stdout.readline()  # it has asked SLURM and decided
        assert f"its job {job_id} is RUNNING" in seen, seen
        seen += waiting.stdout.readline()
        assert "submitting 0" in seen, seen
        wait_for(lambda: steps_done(run) >= resumed_from + 2, "the resumed job trains on")
        assert waiting.poll() is None  # still waiting on the job it did not submit
        subprocess.run(["scancel", job_id], check=True, env=env)
        out, err = waiting.communicate(timeout=300)
        out = seen + out
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1, out[-3000:] + err[-3000:]
    assert "submitting 0" in out and f"flash_seed0: ENDED (job {job_id} ended" in out, out[-3000:]
    assert recorded_job(runs, "rerun", "flash_seed0") == job_id  # one job, all along
    steps = [r["step"] for r in RunDir(run).rows() if r["kind"] == "train"]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no step twice, none lost
