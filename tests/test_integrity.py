"""A run directory as a transactional store: kills, signals, two writers, damaged files.

The slow tests drive the real trainer on the toy world (3 iterations, checkpoints at steps
2 and 3) and stop or kill it at named points (GRPO_ZOO_KILL_AT / GRPO_ZOO_STOP_AT, see
grpo_zoo/runs/store.py); every resumed run must end with the rows of an uninterrupted one.
"""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from grpo_zoo.errors import ConfigError
from grpo_zoo.runs import MetricsError, RunDir, RunLock

from .helpers import ROOT, SMALL, comparable, fake_run, finish, launch_train, merged, run_module, wait_stopped

ARGS = ["experiments/toy/base.yaml", *SMALL, "algorithm.name=flash_grpo", "budget.steps=3", "checkpoint_every=2"]


def launch(run, *extra, kill_at=None, stop_at=None):
    return launch_train([*ARGS, f"run_dir={run}", *extra], kill_at=kill_at, stop_at=stop_at)


def train(run, *extra, **points):
    return finish(launch(run, *extra, **points))


def signal_stopped(proc, sig):
    """Deliver `sig` to a stopped trainer, then let it run on to handle it."""
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    return finish(proc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("integrity") / "ref"
    rc, _, err = train(run)
    assert rc == 0, err[-3000:]
    return run


# -- the trainer ----------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_points_resume_to_the_rows_of_an_uninterrupted_run(tmp_path, reference):
    run = tmp_path / "run"
    ref_rows = RunDir(reference).rows()
    assert [(r["kind"], r["step"]) for r in ref_rows] == [
        ("eval", 0),
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("eval", 3),
    ]

    # before the first checkpoint: e0 t1 on disk, no checkpoint
    rc, _, err = train(run, kill_at="row@1")
    assert rc == -signal.SIGKILL, err[-3000:]
    assert len(RunDir(run).rows()) == 2 and not (run / "checkpoints").exists()

    # the rerun starts from an empty file (not e0 t1 e0 t1 ...) and is killed while its last
    # checkpoint is being published: step-3 renamed into place, `latest` still says step-2
    rc, _, err = train(run, kill_at="checkpoint_publish@3")
    assert rc == -signal.SIGKILL, err[-3000:]
    assert "no checkpoint to resume from; starting afresh, dropping 2 rows" in err
    assert (run / "checkpoints" / "latest").read_text() == "step-2" and (run / "checkpoints" / "step-3").is_dir()
    assert comparable(RunDir(run).rows()) == comparable(ref_rows)

    # after the last checkpoint, before COMPLETED: the finished final evaluation is not repeated
    rc, _, err = train(run, kill_at="before_complete")
    assert rc == -signal.SIGKILL, err[-3000:]
    assert "resuming from checkpoint step-3; 5 rows kept, 0 past it dropped" in err and "warning" not in err
    assert RunDir(run).status()["status"] == "running" and not RunDir(run).is_complete()
    assert comparable(RunDir(run).rows()) == comparable(ref_rows)

    # between COMPLETED and the end of the process
    rc, _, err = train(run, kill_at="after_complete")
    assert rc == -signal.SIGKILL, err[-3000:]
    assert RunDir(run).is_complete() and RunDir(run).status()["status"] == "completed"

    rc, out, err = train(run)
    assert rc == 0 and "already completed" in out, err[-3000:]
    assert comparable(RunDir(run).rows()) == comparable(ref_rows)
    done, ref_done = (json.loads((d / "COMPLETED").read_text()) for d in (run, reference))
    assert done["compute/nfe"] == ref_done["compute/nfe"] and done["eval/reward"] == ref_done["eval/reward"]
    assert len(json.loads((run / "meta.json").read_text())["resumes"]) == 2


def resumable_copy(reference, dest):
    """The reference run as a kill before COMPLETED would have left it (checkpoints 2 and 3)."""
    shutil.copytree(reference, dest)
    (dest / "COMPLETED").unlink()
    RunDir(dest).set_status("running")
    return dest


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, reference):
    run = resumable_copy(reference, tmp_path / "run")
    model = run / "checkpoints" / "step-3" / "engine" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])  # torn by a full disk, say
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "kind": "tra')  # a row a kill cut mid-write
    rc, _, err = train(run)
    assert rc == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint step-3 cannot be read" in warnings[0], err[-3000:]
    assert "resuming from step-2" in warnings[0] and "Traceback" not in err
    assert "3 rows kept, 3 past it dropped, the last one cut off mid-write" in err
    assert comparable(RunDir(run).rows()) == comparable(RunDir(reference).rows())
    meta = json.loads((run / "meta.json").read_text())
    assert "resuming from step-2" in meta["checkpoint_fallbacks"][0]["note"]
    assert json.loads((run / "COMPLETED").read_text())["step"] == 3


