"""The paper's claims table: verdicts computed from run directories, and the CLI's bad input."""

import json
from pathlib import Path

import pytest
import yaml

from grpo_zoo.reports import paper_claims as claims

FLOPS_PER_STEP = 1e10


def write_run(root: Path, name: str, algorithm: dict, evals: list[float], train: list[float], grads=None) -> None:
    path = root / name
    path.mkdir(parents=True)
    cfg = {"run_dir": str(path), "seed": int(name.rsplit("seed", 1)[1]), "algorithm": algorithm}
    cfg["budget"] = {"steps": None, "flops": FLOPS_PER_STEP * 10 * (len(evals) - 1)}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for step, r in enumerate(train, start=1):
        row = {"step": step, "kind": "train", "reward/mean": r, "compute/flops": FLOPS_PER_STEP * step}
        row.update({f"grad_t/{k:02d}": g for k, g in (grads or {}).items()})
        rows.append(row)
    for i, r in enumerate(evals):
        rows.append({"step": 10 * i, "kind": "eval", "eval/reward": r, "compute/flops": FLOPS_PER_STEP * 10 * i})
    rows.sort(key=lambda r: (r["step"], r["kind"] == "eval"))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "status.json").write_text(json.dumps({"status": "completed"}))
    (path / "COMPLETED").write_text("{}")


@pytest.fixture
def paper_runs(tmp_path):
    for s in range(3):
        e = 0.003 * s
        # efficiency: Flash climbs fast and ends higher; Flow ends at 0.40
        write_run(
            tmp_path / "efficiency", f"flow_grpo_seed{s}", {"name": "flow_grpo"}, [0.3, 0.33, 0.36, 0.4 + e], [0.3] * 30
        )
        write_run(
            tmp_path / "efficiency",
            f"flash_grpo_seed{s}",
            {"name": "flash_grpo"},
            [0.3, 0.45, 0.47, 0.5 + e],
            [0.3] * 30,
        )
        # collapse: Fast1 falls below the base in eval and train reward; Flash improves
        write_run(
            tmp_path / "collapse",
            f"flow_grpo_fast1_seed{s}",
            {"name": "flow_grpo_fast"},
            [0.3, 0.35, 0.1, 0.12 + e],
            [0.3] * 10 + [0.1] * 20,
        )
        write_run(
            tmp_path / "collapse",
            f"flash_grpo_seed{s}",
            {"name": "flash_grpo"},
            [0.3, 0.35, 0.4, 0.45 + e],
            [0.3 + 0.005 * i for i in range(30)],
        )
        # ablation: full > each ablation; gradient sizes flat with rectification, 50x spread without
        abl = tmp_path / "ablation_grouping_rectification"
        flat, steep = {0: 1.0, 2: 1.1, 4: 0.9}, {0: 0.02, 2: 0.1, 4: 1.0}
        write_run(abl, f"{claims.FULL}_seed{s}", {"name": "flash_grpo"}, [0.3, 0.5 + e], [0.3] * 10, flat)
        write_run(abl, f"{claims.PER_SAMPLE}_seed{s}", {"name": "flash_grpo"}, [0.3, 0.4 + e], [0.3] * 10, flat)
        write_run(abl, f"{claims.NO_RECTIFY}_seed{s}", {"name": "flash_grpo"}, [0.3, 0.42 + e], [0.3] * 10, steep)
        write_run(abl, f"{claims.NEITHER}_seed{s}", {"name": "flash_grpo"}, [0.3, 0.38 + e], [0.3] * 10, steep)
    return tmp_path


