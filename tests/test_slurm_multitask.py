"""More than one process per run on SLURM, and cluster profiles -> the sbatch/srun lines.

The 2-task jobs run on the single-node test cluster (slurm/test-cluster/, 2 CPUs): srun starts
two processes, torch.distributed comes up from SLURM's environment (gloo on CPU), and both
ranks end with the same weights. Multi-node GPU profiles cannot run here: their sbatch
scripts, written by submitit through the sweep command, are read back instead.
"""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpo_zoo.runs import RunDir

from .helpers import ROOT, SMALL, TINY, clean_env, run_module

TWO_TASKS = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def wait_for_job(job_id: str, env: dict, timeout: float = 900) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, env=env)
        if not out.stdout.strip():
            return "gone"
        time.sleep(1)
    subprocess.run(["scancel", job_id], env=env)
    raise TimeoutError(f"job {job_id} still queued or running after {timeout} s")


def assert_two_ranks_in_sync(run_dir: Path) -> None:
    assert RunDir(run_dir).is_complete(), (run_dir / "status.json").read_text()
    summary = json.loads((run_dir / "COMPLETED").read_text())
    assert len(summary["param_checksums"]) == 2 and summary["ranks_in_sync"], summary
    assert summary["param_checksums"][0] == summary["param_checksums"][1]
    assert json.loads((run_dir / "meta.json").read_text())["world_size"] == 2
    assert [r["step"] for r in RunDir(run_dir).rows() if r["kind"] == "train"] == [1, 2]


@pytest.mark.slow
def test_srun_two_tasks_train_one_run_with_equal_checksums(tmp_path, slurm):
    """sbatch + srun: the engine maps SLURM_PROCID/NTASKS/LOCALID and the nodelist to torch.distributed."""
    run = tmp_path / "run"
    script = tmp_path / "job.sh"
    args = " ".join(["experiments/toy/base.yaml", f"run_dir={run}", *SMALL, "engine.zero_stage=2"])
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --ntasks=2\n#SBATCH --cpus-per-task=1\n"
        f"#SBATCH --output={tmp_path}/slurm-%j.out\n"
        f"cd {ROOT}\n"
        f"srun --kill-on-bad-exit=1 {sys.executable} -m grpo_zoo.train {args}\n"
    )
    env = {**clean_env(), **slurm, **TWO_TASKS}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # SLURM's alone
        env.pop(key, None)
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env, check=True)
    job_id = out.stdout.strip().split(";")[0]
    wait_for_job(job_id, env)
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert (run / "COMPLETED").exists(), log[-3000:]
    assert_two_ranks_in_sync(run)


