"""Analysis: loading runs, aggregates, collapse, tables, plots, the report and the notebooks."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grpo_zoo.analysis import collapse_table, load_runs, mean_ci
from grpo_zoo.analysis.tables import ablation, efficiency, render, table1
from grpo_zoo.report import main as report_main
from grpo_zoo.report import write_report

from .helpers import ROOT, fake_run, run_module


@pytest.fixture
def runs(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, f"flow_grpo_seed{seed}", "flow_grpo", [0.3, 0.35, 0.4, 0.45, 0.5 + 0.01 * seed], 0.06)
        fake_run(tmp_path, f"flash_grpo_seed{seed}", "flash_grpo", [0.3, 0.4, 0.45, 0.5, 0.52 - 0.01 * seed], 0.01)
        fake_run(tmp_path, f"fast1_seed{seed}", "flow_grpo_fast", [0.3, 0.42, 0.25, 0.2, 0.18], 0.01)
    record = {"variants": ["fast1", "flow_grpo", "flash_grpo"], "baseline": "flow_grpo"}  # as the sweep leaves it
    (tmp_path / "experiment.json").write_text(json.dumps(record))
    return tmp_path


def test_load_groups_seeds_into_variants(runs):
    data = load_runs(runs)
    assert len(data) == 6 and set(data.runs["variant"]) == {"flow_grpo", "flash_grpo", "fast1"}
    assert (data.runs["eval/reward_initial"] == 0.3).all()


def test_the_ci_is_students_t_interval_valid_at_two_seeds():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and lo < m < hi
    assert hi - m == pytest.approx(3.182446305 * (5 / 3) ** 0.5 / 2, rel=1e-6)  # t(0.975, 3) s / sqrt(n)
    m, lo, hi = mean_ci([0.41, 0.43])  # two seeds: t(0.975, 1) = 12.7, far wider than their min-max range
    assert hi - lo == pytest.approx(2 * 12.7062047 * 0.01414213562 / 2**0.5, rel=1e-6) and hi - lo > 0.02 * 10
    m, lo, hi = mean_ci([2.0])
    assert m == 2.0 and lo != lo  # NaN without a second seed


def test_collapse_flags_the_run_that_falls_and_stays(runs):
    col = collapse_table(load_runs(runs), drop=0.3)
    flagged = col[col["collapsed"]]
    assert set(flagged["variant"]) == {"fast1"} and (flagged["collapse_step"] == 20).all()


def test_efficiency_measures_compute_to_target_and_speedup(runs):
    table, target = efficiency(load_runs(runs), target=0.45)
    row = {r["Method"]: r for r in table.to_dict("records")}
    assert row["flow_grpo"]["Seeds reaching it"] == "2/2" and row["fast1"]["Seeds reaching it"] == "0/2"
    # flow reaches 0.45 at step 30 (1.8 h), flash at step 20 (0.2 h): 9x
    assert row["flash_grpo"]["Speed-up vs flow_grpo (95% CI)"] == "9.00x"  # seeds agree: no spread, no CI


# -- nothing here knows an algorithm: fields and baselines come from the runs and the experiment --


def generic_runs(root: Path, variants: dict[str, dict], record: dict | None = None) -> Path:
    """Two seeds per variant: `variants` maps a name to its algorithm config; the variants
    climb at different speeds, and `record` is the sweep's experiment.json, if any."""
    curves = [[0.3, 0.35, 0.4, 0.45, 0.5], [0.3, 0.4, 0.45, 0.5, 0.52], [0.3, 0.45, 0.5, 0.52, 0.53]]
    for i, (name, alg) in enumerate(variants.items()):
        for seed in (0, 1):
            curve = curves[i % 3][:-1] + [curves[i % 3][-1] + 0.01 * seed]
            fake_run(root, f"{name}_seed{seed}", alg, curve, 0.01 * (i + 1), seed)
    if record is not None:
        (root / "experiment.json").write_text(json.dumps(record))
    return root


ALPHA = {"name": "zeta", "foo": 1, "bar": [0, 4], "same": "x", "empty": None}
BETA = {"name": "zeta", "foo": 2, "bar": [0, 4], "same": "x", "empty": None}
GAMMA = {"name": "eta", "same": "x", "empty": "set", "baz": {"k": 1}}


