"""The leaderboard's claim verdicts (grpo_zoo/reports/leaderboard.py) on hand-made runs with known answers."""

import json

import pytest
import yaml

from grpo_zoo.analysis import load_runs
from grpo_zoo.analysis.tables import leaderboard
from grpo_zoo.reports import leaderboard as zoo

from .helpers import fake_run


@pytest.fixture
def claims(tmp_path, monkeypatch):
    def write(entries: dict):
        path = tmp_path / "claims.yaml"
        path.write_text(yaml.safe_dump(entries))
        monkeypatch.setattr(zoo, "CLAIMS", path)

    return write


def runs(root, curves: dict[str, tuple[list[list[float]], float]]):
    """curves: variant -> (eval rewards per seed, device-hours per step)."""
    for variant, (per_seed, hours) in curves.items():
        for seed, curve in enumerate(per_seed):
            fake_run(root, f"{variant}_seed{seed}", variant, curve, hours, seed)
    (root / "experiment.json").write_text(json.dumps({"variants": list(curves), "baseline": None}))
    return load_runs(root)


def verdicts(data, target):
    return {r["Method"]: (r["Verdict"], r["Reason"]) for r in zoo.check_claims(data, target, "compute/device_hours")}


UP = [0.3, 0.35, 0.4, 0.45, 0.5]


def test_speedup_claims_reproduced_not_reproduced_and_bounds(tmp_path, claims):
    claims({
        "fast": {"baseline": "slow", "kind": "to_target", "factor": 5.0, "claim": "5x", "source": "s"},
        "fast2": {"baseline": "slow", "kind": "to_target", "factor": 20.0, "claim": "20x", "source": "s"},
        "never": {"baseline": "slow", "kind": "to_target", "factor": 2.0, "claim": "2x", "source": "s"},
        "absent": {"baseline": "slow", "kind": "to_target", "factor": 2.0, "claim": "2x", "source": "s"},
    })  # fmt: skip
    data = runs(tmp_path, {
        "slow": ([UP, UP], 0.06),        # reaches 0.45 at step 30
        "fast": ([UP, UP], 0.01),        # same curve, 6x cheaper per step
        "fast2": ([UP, UP], 0.01),
        "never": ([[0.3] * 5, [0.3] * 5], 0.01),
    })  # fmt: skip
    v = verdicts(data, 0.45)
    assert v["fast"][0] == "reproduced"  # 6x against a claimed 5x
    assert v["fast2"][0] == "not reproduced"  # 6x against a claimed 20x
    # "never" never reaches 0.45: it counts at all it spent (0.4 h against slow's 1.8 h), so 4.5x is
    # only an upper bound of its speed-up, which does not settle a claimed 2x
    assert v["never"] == ("inconclusive", "a seed never reached 0.450: the speed-up is only an upper bound")
    assert v["absent"] == ("inconclusive", "no runs of absent")


def test_collapse_claims_need_a_significant_difference(tmp_path, claims):
    claims({"guarded": {"baseline": "plain", "kind": "collapse", "claim": "no collapse", "source": "s"}})
    fall = [0.3, 0.4, 0.1, 0.1, 0.1]
    data = runs(tmp_path, {"plain": ([fall, UP, UP], 0.01), "guarded": ([UP, UP, UP], 0.01)})
    assert verdicts(data, 0.45)["guarded"][0] == "inconclusive"  # 0/3 against 1/3: not significant
    data = runs(tmp_path / "more", {"plain": ([fall] * 5, 0.01), "guarded": ([UP] * 5, 0.01)})
    assert verdicts(data, 0.45)["guarded"][0] == "reproduced"  # 0/5 against 5/5


def test_leaderboard_ranks_by_final_reward_with_costs_per_iteration(tmp_path):
    data = runs(
        tmp_path, {"a": ([UP, UP], 0.01), "b": ([[0.3, 0.5, 0.55, 0.6, 0.61], [0.3, 0.5, 0.55, 0.6, 0.62]], 0.02)}
    )
    table, target = leaderboard(data, target=0.45, x="compute/device_hours")
    assert list(table["Method"]) == ["b", "a"] and list(table["Rank"]) == [1, 2]
    assert table.loc[0, "NFE / iteration"] == "100" and table.loc[1, "Collapsed"] == "0/2"


def test_a_ci_that_holds_the_factor_and_less_is_inconclusive(tmp_path, claims):
    """The rule declared before the reference-settings leaderboard: a CI reaching the claimed
    factor is not enough when it also admits far less (the earlier rule called it reproduced)."""
    claims({"wide": {"baseline": "slow", "kind": "to_target", "factor": 5.0, "claim": "5x", "source": "s"}})
    root = tmp_path / "runs"
    for seed, hours in enumerate((0.006, 0.03, 0.012)):  # 10x, 2x, 5x against slow's 0.06
        fake_run(root, f"slow_seed{seed}", "slow", UP, 0.06, seed)
        fake_run(root, f"wide_seed{seed}", "wide", UP, hours, seed)
    (root / "experiment.json").write_text(json.dumps({"variants": ["slow", "wide"], "baseline": "slow"}))
    verdict, reason = verdicts(load_runs(root), 0.45)["wide"]
    assert verdict == "inconclusive" and "holds 5x and as little as" in reason