@pytest.mark.slow
def test_sweep_submits_a_two_task_run_through_submitit(tmp_path, slurm):
    """The sweep's own path: resources {tasks: 2} -> --ntasks-per-node=2, srun, TrainJob in each task."""
    exp = {
        "name": "two",
        "base": str(ROOT / "experiments" / "toy" / "base.yaml"),
        "config": {**TINY, "checkpoint_every": 2, "engine": {"zero_stage": 1}},
        "seeds": [0],
        "variants": {"flash": {"algorithm": {"name": "flash_grpo"}}},
        "resources": {"tasks": 2},
    }
    path = tmp_path / "two.yaml"
    path.write_text(f"# python -m grpo_zoo.sweep {path}\n" + yaml.safe_dump(exp))
    runs = tmp_path / "runs"
    out = run_module(
        "grpo_zoo.sweep",
        str(path),
        *("--runs-dir", str(runs), "--executor", "slurm", "--cluster", "slurm/clusters/local-test.yaml"),
        *("--threads", "1", "--no-report"),
        env={**slurm, **TWO_TASKS},
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    script = next((runs / "two" / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script
    assert_two_ranks_in_sync(runs / "two" / "flash_seed0")


# -- profiles -> sbatch scripts (no GPUs here: a stand-in sbatch keeps the script) ---------------


@pytest.fixture
def capture_sbatch(tmp_path, monkeypatch):
    """PATH with an `sbatch` that accepts any script (job 4242); submitit keeps the script it wrote.
    An `srun` too: submitit looks for one before it submits (SLURM need not be installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"sbatch": "echo 'Submitted batch job 4242'", "srun": "exit 1"}.items():
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)


def submitted_script(tmp_path: Path, cluster: str, resources: dict) -> str:
    """Run the sweep command (in this process) and return the sbatch script submitit wrote."""
    from grpo_zoo.launch.sweep import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    exp = {
        "name": "shape",
        "base": str(ROOT / "experiments" / "toy" / "base.yaml"),
        "config": TINY,
        "seeds": [0, 1],
        "variants": {"flash": {"algorithm": {"name": "flash_grpo"}}},
        "resources": resources,
    }
    path = tmp_path / "shape.yaml"
    path.write_text(f"# python -m grpo_zoo.sweep {path}\n" + yaml.safe_dump(exp))
    runs = tmp_path / "runs"
    args = ["--runs-dir", str(runs), "--executor", "slurm", "--cluster", cluster, "--max-parallel", "2", "--no-wait"]
    assert main([str(path), *args]) == 0
    return next((runs / "shape" / ".submitit").rglob("*_submission.sh")).read_text()


def test_multi_node_gpu_profile_writes_nodes_tasks_and_gpus_per_node(tmp_path, capture_sbatch):
    script = submitted_script(tmp_path, "slurm/clusters/gpu-96.yaml", {"gpus": 32, "time_min": 600})
    for line in (
        "#SBATCH --nodes=4",  # 32 GPUs on nodes of 8: four nodes, unasked
        "#SBATCH --ntasks-per-node=8",  # one process per GPU
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --partition=gpu",
        "#SBATCH --constraint=h100",
        "#SBATCH --exclusive",
        "#SBATCH --mem=400GB",
        "#SBATCH --time=600",
        "#SBATCH --array=0-1%2",  # two seeds, two at a time
        "source .venv/bin/activate",  # the profile's setup
    ):
        assert line in script, (line, script)
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "submitit.core._submit" in srun[0]


def test_single_node_profile_and_explicit_nodes(tmp_path, capture_sbatch):
    script = submitted_script(tmp_path / "a", "slurm/clusters/gpu-8.yaml", {"gpus": 8})
    assert "#SBATCH --nodes=1" in script and "#SBATCH --ntasks-per-node=8" in script
    assert "#SBATCH --gpus-per-node=8" in script and "--exclusive" not in script
    two = submitted_script(tmp_path / "b", "slurm/clusters/gpu-96.yaml", {"gpus": 8, "nodes": 2})
    assert "#SBATCH --nodes=2" in two and "#SBATCH --ntasks-per-node=4" in two and "#SBATCH --gpus-per-node=4" in two
    cpu = submitted_script(tmp_path / "c", "slurm/clusters/local-test.yaml", {"tasks": 2})
    assert "#SBATCH --ntasks-per-node=2" in cpu and "--gpus-per-node" not in cpu


@pytest.mark.parametrize(
    "cluster, resources, needle",
    [
        ("gpu-8.yaml", {"gpus": 16}, "resources.nodes"),  # 2 nodes, but the profile has one
        ("gpu-96.yaml", {"gpus": 9}, "resources.gpus"),  # 9 GPUs over 2 nodes
        ("gpu-96.yaml", {"gpus": 16, "nodes": 1}, "resources.nodes"),  # 16 on a node of 8
        ("local-test.yaml", {"tasks": 0}, "resources.tasks"),
    ],
)
def test_impossible_job_shapes_are_one_line_exit_2(tmp_path, capture_sbatch, capsys, cluster, resources, needle):
    with pytest.raises(SystemExit) as exit_:
        submitted_script(tmp_path, f"slurm/clusters/{cluster}", resources)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not list((tmp_path / "runs").rglob("*_submission.sh"))