def test_load_records_every_algorithm_field_as_a_hashable_column(tmp_path):
    runs = load_runs(generic_runs(tmp_path, {"alpha": ALPHA, "gamma": GAMMA})).runs.set_index("name")
    assert runs.loc["alpha_seed0", "algorithm"] == "zeta" and runs.loc["alpha_seed0", "algorithm.foo"] == 1
    assert runs.loc["alpha_seed0", "algorithm.bar"] == (0, 4) and runs.loc["alpha_seed0", "algorithm.empty"] is None
    assert runs.loc["gamma_seed0", "algorithm.baz"] == '{"k": 1}'
    foo = runs.loc["gamma_seed0", "algorithm.foo"]
    assert foo != foo  # NaN: gamma's algorithm has no such field
    assert runs[[c for c in runs if c.startswith("algorithm.")]].nunique().to_dict()["algorithm.same"] == 1


def test_ablation_columns_are_the_algorithm_fields_that_differ(tmp_path):
    t = ablation(load_runs(generic_runs(tmp_path / "two", {"alpha": ALPHA, "beta": BETA})))
    assert list(t.columns[:2]) == ["Variant", "foo"] and "bar" not in t and "name" not in t
    assert t.set_index("Variant")["foo"].to_dict() == {"alpha": "1", "beta": "2"}
    assert {"Final eval reward", "Best eval reward", "Gain over base"} <= set(t.columns)
    assert any(c.startswith("vs best (") for c in t.columns) and "±" in t["Final eval reward"].iloc[0]
    # a third variant of another algorithm: its name differs, and a field one algorithm lacks shows "-"
    t = ablation(load_runs(generic_runs(tmp_path / "three", {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA})))
    assert list(t.columns[:2]) == ["Variant", "name"] and set(t.columns[2:6]) == {"foo", "bar", "empty", "baz"}
    assert "same" not in t
    rows = t.set_index("Variant")
    assert rows.loc["gamma", ["name", "foo", "bar", "empty"]].tolist() == ["eta", "-", "-", "set"]
    assert rows.loc["alpha", ["bar", "empty", "baz"]].tolist() == ["[0, 4]", "null", "-"]
    assert "| foo " in render(t, "md") and " foo " in render(t, "tex")
    assert '\\{"k": 1\\}' in render(t, "tex")  # a mapping's braces, escaped for LaTeX


def speedup_column(table) -> str:
    return next(c for c in table.columns if c.startswith("Speed-up vs "))


def test_efficiency_baseline_is_the_experiments_and_matched_exactly(tmp_path):
    variants = {"alpha": ALPHA, "flow_grpo_w2": BETA, "beta": GAMMA}
    record = {"variants": ["beta", "alpha", "flow_grpo_w2"], "baseline": "alpha"}
    root = generic_runs(tmp_path, variants, record)
    data = load_runs(root)
    assert list(dict.fromkeys(data.runs["variant"])) == record["variants"]  # the experiment's order
    table, _ = efficiency(data, target=0.45)
    assert speedup_column(table) == "Speed-up vs alpha (95% CI)"
    assert table.set_index("Method").loc["alpha", "Speed-up vs alpha (95% CI)"].startswith("1.00x")
    # no declared baseline: the experiment's first variant
    data.experiment = {"variants": record["variants"], "baseline": None}
    assert speedup_column(efficiency(data, target=0.45)[0]) == "Speed-up vs beta (95% CI)"
    # a bare folder of runs: the first in sorted order
    data.experiment = {}
    assert speedup_column(efficiency(data, target=0.45)[0]) == "Speed-up vs alpha (95% CI)"
    # asked for: exact names only (flow_grpo_w2 is not flow_grpo)
    assert speedup_column(efficiency(data, 0.45, baseline="flow_grpo_w2")[0]) == "Speed-up vs flow_grpo_w2 (95% CI)"
    for wrong in ("flow_grpo", "flow_grpo_w2_seed0", "ALPHA"):
        with pytest.raises(ValueError, match="flow_grpo_w2"):
            efficiency(data, 0.45, baseline=wrong)
    data.experiment = {"variants": record["variants"], "baseline": "flow_grpo"}
    with pytest.raises(ValueError, match="report.baseline 'flow_grpo'"):
        efficiency(data, target=0.45)


