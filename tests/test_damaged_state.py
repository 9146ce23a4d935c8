"""Damaged state, table-driven: a run directory or a sweep folder whose files are damaged or of
the wrong kind (a scalar config, a folder or a FIFO where a file belongs, rows of the wrong
type, a record that is a list) is named in one line with its file and what is wrong, exit
status 2, by every CLI that reads it (train, sweep --status / --dry-run / submit, report),
before any compute, and the files are left byte for byte as they were. Nothing blocks on a
FIFO."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from .helpers import write_experiment

RUN = "flash_seed0"
ALL = ("train", "status", "dry", "submit", "report")
SWEEP = ("status", "dry", "submit")


def _replace(path: Path, make) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    make(path)


def text(name: str, content: str):
    return lambda run: _replace(run / name, lambda p: p.write_text(content))


def folder(name: str):
    return lambda run: _replace(run / name, lambda p: p.mkdir())


def fifo(name: str):
    return lambda run: _replace(run / name, os.mkfifo)


def config_edit(**changes):
    def damage(run: Path) -> None:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, **changes}))

    return damage


def rows_edit(fn):
    def damage(run: Path) -> None:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").write_text("".join(json.dumps(fn(r)) + "\n" for r in rows))

    return damage


def sweep_file(name: str, content: str | None):
    """The sweep's own file beside its runs: `content`, or a folder when None."""

    def damage(run: Path) -> None:
        path = run.parent / name
        _replace(path, (lambda p: p.write_text(content)) if content is not None else (lambda p: p.mkdir()))

    return damage


# damage -> (how, the CLIs that read that file, a word the error line must hold)
DAMAGES = {
    "config_scalar": (text("config.yaml", "5\n"), ALL, "config.yaml"),
    "config_list": (text("config.yaml", "- 1\n- 2\n"), ALL, "config.yaml"),
    "config_not_yaml": (text("config.yaml", "a: [1\n"), ALL, "config.yaml"),
    "config_binary": (lambda run: (run / "config.yaml").write_bytes(bytes(range(256))), ALL, "config.yaml"),
    "config_folder": (folder("config.yaml"), ALL, "config.yaml"),
    "config_fifo": (fifo("config.yaml"), ALL, "config.yaml"),
    "config_algorithm_number": (config_edit(algorithm=5), ALL, "config.yaml"),
    "config_algorithm_name_number": (config_edit(algorithm={"name": 5}), ALL, "config.yaml"),
    "config_budget_list": (config_edit(budget=[1]), ALL, "config.yaml"),
    "config_budget_text": (config_edit(budget={"steps": "many"}), ALL, "config.yaml"),
    "config_seed_text": (config_edit(seed="zero"), ALL, "config.yaml"),
    "config_data_list": (config_edit(data=[1]), ALL, "config.yaml"),
    "status_not_json": (text("status.json", "{not json"), ALL, "status.json"),
    "status_list": (text("status.json", "[1, 2]"), ALL, "status.json"),
    "status_number": (text("status.json", '{"status": 5}'), ALL, "status.json"),
    "status_folder": (folder("status.json"), ALL, "status.json"),
    "status_fifo": (fifo("status.json"), ALL, "status.json"),
    "meta_list": (text("meta.json", "[1]"), ("train", *SWEEP), "meta.json"),
    "meta_not_json": (text("meta.json", "{"), ("train", *SWEEP), "meta.json"),
    "meta_folder": (folder("meta.json"), ("train", *SWEEP), "meta.json"),
    "completed_folder": (folder("COMPLETED"), ALL, "COMPLETED"),
    "completed_list": (text("COMPLETED", "[3]"), ALL, "COMPLETED"),
    "metrics_folder": (folder("metrics.jsonl"), ALL, "metrics.jsonl"),
    "metrics_fifo": (fifo("metrics.jsonl"), ALL, "metrics.jsonl"),
    "metrics_empty": (text("metrics.jsonl", ""), ("status", "report"), "metrics.jsonl"),
    "metrics_list_row": (text("metrics.jsonl", "[1]\n"), ("status", "report"), "metrics.jsonl"),
    "metrics_no_eval_reward": (
        rows_edit(lambda r: {k: v for k, v in r.items() if k != "eval/reward"}),
        ("status", "report"),
        "metrics.jsonl",
    ),
    "metrics_flops_text": (rows_edit(lambda r: {**r, "compute/flops": "many"}), ("status", "report"), "metrics.jsonl"),
    "metrics_step_text": (rows_edit(lambda r: {**r, "step": "one"}), ("status", "report"), "metrics.jsonl"),
    "lock_folder": (folder("lock"), ("train", *SWEEP), "lock"),
    "lock_fifo": (fifo("lock"), ("train", *SWEEP), "lock"),
    "latest_folder": (folder("checkpoints/latest"), ("train", *SWEEP), "latest"),
    "latest_fifo": (fifo("checkpoints/latest"), ("train", *SWEEP), "latest"),
    "checkpoints_file": (text("checkpoints", "x"), ("train", *SWEEP), "checkpoints"),
    "vbench_list": (text("vbench.json", "[1]"), ("report",), "vbench.json"),
    "vbench_text_score": (text("vbench.json", '{"aesthetic_quality": "high"}'), ("report",), "vbench.json"),
    "vbench_folder": (folder("vbench.json"), ("report",), "vbench.json"),
    "sweep_record_folder": (sweep_file("sweep.json", None), SWEEP, "sweep.json"),
    "sweep_record_not_json": (sweep_file("sweep.json", "{"), SWEEP, "sweep.json"),
    "sweep_record_list": (sweep_file("sweep.json", "[]"), SWEEP, "sweep.json"),
    "sweep_record_entry_text": (sweep_file("sweep.json", json.dumps({RUN: "job 7"})), SWEEP, "sweep.json"),
    "experiment_record_folder": (sweep_file("experiment.json", None), ("dry", "submit", "report"), "experiment.json"),
    "experiment_record_list": (sweep_file("experiment.json", "[1]"), ("dry", "submit", "report"), "experiment.json"),
    "experiment_record_variants": (
        sweep_file("experiment.json", json.dumps({"variants": "flash"})),
        ("dry", "submit", "report"),
        "experiment.json",
    ),
}
CASES = [(damage, cli) for damage, (_, clis, _) in DAMAGES.items() for cli in clis]


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory) -> tuple[Path, Path]:
    """(experiment file, runs folder) of a finished one-run sweep, in the trainer's formats."""
    from grpo_zoo.config.experiment import load_experiment
    from grpo_zoo.runs import RunDir

    root = tmp_path_factory.mktemp("damaged")
    exp_path = write_experiment(root, "dmg", {"flash": {"algorithm": {"name": "flash_grpo"}}})
    runs = root / "runs"
    exp = load_experiment(exp_path, str(runs))
    spec = exp.runs[0]
    run = RunDir(spec.config["run_dir"])
    run.start(spec.config, world_size=1, device="cpu", resume=False)
    for step in range(3):
        comp = {"compute/flops": 1e9 * step, "compute/device_seconds": float(step), "compute/device_hours": step / 3600}
        if step:
            run.log({"step": step, "kind": "train", "reward/mean": 0.4, **comp})
        run.log({"step": step, "kind": "eval", "eval/reward": 0.4 + step / 100, **comp})
    (run.checkpoints / "step-2").mkdir(parents=True)
    (run.checkpoints / "latest").write_text("step-2")
    run.complete({"step": 2, "eval/reward": 0.42})
    (run.path / "lock").write_text("")
    (runs / "dmg" / "sweep.lock").write_text("")  # as a sweep leaves them: empty once released
    (runs / "dmg" / "sweep.json").write_text(json.dumps({RUN: {"job_id": "1", "executor": "local"}}))
    (runs / "dmg" / "experiment.json").write_text(json.dumps(exp.record()))
    return exp_path, runs


