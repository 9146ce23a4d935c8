"""Reproducible compute: a FLOPs budget gives the same rows whatever the machine's load."""

import json
import subprocess
import sys

import pytest

from .helpers import ROOT, TINY_RUN, overrides, run_module

WALL_CLOCK = ("compute/device_seconds", "compute/device_hours")
TINY = overrides(TINY_RUN, {"data.eval_every": 2, "budget.steps": None, "budget.flops": 1.3e10, "engine.threads": 1})
"""3 iterations of this config (4.6e9 FLOPs each)."""
HOG = "import torch\ntorch.set_num_threads(2)\na = torch.randn(600, 600)\nwhile True:\n    a = (a @ a).tanh()\n"


def rows(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in WALL_CLOCK})
    return out


@pytest.mark.slow
def test_flops_budget_gives_identical_rows_under_load(tmp_path):
    quiet = run_module("grpo_zoo.train", "experiments/toy/flash_grpo.yaml", f"run_dir={tmp_path / 'a'}", *TINY)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    hog = subprocess.Popen([sys.executable, "-c", HOG], cwd=ROOT)
    try:
        busy = run_module("grpo_zoo.train", "experiments/toy/flash_grpo.yaml", f"run_dir={tmp_path / 'b'}", *TINY)
    finally:
        hog.kill()
        hog.wait()
    assert busy.returncode == 0, busy.stderr[-2000:]
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["step"] for r in a if r["kind"] == "train"] == [1, 2, 3]  # the budget, not the clock, ends the run
    assert a == b  # every key but the wall-clock ones, bit for bit
    secs = [
        json.loads(line)["compute/device_seconds"] for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()
    ]
    assert max(secs) > 0  # device time is still measured and reported beside FLOPs


@pytest.mark.parametrize(
    "path, min_seeds",
    [("experiments/quickstart.yaml", 2)]
    + [(str(p.relative_to(ROOT)), 3) for p in sorted((ROOT / "experiments/paper").glob("*.yaml"))],
)
def test_toy_experiments_budget_in_flops_with_pinned_threads(path, min_seeds, tmp_path):
    from grpo_zoo.config.experiment import load_experiment

    exp = load_experiment(str(ROOT / path), str(tmp_path))
    assert len({s.seed for s in exp.runs}) >= min_seeds
    for spec in exp.runs:
        budget = spec.config["budget"]
        assert budget["flops"] and budget["device_hours"] is None and budget["steps"] is None
        assert spec.config["engine"]["threads"] == 1