def test_report_says_which_baseline_and_checks_it_before_any_compute(tmp_path, capsys):
    variants = {"alpha": ALPHA, "flow_grpo_w2": BETA, "beta": GAMMA}
    declared = generic_runs(tmp_path / "declared", variants, {"variants": ["beta", "alpha"], "baseline": "alpha"})
    text = write_report(declared).read_text()
    assert "Speed-ups against alpha: declared in the experiment (report.baseline)." in text
    bare = generic_runs(tmp_path / "bare", variants)
    text = write_report(bare).read_text()
    assert "Speed-ups against alpha: the first variant in sorted order: no experiment record here" in text
    assert report_main([str(bare), "--baseline", "flow_grpo_w2", "--out", str(tmp_path / "w2")]) == 0
    assert "Speed-up vs flow_grpo_w2" in (tmp_path / "w2" / "efficiency.md").read_text()
    for root, argv in (
        (bare, ["--baseline", "flow_grpo"]),
        (generic_runs(tmp_path / "wrong", variants, {"baseline": "flow_grpo"}), []),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            report_main([str(root), *argv, "--out", str(tmp_path / "never")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and "'flow_grpo'" in err[0]
        assert "alpha, beta, flow_grpo_w2" in err[0] and not (tmp_path / "never").exists()
    (bare / "experiment.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_:
        report_main([str(bare), "--out", str(tmp_path / "never")])
    assert exit_.value.code == 2 and "experiment.json" in capsys.readouterr().err


def test_table1_marks_the_best_and_renders_both_formats(runs):
    t = table1(load_runs(runs))
    md, tex = render(t, "md"), render(t, "tex")
    assert "**" in md and "\\textbf{" in tex and "Object Class" in md
    assert "2/2 (step 20)" in md  # collapse flag and step in the table


def test_report_writes_plots_tables_and_index(runs):
    index = write_report(runs)
    out = index.parent
    for name in ("reward_vs_compute", "reward_curves", "ablation_bars", "grad_norm_by_timestep"):
        assert (out / f"{name}.png").stat().st_size > 5000 and (out / f"{name}.pdf").exists()
        assert f"({name}.png)" in index.read_text()
    for name in ("table1", "efficiency", "ablation", "collapse"):
        assert (out / f"{name}.md").exists() and (out / f"{name}.tex").exists()


def test_report_cli_bad_input():
    out = run_module("grpo_zoo.report", "/no/such/runs")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "analysis").glob("*.ipynb")))
def test_notebooks_execute_on_real_runs(notebook, real_runs, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "analysis" / notebook, as_version=4)
    os.environ["GRPO_ZOO_RUNS"], os.environ["GRPO_ZOO_NOTEBOOK_OUT"] = str(real_runs), str(tmp_path)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "analysis")}}
    ).execute()
    assert list(tmp_path.glob("*.png")) or notebook == "table1.ipynb"


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Two variants x two seeds of real toy training, made by the trainer."""
    root = tmp_path_factory.mktemp("real")
    small = [
        "data.prompts_per_step=2",
        "data.group_size=4",
        "sampling.steps=6",
        "sampling.eval_steps=4",
        "data.eval_samples=4",
        "data.eval_every=1",
        "budget.steps=3",
        "checkpoint_every=3",
        "save_eval_videos=false",
    ]
    for alg in ("flow_grpo", "flash_grpo"):
        for seed in (0, 1):
            out = run_module(
                "grpo_zoo.train",
                "experiments/toy/base.yaml",
                f"algorithm.name={alg}",
                f"seed={seed}",
                f"run_dir={root / f'{alg}_seed{seed}'}",
                *small,
            )
            assert out.returncode == 0, out.stderr[-2000:]
    return root


def test_collapse_is_what_a_person_sees_even_when_it_recovers(tmp_path):
    import numpy as np

    from grpo_zoo.analysis.stats import curve_collapse

    steps = np.array([0, 10, 20, 30])
    # the Fast1 curve: up, a deep fall, a partial recovery that stays below the base
    c = curve_collapse(np.array([0, 25, 50, 60]), np.array([0.287, 0.316, 0.110, 0.241]), base=0.287)
    assert c.collapsed and c.step == 50 and c.recovered is False and abs(c.depth - (1 - 0.110 / 0.316)) < 1e-9
    # a dip below the base model that fully recovers is still a collapse, marked recovered
    c = curve_collapse(steps, np.array([0.30, 0.42, 0.25, 0.45]), base=0.30)
    assert c.collapsed and c.step == 20 and c.recovered is True
    # a fall of 30% from the running best while still above the base: collapse with drop=0.25, not with 0.4
    c = curve_collapse(steps, np.array([0.30, 0.80, 0.55, 0.80]), base=0.30, drop=0.25)
    assert c.collapsed and c.step == 20 and c.recovered is True
    assert not curve_collapse(steps, np.array([0.30, 0.80, 0.55, 0.80]), base=0.30, drop=0.4).collapsed
    # steady improvement with small wiggles is not a collapse
    assert not curve_collapse(steps, np.array([0.30, 0.35, 0.34, 0.40]), base=0.30).collapsed
    # the base margin: 2% under the base is within the default 5%; with below_base=0 any fall counts
    assert not curve_collapse(steps, np.array([0.30, 0.294, 0.31, 0.33]), base=0.30).collapsed
    assert curve_collapse(steps, np.array([0.30, 0.294, 0.31, 0.33]), base=0.30, below_base=0.0).collapsed
    # an absolute noise tolerance widens the floor (the smoothed training reward's batch noise)
    assert not curve_collapse(steps, np.array([0.30, 0.27, 0.31, 0.33]), base=0.30, noise=0.04).collapsed


def test_train_collapse_ignores_batch_noise_but_not_a_fall():
    import numpy as np
    import pandas as pd

    from grpo_zoo.analysis.stats import detect_collapse

    rng = np.random.default_rng(0)
    noisy = 0.30 + 0.04 * rng.standard_normal(40)  # a flat run with a noisy batch mean
    fall = np.concatenate([noisy[:20], 0.15 + 0.04 * rng.standard_normal(20)])
    for series, expect in ((noisy, False), (fall, True)):
        train = pd.DataFrame({"step": np.arange(1, 41), "kind": "train", "reward/mean": series})
        assert detect_collapse(pd.DataFrame(), train)["train"].collapsed is expect


def test_collapse_table_reads_eval_and_smoothed_train_reward(tmp_path):
    # eval curve steady, training reward collapses (smoothed over 5 iterations) and stays down
    path = fake_run(tmp_path, "fast1_seed0", "flow_grpo_fast", [0.3, 0.32, 0.33, 0.34, 0.35], 0.01)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "eval"]
    train = [0.3] * 10 + [0.1] * 10
    for step, r in enumerate(train, start=1):
        rows.append({"step": step, "kind": "train", "reward/mean": r, "compute/device_hours": 0.01 * step})
    rows.sort(key=lambda r: (r["step"], r["kind"] == "eval"))  # the trainer's order: train, then its eval
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fake_run(tmp_path, "flash_seed0", "flash_grpo", [0.3, 0.32, 0.33, 0.34, 0.35], 0.01)
    col = collapse_table(load_runs(tmp_path)).set_index("variant")
    assert col.loc["fast1", "collapsed"] and col.loc["fast1", "collapse_in"] == "train"
    assert (
        col.loc["fast1", "eval_collapse_step"] is None
        or col.loc["fast1", "eval_collapse_step"] != col.loc["fast1", "eval_collapse_step"]
    )
    # the fall starts at step 11; the 10-iteration mean crosses the noise-widened floor a few steps later
    assert 11 <= col.loc["fast1", "train_collapse_step"] <= 15 and col.loc["fast1", "train_recovered"] is False
    assert not col.loc["flash", "collapsed"]


def test_significance_says_ns_when_seeds_cannot_separate():
    from grpo_zoo.analysis.stats import ratio_ci, significance

    assert significance([0.30, 0.31, 0.29], [0.30, 0.32, 0.28])[1] == "n.s."
    p, label = significance([0.30, 0.31, 0.305], [0.40, 0.41, 0.405])
    assert p < 0.05 and label.startswith("p")
    assert significance([0.3], [0.4]) != significance([0.3], [0.4])  # NaN p: one seed each, no test ...
    assert significance([0.3], [0.4])[1] == "n = 1"  # ... and no claim of "n.s." either
    speed, lo, hi = ratio_ci([6.0, 6.2, 5.8], [1.0, 1.1, 0.9])
    assert lo < speed < hi and abs(speed - 6.0) < 0.02  # the ratio of geometric means


@pytest.mark.parametrize("seed", range(20))
def test_a_speed_up_and_its_verdict_come_from_one_test(seed):
    """The CI excludes 1 exactly when the test says p < 0.05 (one test per comparison)."""
    from grpo_zoo.analysis.stats import ratio_test

    gen = np.random.default_rng(seed)
    n, m = int(gen.integers(2, 6)), int(gen.integers(2, 6))
    base = np.exp(gen.normal(0.0, 0.3, n))
    method = np.exp(gen.normal(gen.normal(0, 0.4), 0.3, m))
    speed, lo, hi, p, label = ratio_test(base, method)
    assert lo <= speed <= hi
    assert (lo > 1 or hi < 1) == (p < 0.05) == (label != "n.s.")
    assert ratio_test([2.0], [1.0, 1.1])[4] == "n = 1"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m.write_text(""), ":1: no metrics row in any run"),
        (
            lambda m: m.write_text('{"step": 0, "eval/reward": 0.4}\n'),
            ":1: a row without an integer `step` and a `kind`",
        ),
        (lambda m: m.write_text('{"kind": "sample", "step": 0}\n'), ":1: a row without an integer `step` and a `kind`"),
        (lambda m: m.write_text('{"kind": "train", "step": "zero"}\n'), ":1: a row without an integer `step`"),
        (lambda m: m.write_text("[1, 2]\n"), ":1: a list, not a row object"),
    ],
)
def test_report_on_runs_without_usable_rows_is_one_line_naming_the_file(tmp_path, capsys, damage, message):
    root = generic_runs(tmp_path / "runs", {"alpha": ALPHA, "beta": BETA})
    for run in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").exists()):
        (run / "COMPLETED").unlink(missing_ok=True)  # runs still going: their rows may not exist yet
        damage(run / "metrics.jsonl")
    with pytest.raises(SystemExit) as exit_:
        report_main([str(root), "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert "metrics.jsonl" in err[0] and message in err[0], err[0]
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"budget": {"steps": 4}}, "different budgets"),
        ({"data": {"eval_samples": 8}}, "different evaluations"),
        ({"sampling": {"eval_steps": 5}}, "different evaluations"),
        ({"model": {"backend": "toy", "path": "other-base"}}, "different base models"),
    ],
)
def test_the_report_refuses_to_rank_incomparable_runs_unless_grouped(tmp_path, capsys, change, words):
    """A 4-step run scored on 8 samples does not rank beside 1e12-FLOP runs scored on 32: one line,
    exit 2, nothing written; with --group one report per comparable set, each naming its base model."""
    import yaml as _yaml

    from grpo_zoo.report import main as report_main

    shared = {"budget": {"flops": 1e12}, "data": {"eval_samples": 32}, "model": {"backend": "toy", "path": "toy-base"}}
    for name, alg in (("flow_grpo-s0", "flow_grpo"), ("flash_grpo-s0", "flash_grpo"), ("odd-s0", "flash_grpo")):
        path = fake_run(tmp_path / "runs", name, alg, [0.41, 0.43, 0.45], 0.001)
        cfg = _yaml.safe_load((path / "config.yaml").read_text())
        extra = change if name.startswith("odd") else {}
        for section, values in {**shared, **extra}.items():
            cfg[section] = {**shared.get(section, {}), **values} if section in shared else values
        (path / "config.yaml").write_text(_yaml.safe_dump(cfg))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exited:
        report_main([str(tmp_path / "runs")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "--group" in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert report_main([str(tmp_path / "runs"), "--group"]) == 0
    index = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "1/report.md" in index and "2/report.md" in index and "base_model" in index
    one = (tmp_path / "runs" / "report" / "1" / "report.md").read_text()
    assert "base model toy:toy-base" in one
    assert "odd" not in (tmp_path / "runs" / "report" / "1" / "leaderboard.md").read_text()


def test_the_common_target_is_declared_or_clears_the_designs_minimum_detectable_difference(tmp_path):
    """Halfway from the base to the best, raised to base + MDD when the seeds are noisier than the
    gain; a declared report.target wins; the report says which."""
    from grpo_zoo.analysis.tables import common_target, design_mdd

    root = tmp_path / "runs"
    for seed, last in enumerate((0.40, 0.44)):  # noisy seeds: the final rewards spread by 0.04
        fake_run(root, f"flow_grpo_seed{seed}", "flow_grpo", [0.30, 0.35, last], 0.01, seed)
        fake_run(root, f"flash_grpo_seed{seed}", "flash_grpo", [0.30, 0.38, last + 0.02], 0.01, seed)
    data = load_runs(root)
    mdd, n = design_mdd(data)
    assert n == 2 and mdd == pytest.approx((4.302653 + 1.060660) * 0.02828427, rel=1e-5)  # (t + t) s sqrt(2 / n)
    target, how = common_target(data)
    assert target == pytest.approx(0.30 + mdd) and "raised to the base plus" in how and "cannot be told apart" in how
    data.experiment = {"target": 0.39}
    assert common_target(data) == (0.39, "declared in the experiment (report.target)")
    out = write_report(root, tmp_path / "report")
    assert "The target: halfway from the base model (0.300)" in out.read_text()


def test_differences_are_paired_by_seed_and_the_power_is_stated(tmp_path):
    """Gain over the base and the differences to the baseline and the best pair seed s with seed s
    (every run scores the same eval samples): a shared seed effect cancels, which Welch's test
    across seeds cannot see; the report states the paired design's minimum detectable difference."""
    from scipy import stats

    from grpo_zoo.analysis.stats import detectable, paired
    from grpo_zoo.analysis.tables import leaderboard, power

    root = tmp_path / "runs"
    for seed, shift in enumerate((0.00, 0.06, 0.12)):  # a large seed effect shared by both methods
        fake_run(root, f"flow_grpo_seed{seed}", "flow_grpo", [0.30, 0.33 + shift], 0.01, seed)
        fake_run(root, f"flash_grpo_seed{seed}", "flash_grpo", [0.30, 0.35 + shift + 0.001 * seed], 0.01, seed)
    (root / "experiment.json").write_text(
        json.dumps({"variants": ["flow_grpo", "flash_grpo"], "baseline": "flow_grpo"})
    )
    data = load_runs(root)
    board, _ = leaderboard(data)
    flash, flow = (board.set_index("Method").loc[v] for v in ("flash_grpo", "flow_grpo"))
    assert flow["vs flash_grpo (Welch's t-test)"] == "n.s."  # unpaired: the seed effect hides it
    half = f"{stats.t.ppf(0.975, 2) * np.array([0.020, 0.021, 0.022]).std(ddof=1) / 3**0.5:.3f}"
    assert flash["vs flow_grpo (paired)"] == f"+0.021 ± {half} (p<0.001)"
    assert flow["vs flash_grpo (paired)"] == f"-0.021 ± {half} (p<0.001)"
    assert flash["Gain over base (paired)"].startswith("+0.111 ± ")
    assert flow["vs flow_grpo (paired)"] == "-" and flash["vs flash_grpo (paired)"] == "-"
    m, lo, hi, p, n = paired(pd.Series([1.0, 2.0]), pd.Series([0.5, 1.0, 9.0]))  # only matched seeds pair
    assert (m, n) == (0.75, 2) and lo < m < hi and 0 < p < 1
    assert np.isnan(paired(pd.Series([1.0]), pd.Series([0.5]))[3])
    line = power(data, "flow_grpo")
    assert f"{detectable(0.001, 3):.3f} in eval reward" in line and "3 seeds" in line
    assert detectable(0.001, 3) == pytest.approx((4.302653 + 1.060660) * 0.001 / 3**0.5, rel=1e-5)