def argv(cli: str, exp: Path, runs: Path, out: Path) -> tuple[str, list[str]]:
    run = runs / "dmg" / RUN
    if cli == "train":
        return "train", [str(out / "config.yaml"), f"run_dir={run}"]
    if cli == "report":
        return "report", [str(runs / "dmg"), "--out", str(out / "report")]
    look = {"status": ["--status"], "dry": ["--dry-run"], "submit": ["--executor", "debug", "--no-report"]}[cli]
    return "sweep", [str(exp), "--runs-dir", str(runs), *look]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: a file's bytes, or what it is (never opening a FIFO)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_fifo():
                out[rel] = "fifo"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes().hex()
    return out


@pytest.mark.parametrize(("damage", "cli"), CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_damaged_state_is_one_line_and_left_as_it_was(damage, cli, sweep_folder, tmp_path, capsys, monkeypatch):
    from grpo_zoo.config.schema import to_dict
    from grpo_zoo.launch.sweep import main as sweep
    from grpo_zoo.report import main as report
    from grpo_zoo.train import main as train

    exp, source = sweep_folder
    runs = tmp_path / "runs"
    shutil.copytree(source, runs)
    run = runs / "dmg" / RUN
    config = yaml.safe_load((run / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))  # the run's own config, to resume it
    how, _, word = DAMAGES[damage]
    how(run)
    before = snapshot(runs)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    name, args = argv(cli, exp, runs, tmp_path)
    main = {"train": train, "sweep": sweep, "report": report}[name]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert word in err[0], err[0]
    assert "Traceback" not in err[0]
    assert snapshot(runs) == before, "the damaged folder was changed"


def test_every_config_section_is_checked_for_its_kind():
    """The stored config's sections that must be mappings are the RunConfig's nested configs."""
    import dataclasses
    import typing

    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.runs.store import SECTIONS

    hints = typing.get_type_hints(RunConfig)
    expected = {name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    assert set(SECTIONS) == expected


def test_a_healthy_folder_passes_every_cli(sweep_folder, tmp_path, capsys, monkeypatch):
    """The same folder undamaged: --status, --dry-run and the report answer 0 (the table above
    tests the damage, not a folder that was broken from the start)."""
    from grpo_zoo.launch.sweep import main as sweep
    from grpo_zoo.report import main as report

    exp, source = sweep_folder
    runs = tmp_path / "runs"
    shutil.copytree(source, runs)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert sweep([str(exp), "--runs-dir", str(runs), "--status"]) == 0
    assert "done" in capsys.readouterr().out
    assert sweep([str(exp), "--runs-dir", str(runs), "--dry-run"]) == 0
    assert report([str(runs / "dmg"), "--out", str(tmp_path / "report")]) == 0