def test_claims_verdicts_follow_the_runs(paper_runs):
    rows = claims.claims(paper_runs)
    verdicts = [c.verdict for c in rows]
    assert verdicts[0] == "reproduced"  # Flash ends 0.1 above Flow, far beyond the seed spread
    # Flow reaches its final 0.40 only at the end (3e11 FLOPs); Flash passes it by the first eval
    # (interpolated between 0 and 1e11): a speed-up far above 1x
    assert "speed-up" in rows[1].toy and verdicts[1] in ("reproduced", "not reproduced")
    assert verdicts[2] == "reproduced" and "3/3 seeds" in rows[2].toy
    assert verdicts[3] == "reproduced"
    assert verdicts[4] == "reproduced" and "50" in rows[4].toy
    md = claims.table(rows)
    assert md.count("\n") == 6 and "**reproduced**" in md


def test_claims_say_inconclusive_or_not_reproduced_when_the_data_does(paper_runs):
    # make Flow end as high as Flash in the efficiency runs: (i) can no longer be claimed
    for s in range(3):
        p = paper_runs / "efficiency" / f"flow_grpo_seed{s}" / "metrics.jsonl"
        rows = [json.loads(x) for x in p.read_text().splitlines()]
        rows[-1]["eval/reward"] = [0.502, 0.498, 0.505][s]
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert claims.claims(paper_runs)[0].verdict == "inconclusive"


def test_claims_cli_needs_the_paper_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        claims.main([str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "efficiency" in err[0]


def test_results_page_links_copied_plots(paper_runs, tmp_path):
    out = tmp_path / "site" / "RESULTS.md"
    out.parent.mkdir()
    assert claims.main([str(paper_runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("](results/") == 6 and "python -m grpo_zoo.claims" in text
    for line in text.splitlines():
        if line.startswith("!["):
            assert (out.parent / line.split("](")[1].rstrip(")")).stat().st_size > 5000


@pytest.mark.parametrize(
    "args",
    [
        ["{runs}", "--out", "/etc/passwd/x.md"],  # a file where a folder belongs
        ["{runs}", "--out", "{tmp}"],  # a folder where a file belongs
        ["{runs}", "--out", "{tmp}/R.md", "--assets", "/etc/passwd"],
        ["/etc/passwd"],
        ["{tmp}/no-such-runs"],
    ],
)
def test_claims_cli_paths_are_checked_before_compute(paper_runs, tmp_path, capsys, args):
    argv = [a.format(runs=paper_runs, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_:
        claims.main(argv)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_quick_mode_runs_the_published_experiments_shrunk_and_writes_no_results_page(tmp_path, capsys):
    from grpo_zoo.config.experiment import load_experiment
    from grpo_zoo.reports import paper_claims

    for path in paper_claims.quick_experiments(tmp_path / "quick"):
        shrunk = load_experiment(path, tmp_path / "runs")
        full = load_experiment(paper_claims.ROOT / paper_claims.EXPERIMENTS[path.stem], tmp_path / "runs")
        assert shrunk.name == full.name  # its runs land where the claims read them
        assert {r.variant for r in shrunk.runs} == {r.variant for r in full.runs}
        assert sorted({r.seed for r in shrunk.runs}) == sorted({r.seed for r in full.runs})[:2]
        for run in shrunk.runs:
            twin = next(r for r in full.runs if r.name == run.name)
            assert run.config["budget"]["flops"] == twin.config["budget"]["flops"] * 0.25
            strip = lambda c: {k: v for k, v in c.items() if k != "budget"}  # noqa: E731
            assert strip(run.config) == strip(twin.config)  # everything else as published
    with pytest.raises(SystemExit) as exited:
        paper_claims.main([str(tmp_path / "runs"), "--quick", "--out", str(tmp_path / "R.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and "--out" in err[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "R.md").exists()
    # a folder holding runs --quick did not make (the published ones): never trained over
    (tmp_path / "published" / "efficiency").mkdir(parents=True)
    with pytest.raises(SystemExit) as exited:
        paper_claims.main([str(tmp_path / "published"), "--quick"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and "--quick did not make" in err[0], err
    assert sorted(p.name for p in (tmp_path / "published").iterdir()) == ["efficiency"]