def test_the_reward_hacking_view_flags_a_reward_rising_while_another_falls(tmp_path):
    """Runs trained on toy_still: one raises it while toy_motion falls by half (hacking), one
    raises both; the report's collapse section shows the view."""
    import yaml

    from grpo_zoo.analysis.stats import hacking_table

    root = tmp_path / "runs"
    curves = {"hacked": (0.30, 0.60, 0.40, 0.20), "honest": (0.30, 0.40, 0.40, 0.42)}
    for variant, (still0, still1, motion0, motion1) in curves.items():
        path = fake_run(root, f"{variant}_seed0", "flow_grpo", [still0, still1], 0.01)
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        (path / "config.yaml").write_text(yaml.safe_dump({**cfg, "reward": {"name": "toy_still"}}))
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if r["kind"] == "eval"]
        for r, motion in zip(evals, (motion0, motion1)):
            r.update({"eval/toy_still": r["eval/reward"], "eval/toy_motion": motion, "eval/toy_prompt": 0.5})
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = hacking_table(load_runs(root)).set_index("variant")
    assert table.loc["hacked", "hacking"] == "toy_motion" and table.loc["honest", "hacking"] == "-"
    assert table.loc["hacked", "toy_motion change"] == pytest.approx(-0.2)
    assert table.loc["hacked", "reward change"] == pytest.approx(0.3)
    assert "toy_still change" not in table  # the training reward is the reward column
    text = write_report(root, tmp_path / "report").read_text()
    assert "### Reward hacking" in text and "toy_motion" in text.split("### Reward hacking")[1]


