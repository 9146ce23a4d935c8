"""`python -m grpo_zoo.schedule` and the config system's error lines."""

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from grpo_zoo.config.schema import apply_overrides, build, describe, field_docs
from grpo_zoo.errors import ConfigError
from grpo_zoo.flow import make_sigmas, step_table


def run(*args):
    return subprocess.run([sys.executable, "-m", "grpo_zoo.schedule", *args], capture_output=True, text=True)


def test_schedule_json_rows_match_the_library():
    out = run("--schedule", "wan", "--steps", "20", "--shift", "3", "--noise", "cps", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    table = step_table(make_sigmas("wan", 20, 3.0), "cps")
    assert len(rows) == 20
    assert {"step", "sigma", "dt", "std", "lambda", "inv_lambda"} <= set(rows[0])
    for row, lam, sig in zip(rows, table.lam, table.sigma):
        assert row["lambda"] == pytest.approx(float(lam)) and row["sigma"] == pytest.approx(float(sig))
        if row["lambda"] > 0:
            assert row["inv_lambda"] == pytest.approx(1 / row["lambda"])


def test_schedule_table_has_a_row_per_step():
    out = run("--schedule", "flow_match", "--steps", "7", "--noise", "wan_linear")
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["step", "sigma"] and len(lines) == 1 + 7 + 1
    assert "lambda max/min" in lines[-1]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--noise", "ddim"], "--noise"),
        (["--schedule", "cos"], "--schedule"),
        (["--steps", "0"], "--steps"),
        (["--steps", "x"], "--steps"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    out = run(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr


@dataclass
class Inner:
    lr: float = 1e-3
    """Learning rate."""
    steps: int = 10
    """How many steps."""

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")


@dataclass
class Outer:
    name: str = "x"
    """A name."""
    inner: Inner = None  # type: ignore[assignment]
    """Nested section."""

    def __post_init__(self):
        if self.inner is None:
            self.inner = Inner()


def test_config_docs_build_and_overrides():
    assert field_docs(Inner) == {"lr": "Learning rate.", "steps": "How many steps."}
    cfg = build(Outer, apply_overrides({"inner": {"lr": 0.1}}, ["inner.steps=3", "name=run1"]))
    assert cfg.inner.steps == 3 and cfg.inner.lr == 0.1 and cfg.name == "run1"
    assert any("inner.lr" in line and "Learning rate." in line for line in describe(Outer))
    with pytest.raises(ConfigError, match=r"inner\.lr: must be positive"):
        build(Outer, {"inner": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"inner\.stpes: unknown field \(did you mean 'steps'\?\)"):
        build(Outer, {"inner": {"stpes": 1}})
    with pytest.raises(ConfigError, match=r"inner\.steps: expected an integer"):
        build(Outer, {"inner": {"steps": "many"}})
