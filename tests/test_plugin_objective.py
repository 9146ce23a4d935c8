"""An objective written outside the repository (README, "An objective of your own"): online
Flow-DPO, a pairwise loss over each group's best and worst rollout against the frozen base.
Installed as a plugin, it trains with no trick, its compute is metered exactly (two passes with
a backward and two reference forwards per pair, as `estimate` prices it), it resumes row for
row, and the toolkit's own registry-enumerating code does not see it."""

import json
import subprocess
import sys

import pytest

from grpo_zoo.runs import RunDir

from .helpers import ROOT, TINY_RUN, install_plugin, merged, overrides, readme_block

SMALL = overrides(
    TINY_RUN,
    {"sampling.eval_steps": 2, "model.lora_rank": 4, "optim.lr": 1e-3, "engine.threads": 1},
    {"algorithm.name": "flow_dpo", "algorithm.dpo_beta": 200},
)
WALL_CLOCK = ("compute/device_seconds", "compute/device_hours")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return install_plugin(tmp_path_factory.mktemp("dpo"), "flow_dpo", readme_block("### An objective of your own"))


def train(env, run, steps: int, *extra: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "grpo_zoo.train", str(ROOT / "experiments/toy/base.yaml"),
         *merged(*SMALL, *extra, f"budget.steps={steps}", f"run_dir={run}")],
        env=env, capture_output=True, text=True, cwd=run.parent, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in RunDir(run).rows()]


def test_pairwise_objective_trains_meters_and_resumes_exactly(plugin, tmp_path):
    straight = train(plugin, tmp_path / "straight", 3)
    rows = [r for r in straight if r["kind"] == "train"]
    pairs = 2  # one pair per prompt group
    assert [r["stats/transitions"] for r in rows] == [pairs] * 3
    assert [r["compute/backward"] for r in rows] == [2 * pairs * (i + 1) for i in range(3)]  # winner and loser
    assert all("stats/dpo_margin" in r and "stats/dpo_win" in r for r in rows)  # its own stats, logged
    assert rows[-1]["stats/grad_norm"] > 0
    # the meter agrees with estimate's pricing of the same config (rollout, 2 passes + 2 reference forwards)
    probe = (
        "import json, sys\n"
        "from grpo_zoo.config.schema import build, load_config_file, apply_overrides\n"
        "from grpo_zoo.cost.counts import iteration_counts\n"
        "from grpo_zoo.config.run import RunConfig\n"
        f"data = apply_overrides(load_config_file({str(ROOT / 'experiments/toy/base.yaml')!r}), {SMALL!r})\n"
        "cfg = build(RunConfig, data)\n"
        "print(json.dumps([iteration_counts(cfg, s) for s in range(3)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=plugin, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout)
    nfe = [r["compute/nfe"] for r in straight if r["kind"] == "train"]
    evals = straight[0]["compute/nfe"]  # the evaluation before the first step
    spent = [b - a for a, b in zip([evals, *nfe], nfe)]
    assert spent == [c["rollout_nfe"] + c["update_nfe"] for c in counts]
    assert [c["backward"] for c in counts] == [2 * pairs] * 3
    # a stop at the checkpoint and a resume give the same rows
    train(plugin, tmp_path / "split", 2)
    assert train(plugin, tmp_path / "split", 3) == straight


def test_plugins_stay_out_of_the_toolkits_own_enumerations(plugin, tmp_path):
    probe = (
        "from grpo_zoo.core import algorithm, objective\n"
        "assert 'flow_dpo' in algorithm.names() and 'flow_dpo' not in algorithm.names(plugins=False)\n"
        "assert 'flow_dpo' in objective.names()\n"
        "from grpo_zoo.docs import algorithm_table\n"
        "assert 'flow_dpo' not in algorithm_table()\n"
        "class Other(objective.Objective):\n"
        "    pass\n"
        "try:\n"
        "    objective.register('flow_dpo')(Other)\n"
        "except ValueError as err:\n"
        "    assert 'registered twice' in str(err)\n"
        "else:\n"
        "    raise SystemExit('a second objective under a taken name was accepted')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=plugin, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