def test_the_reward_hacking_view_shows_each_component_of_a_weighted_reward(tmp_path):
    """A run trained on {toy_motion: 1, toy_still: 0.2}: its weighted sum rises while toy_still, a
    component, falls by a third; the view names it and logs every component's change."""
    import yaml

    from grpo_zoo.analysis.stats import hacking_table

    root = tmp_path / "runs"
    path = fake_run(root, "pair_seed0", "mix_grpo", [0.5, 0.7], 0.01)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    weights = {"toy_motion": 1.0, "toy_still": 0.2}
    (path / "config.yaml").write_text(yaml.safe_dump({**cfg, "reward": {"name": weights, "aggregate": "advantages"}}))
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    for r, (motion, still) in zip([r for r in rows if r["kind"] == "eval"], ((0.4, 0.6), (0.65, 0.4))):
        r.update({"eval/toy_motion": motion, "eval/toy_still": still, "eval/toy_prompt": 0.5})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_runs(root)
    assert data.runs["reward"].iloc[0] == "weighted"
    assert data.runs["reward_weights"].iloc[0] == "toy_motion=1, toy_still=0.2"
    table = hacking_table(data).set_index("variant")
    assert table.loc["pair", "hacking"] == "toy_still"
    assert table.loc["pair", "toy_motion change"] == pytest.approx(0.25)
    assert table.loc["pair", "toy_still change"] == pytest.approx(-0.2)


def test_report_metric_ranks_on_another_entry_than_the_training_reward(runs):
    """report.metric: eval/reward becomes eval/<metric> for every table; the training reward's
    evaluation stays as eval/train_reward; a metric no run logs is one line."""
    for path in runs.glob("*_seed*"):
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            if r["kind"] == "eval":
                r["eval/toy_still"] = 1.0 - r["eval/reward"]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = json.loads((runs / "experiment.json").read_text())
    (runs / "experiment.json").write_text(json.dumps({**record, "metric": "toy_still"}))
    data = load_runs(runs)
    evals = data.metrics[data.metrics["kind"] == "eval"]
    assert (evals["eval/reward"] == 1.0 - evals["eval/train_reward"]).all()
    assert np.allclose(data.runs["eval/reward_initial"], 0.7)
    text = write_report(runs, runs / "report").read_text()
    assert "Every eval reward here is toy_still" in text
    (runs / "experiment.json").write_text(json.dumps({**record, "metric": "toy_nope"}))
    from grpo_zoo.runs import MetricsError

    with pytest.raises(MetricsError, match="report.metric .toy_nope.: no run logs eval/toy_nope"):
        load_runs(runs)