@pytest.mark.slow
def test_metrics_cut_in_the_middle_is_refused_with_its_line(tmp_path, reference):
    run = resumable_copy(reference, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_bytes().split(b"\n")
    (run / "metrics.jsonl").write_bytes(lines[0] + b"\n" + lines[1][:20])
    before = (run / "metrics.jsonl").read_bytes()
    rc, _, err = train(run)
    assert rc == 2, err[-3000:]
    assert len(err.strip().splitlines()) == 1 and "metrics.jsonl:2: the file ends after 1 rows" in err
    assert (run / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_completed_run_with_another_config_is_refused(tmp_path, reference):
    """Another config is another run (refused); a smaller budget than the run ran to is refused;
    the same config finds it completed."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    rc, _, err = train(run, "seed=7")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert "completed run with another config (seed: 0 -> 7)" in err
    rc, _, err = train(run, "budget.steps=2")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert "ran to a larger budget (budget.steps: 3 -> 2)" in err
    rc, out, _ = train(run)
    assert rc == 0 and "already completed" in out


@pytest.mark.slow
def test_one_writer_signals_leave_a_true_status_and_a_stale_lock_is_taken_over(tmp_path, reference):
    run = tmp_path / "run"
    first = launch(run, stop_at="row@1")
    wait_stopped(first)
    assert json.loads((run / "lock").read_text())["pid"] == first.pid

    rc, _, err = train(run)  # a second trainer on the same directory
    assert rc == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert f"pid {first.pid}" in err and "one writer per run directory" in err

    rc, _, err = signal_stopped(first, signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    status = RunDir(run).status()
    assert status["status"] == "terminated" and status["step"] == 1
    assert (run / "lock").read_text() == ""  # released, not stale

    # SIGINT while a checkpoint is being published: the publication completes first
    second = launch(run, stop_at="checkpoint_publish@2")
    wait_stopped(second)
    rc, _, err = signal_stopped(second, signal.SIGINT)
    assert rc == 128 + signal.SIGINT, err[-3000:]
    assert RunDir(run).status()["status"] == "interrupted"
    assert (run / "checkpoints" / "latest").read_text() == "step-2"

    # a SIGKILLed writer leaves its lock file behind; the next one takes it over
    third = launch(run, kill_at="row@3")
    rc, _, err = finish(third)
    assert rc == -signal.SIGKILL, err[-3000:]
    rc, _, err = train(run)
    assert rc == 0, err[-3000:]
    assert f"took over the lock of host {os.uname().nodename}, pid {third.pid}" in err
    assert comparable(RunDir(run).rows()) == comparable(RunDir(reference).rows())


NAN_AT_EVAL = """
import math, sys, torch
from grpo_zoo import rewards
from grpo_zoo.toy import world

test_prompts = {p.text for p in world.prompts("test")}
calls = []

@rewards.register("nan_at_eval")
def factory():
    toy = rewards.get("toy_hps")
    def reward(videos, prompts):
        out = toy(videos, prompts)
        if set(prompts) <= test_prompts:  # an evaluation: finite the first time, NaN after
            calls.append(1)
            if len(calls) > 1:
                out["nan_at_eval"] = torch.full((len(prompts),), math.nan)
                return out
        out["nan_at_eval"] = out.pop("toy_hps")
        return out
    return reward

from grpo_zoo.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_reward_nan_only_at_evaluation_is_diverged(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            NAN_AT_EVAL,
            *merged(*ARGS, "budget.steps=1", "reward.name=nan_at_eval", f"run_dir={run}"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "run diverged: non-finite eval reward at step 1" in out.stderr
    status = RunDir(run).status()
    assert status["status"] == "diverged" and "eval reward" in status["reason"]
    assert not RunDir(run).is_complete()


# -- the pieces, without training -----------------------------------------------------------
def write_rows(run, rows, tail=""):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


ROWS = [{"step": 0, "kind": "eval", "eval/reward": 0.5}, {"step": 1, "kind": "train"}, {"step": 2, "kind": "train"}]


def test_resume_keeps_exactly_the_rows_before_the_checkpoint(tmp_path, capsys):
    run = RunDir(tmp_path / "a")
    write_rows(run.path, ROWS, tail='{"step": 3, "ki')
    run.resume_metrics(2, 1, "step-1")
    assert run.rows() == ROWS[:2] and run.rows_written == 2
    assert "2 rows kept, 2 past it dropped, the last one cut off mid-write" in capsys.readouterr().err

    write_rows(run.path, ROWS)
    run.resume_metrics(None, 1, "step-1")  # a checkpoint from before rows were counted: by step
    assert run.rows() == ROWS[:2]

    write_rows(run.path, ROWS)
    run.resume_metrics(None, 0, None)  # no checkpoint: nothing stale is kept
    assert (run.path / "metrics.jsonl").read_text() == "" and run.rows_written == 0

    write_rows(run.path, ROWS[:1])
    with pytest.raises(MetricsError, match=r"metrics.jsonl:2: the file ends after 1 rows"):
        run.resume_metrics(3, 2, "step-2")
    (run.path / "metrics.jsonl").write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n" + json.dumps(ROWS[2]) + "\n")
    with pytest.raises(MetricsError, match=r"metrics.jsonl:2: a list, not a row object"):
        run.resume_metrics(3, 2, "step-2")


@pytest.mark.parametrize(
    "content, needle",
    [
        (
            '{"step": 0, "kind": "eval", "eval/reward": 0.5}\n{"step": 1, "ki\n{"step": 2, "kind": "train"}\n',
            ":2: not JSON",
        ),
        ('{"step": 0, "kind": "eval", "eval/reward": 0.5}\n"text"\n', ":2: a str, not a row object"),
        ('{"step": 0, "kind": "eval", "eval/reward": 0.5}\n\n', ":2: an empty line"),
        ('{"step": 0, "kind": "eval", "eval/reward": 0.5}\n{"kind": "train"}\n', ":2: a row without an integer `step`"),
        (
            '{"step": 1, "kind": "train"}\n{"step": 0, "kind": "eval", "eval/reward": 0.5}\n{"step": 1, "kind": "train"}\n',
            ":2: step 0",
        ),
        ('{"step": 1, "kind": "train"}\n{"step": 1, "kind": "train"}\n', ":2: a second train row for step 1"),
    ],
)
def test_metrics_that_do_not_parse_name_their_line(tmp_path, content, needle):
    (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(MetricsError, match=needle.replace("`", ".").replace("(", r"\(")):
        RunDir(tmp_path).rows()


def test_report_refuses_malformed_metrics_with_file_and_line(tmp_path):
    good = fake_run(tmp_path / "ok", "flash_grpo_seed0", "flash_grpo", [0.3, 0.4, 0.5], 0.01)
    cases = {
        "torn": lambda p: p.write_text(p.read_text()[:-5]),
        "non-object": lambda p: p.write_text(p.read_text() + "[1]\n"),
        "empty": lambda p: p.write_text(""),
        "cut-between-rows": lambda p: p.write_text("".join(p.read_text().splitlines(True)[:3])),
    }
    for name, damage in cases.items():
        root = tmp_path / name
        run = fake_run(root, "flash_grpo_seed0", "flash_grpo", [0.3, 0.4, 0.5], 0.01)
        (run / "COMPLETED").write_text(json.dumps({"step": 20}))
        damage(run / "metrics.jsonl")
        before = (run / "metrics.jsonl").read_bytes()
        out = run_module("grpo_zoo.report", str(root), "--out", str(tmp_path / "out" / name))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (name, out.stderr[-2000:])
        assert f"{run / 'metrics.jsonl'}:" in lines[0] and "Traceback" not in out.stderr, (name, lines)
        assert (run / "metrics.jsonl").read_bytes() == before
    # a run still being written may end in a torn row: left out and flagged, not refused
    (good / "COMPLETED").unlink()
    (good / "metrics.jsonl").write_text((good / "metrics.jsonl").read_text() + '{"step": 30, "ki')
    from grpo_zoo.analysis import load_runs

    data = load_runs(tmp_path / "ok")
    assert "left out the last row" in data.runs["metrics_note"].iloc[0]


def test_lock_refuses_a_second_writer_and_takes_over_a_dead_ones(tmp_path, capsys):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}.*one writer per run directory"):
        RunLock(tmp_path).acquire()
    first.release()
    assert (tmp_path / "lock").read_text() == ""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "lock").write_text(json.dumps({"job_id": "77", "host": os.uname().nodename, "pid": int(dead.stdout)}))
    lock = RunLock(tmp_path).acquire()
    assert (
        f"took over the lock of job 77, host {os.uname().nodename}, pid {int(dead.stdout)}" in capsys.readouterr().err
    )
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    lock.release()
    RunLock(tmp_path).acquire()  # dropped unreleased (a trainer that failed to build): freed when collected
    gc.collect()
    RunLock(tmp_path).acquire().release()


def test_exit_signals_leave_a_handler_someone_else_installed():
    """Under submitit TERM is its logged no-op and USR2 its requeue: the trainer keeps out."""
    from grpo_zoo.runs import Terminated, exit_signals

    def theirs(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, theirs)
    try:
        with exit_signals():
            assert signal.getsignal(signal.SIGTERM) is theirs
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(Terminated) as info, exit_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert info.value.status == "terminated" and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, old)
