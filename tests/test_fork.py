"""`python -m grpo_zoo.fork RUN NEW`: a new run directory from any checkpoint of a run, which the
trainer continues exactly as the run went on from there, or with changed settings as a branch."""

import json

import pytest

from grpo_zoo.fork import main as fork_main
from grpo_zoo.runs import RunDir

from .helpers import SMALL, comparable, merged, run_module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "run"
    args = merged(*SMALL, "budget.steps=4", "checkpoint_every=2", "logging.progress_every=1000", f"run_dir={path}")
    out = run_module("grpo_zoo.train", "experiments/toy/flash_grpo.yaml", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return path


def test_a_fork_without_changes_goes_on_as_the_run_did(run, tmp_path):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert fork_main([str(run), str(tmp_path / "same"), "--checkpoint", "step-2"]) == 0
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run is only read
    record = json.loads((tmp_path / "same" / "fork.json").read_text())
    assert (record["checkpoint"], record["step"]) == ("step-2", 2)
    out = run_module("grpo_zoo.train", str(tmp_path / "same" / "config.yaml"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert comparable(RunDir(tmp_path / "same").rows()) == comparable(RunDir(run).rows())


def test_a_fork_with_changes_branches_at_its_checkpoint(run, tmp_path):
    assert fork_main([str(run), str(tmp_path / "lr"), "--checkpoint", "step-2", "optim.lr=0.01", "budget.steps=3"]) == 0
    out = run_module("grpo_zoo.train", str(tmp_path / "lr" / "config.yaml"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows, original = comparable(RunDir(tmp_path / "lr").rows()), comparable(RunDir(run).rows())
    shared = [r for r in original if r["step"] <= 2]
    assert rows[: len(shared)] == shared and rows[len(shared) :] != original[len(shared) : len(rows)]
    assert max(r["step"] for r in rows) == 3 and RunDir(tmp_path / "lr").config()["optim"]["lr"] == 0.01


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["{new}", "--checkpoint", "step-3"], "--checkpoint: no checkpoint 'step-3'"),
        (["{new}", "model.lora_rank=4"], "model.lora_rank: the model cannot change"),
        (["{new}", "optim.lr=-1"], "optim.lr"),
        (["{new}", "run_dir=/tmp/x"], "run_dir:"),
        (["{run}"], "new_dir:"),
        (["/proc/grpo-zoo-fork"], "is not writable"),  # unwritable, even for root
        ([""], "new_dir: an empty path"),
    ],
)
def test_bad_fork_input_is_one_line_and_exit_2(run, tmp_path, capsys, argv, needle):
    argv = [a.replace("{new}", str(tmp_path / "new")).replace("{run}", str(run)) for a in argv]
    with pytest.raises(SystemExit) as exited:
        fork_main([str(run), *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "new").exists()
