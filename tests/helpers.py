"""Small stand-ins and helpers shared by several test files (no test file imports another)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

TINY = {
    "data": {"prompts_per_step": 2, "group_size": 4, "eval_samples": 4, "eval_every": 0},
    "sampling": {"steps": 6, "eval_steps": 4},
    "budget": {"steps": 2},
    "checkpoint_every": 1,
    "save_eval_videos": False,
}
"""The smallest toy run config section (nested; experiment files' `config:`, built configs)."""

TINY_RUN = {
    "data.prompts_per_step": 2,
    "data.group_size": 4,
    "sampling.steps": 6,
    "sampling.eval_steps": 4,
    "data.eval_samples": 4,
    "data.eval_every": 0,
    "checkpoint_every": 2,
    "save_eval_videos": False,
}
"""The same as dotted overrides (`overrides(TINY_RUN, ...)` gives the command-line form)."""


def overrides(*parts: dict) -> list[str]:
    """`key=value` arguments from dotted dicts (later ones win), YAML-spelled (false, null)."""
    merged = {k: v for part in parts for k, v in part.items()}
    spell = lambda v: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
    return [f"{k}={spell(v)}" for k, v in merged.items()]


def merged(*args: str) -> list[str]:
    """Command-line arguments with each `key=value` override once, the last one given winning
    (the trainer refuses a key given twice; tests compose shared sets with their own)."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        key = arg.split("=", 1)[0] if "=" in arg else f"#{i}"
        out.pop(key, None)
        out[key] = arg
    return list(out.values())


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m module args` in the repository root, without this process's rendezvous."""
    from grpo_zoo.training.engine import RENDEZVOUS_KEYS

    inherited = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_KEYS}  # never a parent's rendezvous
    full_env = {**inherited, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout
    )


def clean_env() -> dict:
    """This process's environment without the rendezvous it set up for its own trainers."""
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}


