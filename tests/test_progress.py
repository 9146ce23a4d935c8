"""Progress a person and a SLURM log can read: a start line once every check passed, then a line
per iteration (logging.progress_every: 0) with the reward, the budget spent and an ETA; the
sweep's --status shows the budget each run has spent."""

import re

from grpo_zoo.launch.sweep import spent_share

from .helpers import SMALL, merged, run_module


def test_a_run_says_what_it_is_then_how_far_it_got(tmp_path):
    run = tmp_path / "run"
    args = merged(*SMALL, "budget.steps=3", "logging.progress_every=0", f"run_dir={run}")
    out = run_module("grpo_zoo.train", "experiments/toy/flash_grpo.yaml", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"{run}: ")]
    assert "flash_grpo (seed 0) on toy:toy-base, 1 x cpu" in lines[0] and "budget 3 iterations" in lines[0], lines
    assert lines[0].endswith("starting")
    steps = [line for line in lines if re.search(r": step \d+: reward", line)]
    assert [int(re.search(r"step (\d+):", s).group(1)) for s in steps] == [1, 2, 3]
    assert "33% of the budget (step 1 of 3)" in steps[0] and "ETA" in steps[1]
    assert "\r" not in out.stderr  # no bar in a log


def test_the_share_spent_is_the_binding_budgets():
    row = {"step": 5, "compute/flops": 4e11, "compute/device_seconds": 36.0}
    assert spent_share({"steps": 10, "flops": 1e12}, row) == 0.5
    assert spent_share({"flops": 1e12, "device_hours": 0.001}, row) == 10.0  # 36 s of a 3.6 s budget
    assert spent_share({"steps": None, "flops": None}, row) is None
