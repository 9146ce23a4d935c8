"""Small stand-ins and helpers shared by several test files (no test file imports another)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

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
