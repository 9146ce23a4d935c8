import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The toy world runs on 2 CPU threads; keep runs reproducible and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TQDM_DISABLE", "1")


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout
    )


@pytest.fixture
def train():
    def _train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_module("grpo_zoo.train", *args, env=env)

    return _train
