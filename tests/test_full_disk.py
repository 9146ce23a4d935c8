"""A full disk, on a real small tmpfs (mounted here: the tests run as root; they skip where
mounting is not allowed, saying so). At each kind of write (a metrics row, a status file, a
checkpoint, its `latest` pointer, the completion marker, the sweep's and the tuner's records,
the report's outputs) a write that finds no space fails with one line naming the path and the
free space, and nothing already written is cut or lost; with space back, the same command
resumes the run to exactly the rows of an uninterrupted one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from grpo_zoo.runs import RunDir
from grpo_zoo.runs.files import NoSpace, append_line, atomic_write

from .helpers import SMALL, comparable, fake_run, finish, launch_train, wait_stopped

ARGS = ["experiments/toy/base.yaml", *SMALL, "algorithm.name=flash_grpo", "budget.steps=3", "checkpoint_every=1"]


@pytest.fixture
def small_fs(tmp_path):
    """A fresh 64 MiB tmpfs (a small run's checkpoints fit), unmounted afterwards."""
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Take every free block of `fs` (returns the ballast file, to delete for space again)."""
    ballast = fs / "ballast"
    with open(ballast, "ab", buffering=0) as f:  # unbuffered: every failed write fails here
        for size in (65536, 512):  # then the last partial block
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return ballast


def test_a_row_that_finds_no_space_is_cut_back_off(small_fs):
    path = small_fs / "metrics.jsonl"
    append_line(path, json.dumps({"step": 0, "kind": "eval", "eval/reward": 0.5}))
    before = path.read_bytes()
    fill(small_fs)
    row = json.dumps({"step": 1, "kind": "train", "pad": "x" * 8192})  # more than a page: it needs a new block
    with pytest.raises(NoSpace, match=r"metrics.jsonl: no space left .*free"):
        append_line(path, row)
    assert path.read_bytes() == before  # no torn row


def test_a_state_file_that_finds_no_space_keeps_its_old_content(small_fs):
    path = small_fs / "status.json"
    atomic_write(path, json.dumps({"status": "running", "step": 1}))
    before = path.read_bytes()
    fill(small_fs)
    with pytest.raises(NoSpace, match=r"status.json: no space left"):
        atomic_write(path, json.dumps({"status": "completed", "pad": "x" * 8192}))
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_fs.iterdir()) == ["ballast", "status.json"]  # no temporary left behind


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "row@1",  # the next write is the step-1 checkpoint (DeepSpeed's states, then torch.save)
        "checkpoint_publish@2",  # the next write is `latest`
        "before_complete",  # the next writes are status.json and COMPLETED
    ],
)
def test_a_run_on_a_full_disk_stops_in_one_line_and_resumes_exactly(point, small_fs, tmp_path):
    ref = tmp_path / "ref"
    rc, _, err = finish(launch_train([*ARGS, f"run_dir={ref}"]))
    assert rc == 0, err[-3000:]
    run = small_fs / "run"
    proc = launch_train([*ARGS, f"run_dir={run}"], stop_at=point)
    wait_stopped(proc)
    rows_before = (run / "metrics.jsonl").read_bytes()
    ballast = fill(small_fs)
    os.kill(proc.pid, signal.SIGCONT)
    rc, _, err = finish(proc)
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error: " in line]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and "no space left" in lines[0] and "free" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert (run / "metrics.jsonl").read_bytes().startswith(rows_before)  # nothing written was cut
    RunDir(run).rows()  # and it parses
    ballast.unlink()
    rc, _, err = finish(launch_train([*ARGS, f"run_dir={run}"]))
    assert rc == 0, err[-3000:]
    assert comparable(RunDir(run).rows()) == comparable(RunDir(ref).rows())
    assert RunDir(run).is_complete()


def test_the_report_on_a_full_disk_is_one_line_and_keeps_the_last_report(small_fs, tmp_path, capsys):
    from grpo_zoo.report import main as report

    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, f"flash_seed{seed}", "flash_grpo", [0.40, 0.42, 0.45], 0.01, seed=seed)
        fake_run(runs, f"flow_seed{seed}", "flow_grpo", [0.40, 0.41, 0.42], 0.02, seed=seed)
    out = small_fs / "report"
    assert report([str(runs), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(small_fs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        report([str(runs), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "no space left" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # each file whole: old or new


def test_the_sweep_record_on_a_full_disk_keeps_its_last_version(small_fs):
    from grpo_zoo.launch.sweep import read_record

    root = small_fs / "exp"
    atomic_write(root / "sweep.json", json.dumps({"a_seed0": {"job_id": "1", "executor": "local"}}))
    fill(small_fs)
    record = {**read_record(root), "b_seed0": {"job_id": "2", "executor": "local", "pad": "x" * 8192}}
    with pytest.raises(NoSpace):
        atomic_write(root / "sweep.json", json.dumps(record))
    assert read_record(root) == {"a_seed0": {"job_id": "1", "executor": "local"}}


def test_the_tuner_storage_on_a_full_disk_keeps_every_trial_written(small_fs):
    """Optuna's journal storage appends each trial's records; on a full disk the study fails in
    the tuner's one line (the CLI wrapper names it) and the trials written before still load."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from grpo_zoo.errors import full_disk

    journal = small_fs / "study.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    fill(small_fs)
    with pytest.raises(Exception) as failed:  # noqa: PT011 - optuna's own error types vary by backend
        for _ in range(200):  # until the page the journal ends in is full
            study.optimize(lambda t: t.suggest_float("x" * 500, 0, 1), n_trials=1)
    assert full_disk(failed.value) is not None or getattr(failed.value, "errno", None) == errno.ENOSPC
    again = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len([t for t in again.trials if t.state.is_finished()]) >= 3