def readme_block(heading: str, index: int = 0) -> str:
    """The `index`-th ```python block after README.md's `heading` line."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    start = -1
    for _ in range(index + 1):
        start = section.index("```python\n", start + 1)
    start += len("```python\n")
    return section[start : section.index("\n```", start)]


def install_plugin(tmp_path, module: str, source: str, package: str = "plugin_algos") -> dict:
    """`source` as module `package.module` of a distribution whose entry point registers it in the
    group "grpo_zoo.algorithms" (its own dist-info on the path, as pip would leave it); returns
    the environment that sees it."""
    site = tmp_path / "site"
    (site / package).mkdir(parents=True, exist_ok=True)
    (site / package / "__init__.py").write_text("")
    (site / package / f"{module}.py").write_text(source)
    info = site / f"{package}_{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}-{module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[grpo_zoo.algorithms]\n{module} = {package}.{module}\n")
    return {**clean_env(), "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


class CountingPolicy(torch.nn.Module):
    """A deterministic stand-in velocity field that counts the rows it computes (forwards)."""

    latent_shape = (3, 2, 4, 4)

    def __init__(self):
        super().__init__()
        self.rows = 0

    def velocity(self, x, sigma, emb, null_emb, guidance):
        self.rows += len(x)
        return torch.tanh(x * 0.5 + emb.mean((1, 2)).view(-1, 1, 1, 1, 1) + sigma.view(-1, 1, 1, 1, 1))


SMALL = overrides(TINY_RUN, {"budget.steps": 2, "optim.lr": 1e-3, "model.lora_rank": 0})
"""Command-line overrides of a small full-fine-tuning toy run (the train CLI's tests)."""

TINY_INPROCESS = {
    "model.lora_rank": 0,
    "data.prompts_per_step": 2,
    "data.group_size": 4,
    "sampling.steps": 6,
    "sampling.eval_steps": 2,
    "data.eval_samples": 4,
    "data.eval_every": 0,
    "checkpoint_every": 2,
    "save_eval_videos": False,
    "optim.lr": 1e-3,
    "engine.threads": 1,
}
"""The dotted config of the in-process tiny runs (`run_config`, `train`)."""
WALL_CLOCK = ("compute/device_seconds", "compute/device_hours")

TINY_WAN_ARGS = [
    "model.backend=wan",
    "model.height=16",
    "model.width=16",
    "model.frames=9",
    "model.max_tokens=8",
    "model.lora_rank=4",
    "data.prompts_per_step=2",
    "data.group_size=4",
    "sampling.steps=6",
    "sampling.eval_steps=3",
    "data.eval_samples=4",
    "data.eval_every=0",
    "checkpoint_every=5",
]
"""A tiny random Wan2.1 (grpo_zoo.models.tiny_wan) run's overrides."""

VENV = ROOT / ".venv-hpsv3"
"""The HPSv3 service's own environment (grpo_zoo/rewards/hpsv3_service/setup.sh)."""
SERVICE = ROOT / "grpo_zoo" / "rewards" / "hpsv3_service"


STANDIN = r"""
import importlib.util, os, sys, time
import numpy as np, torch, uvicorn
spec = importlib.util.spec_from_file_location("hpsv3_server", sys.argv[1])
server = sys.modules["hpsv3_server"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(server)

class Model:  # HPSv3RewardInferencer's interface: reward(images, prompts) -> [N, 2] (mu, sigma)
    def reward(self, images, prompts):
        time.sleep(float(os.environ.get("STANDIN_DELAY", "0")))
        return torch.tensor([[float(np.asarray(im).mean()) / 255 + len(p) / 100, 0.0] for im, p in zip(images, prompts)])

limits = dict(zip(("max_body_bytes", "max_frames", "max_pending"), map(int, sys.argv[3:6])))
app = server.make_app(Model(), 4, "cpu", token=server.read_token(os.environ.get("TOKEN_FILE")), **limits)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


class StandinService:
    """server.py's own app (make_app: Guard, limits, decoding, batching) served by uvicorn in this
    environment, in front of STANDIN's model: score = mean pixel / 255 + len(prompt) / 100."""

    def __init__(self, port=None, max_body=1 << 20, max_frames=64, max_pending=4096, env=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [str(SERVICE / "server.py"), str(self.port), str(max_body), str(max_frames), str(max_pending)]
        self.env = {**clean_env(), "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = None

    def start(self) -> "StandinService":
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STANDIN, *self.args], env=self.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the service did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(tmp_path, name: str, alg: dict, steps: int):
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import apply_overrides, build, load_config_file
    from tests.golden import split

    alg, run = split(alg)
    changes = {**TINY_INPROCESS, **run}
    data = apply_overrides(load_config_file("experiments/toy/base.yaml"), [f"{k}={v}" for k, v in changes.items()])
    data["algorithm"] = alg
    data["budget"] = {"steps": steps}
    data["run_dir"] = str(tmp_path / name)
    return build(RunConfig, data)


def train(cfg) -> list[dict]:
    from grpo_zoo.runs import RunDir
    from grpo_zoo.training.trainer import Trainer

    trainer = Trainer(cfg, progress=False)
    trainer.engine.close = lambda: None  # the next trainer reuses the process group
    trainer.train()
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in RunDir(cfg.run_dir).rows()]


def fake_run(
    root: Path, name: str, algorithm: str | dict, evals: list[float], hours_per_step: float, seed: int = 0
) -> Path:
    """A run directory in the trainer's format with the given eval rewards (one per 10 steps);
    `algorithm`: its name, or its whole config section."""
    path = root / name
    path.mkdir(parents=True)
    cfg = {
        "run_dir": str(path),
        "seed": seed,
        "algorithm": algorithm if isinstance(algorithm, dict) else {"name": algorithm, "knob": 1},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for i, r in enumerate(evals):
        step = 10 * i
        comp = {"compute/device_hours": step * hours_per_step, "compute/nfe": step * 100.0}
        if step:
            rows.append(
                {
                    "step": step,
                    "kind": "train",
                    "reward/mean": r - 0.05,
                    "stats/zero_std_ratio": 0.1,
                    "stats/approx_kl": 0.01,
                    "grad_t/03": 0.5,
                    "grad_t/07": 2.0,
                    **comp,
                }
            )
        rows.append(
            {
                "step": step,
                "kind": "eval",
                "eval/reward": r,
                "eval/aesthetic_quality": r / 2,
                "eval/imaging_quality": 0.9,
                "eval/subject_consistency": 0.8,
                "eval/object_class": r,
                **comp,
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "status.json").write_text(json.dumps({"status": "completed"}))
    (path / "COMPLETED").write_text("{}")
    return path


def write_experiment(tmp_path: Path, name: str, variants: dict, config: dict | None = None, **extra) -> Path:
    exp = {
        "name": name,
        "base": str(ROOT / "experiments" / "toy" / "base.yaml"),
        "config": {**TINY, **(config or {})},
        "seeds": [0],
        "variants": variants,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    text = yaml.safe_dump(exp, sort_keys=False)  # the variants in their order here
    path.write_text(f"# python -m grpo_zoo.sweep {path}\n" + text)
    return path


def slurm_sweep(exp, runs, slurm, *extra):
    return run_module(
        "grpo_zoo.sweep",
        str(exp),
        "--runs-dir",
        str(runs),
        "--executor",
        "slurm",
        "--cluster",
        "slurm/clusters/local-test.yaml",
        "--max-parallel",
        "2",
        "--threads",
        "1",
        "--no-report",
        *extra,
        env=slurm,
    )


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without their wall-clock columns (what two runs of one config share exactly)."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def launch_train(args: list[str], kill_at: str | None = None, stop_at: str | None = None) -> subprocess.Popen:
    """`python -m grpo_zoo.train ARGS` in the background, killed (SIGKILL) or stopped (SIGSTOP) at
    a named point of grpo_zoo/runs/store.py when asked."""
    import signal

    env = clean_env()
    for var, value in (("GRPO_ZOO_KILL_AT", kill_at), ("GRPO_ZOO_STOP_AT", stop_at)):
        env.pop(var, None)
        if value:
            env[var] = value
    return subprocess.Popen(
        [sys.executable, "-m", "grpo_zoo.train", *merged(*args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        # a shell's background job inherits SIGINT ignored, and the trainer honours that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_stopped(proc: subprocess.Popen, timeout: float = 900) -> None:
    """Until `proc` has stopped itself (SIGSTOP at its stop point)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.1)
    raise AssertionError("the trainer never reached its stop point")


def damaged_checkpoint(dest: Path) -> Path:
    """A copy of the shipped toy checkpoint whose weights are cut to a third: every file a check
    before compute reads is whole, so the run fails only when it loads the weights."""
    import shutil

    shutil.copytree(ROOT / "grpo_zoo" / "toy" / "checkpoints" / "toy-base", dest)
    for weights in dest.rglob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return dest
