import fcntl
import os
import shutil
import subprocess

import pytest

from .helpers import ROOT, SERVICE, VENV, clean_env, merged, run_module

# The toy world runs on 2 CPU threads; keep runs reproducible and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def train():
    def _train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_module("grpo_zoo.train", *merged(*args), env=env)  # a shared set, then the test's own

    return _train


@pytest.fixture(scope="session")
def slurm():
    daemons = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # as start.sh looks
    if shutil.which("sbatch") is None or shutil.which("slurmctld", path=daemons) is None:
        if os.environ.get("CI"):
            pytest.fail("SLURM is not installed; .ci/run installs slurm-wlm and munge")
        pytest.skip("SLURM not installed (apt-get install slurm-wlm munge)")
    # one start at a time: pytest-xdist's workers each ask for the (one, shared) cluster
    with open("/tmp/grpo-zoo-slurm.start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = subprocess.run(["bash", str(ROOT / "slurm/test-cluster/start.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    conf = out.stdout.strip().split("=", 1)[1]
    return {"SLURM_CONF": conf}


@pytest.fixture(scope="module", autouse=True)
def no_rendezvous_left_behind():
    """After each test module, no process group and no rendezvous variables stay in this
    process: tests that train in place keep one group across their trainers, and a later
    module's subprocesses (a service, a tuner) must not inherit its MASTER_PORT."""
    yield
    from grpo_zoo.training.engine import RENDEZVOUS_KEYS, teardown

    teardown()
    for key in RENDEZVOUS_KEYS:
        os.environ.pop(key, None)


@pytest.fixture(scope="module")
def tiny_hpsv3(tmp_path_factory):
    if not (VENV / "bin" / "python").exists():
        if os.environ.get("CI"):
            pytest.fail("no .venv-hpsv3: .ci/run creates it with grpo_zoo/rewards/hpsv3_service/setup.sh")
        pytest.skip("no .venv-hpsv3 (bash grpo_zoo/rewards/hpsv3_service/setup.sh)")
    out = tmp_path_factory.mktemp("hpsv3")
    done = subprocess.run(
        [str(VENV / "bin" / "python"), str(SERVICE / "make_tiny.py"), str(out)],
        capture_output=True,
        text=True,
        env={**clean_env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out
