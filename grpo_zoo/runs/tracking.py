"""Experiment tracking: a run's metric rows also go to TensorBoard and Weights & Biases.

`metrics.jsonl` (runs.py) is always written and is what analysis reads; `logging.backends`
adds mirrors that receive every row at its `step`, under the same metric names
(`reward/mean`, `eval/reward`, `loss/policy`, `compute/flops`, ...), plus the run's
resolved config:

- `tensorboard`: event files in RUN/tensorboard/ (`tensorboard --logdir runs/EXPERIMENT`); the
  config as the text summary `config`. A resumed run drops the events past its checkpoint.
  Every metric also goes to RUN/tensorboard/at_flops/ with the training FLOPs spent as its step
  (`compute/flops`), so runs compare at equal compute; the evaluation's grid of videos (every
  frame of the first ones) is the image `eval/videos`.
- `wandb`: RUN/wandb/, offline by default (no network, no account; `wandb sync
  RUN/wandb/offline-run-*` uploads later; `logging.wandb_mode: online` streams). The run is
  named after its directory, grouped by its experiment, with an id stable per run directory;
  its charts plot every metric against `compute/flops` (W&B's define_metric), and the
  evaluation grid is logged as the image `eval/videos`.

Only the process writing metrics.jsonl (rank 0) writes here. A mirror that fails mid-run is
reported in one line and dropped; the run and its metrics.jsonl go on.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import yaml

BACKENDS = ("jsonl", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def missing_package(backend: str) -> str | None:
    """The package a backend needs when it is not installed (None when it is)."""
    pkg = PACKAGES.get(backend)
    return pkg if pkg and importlib.util.find_spec(pkg) is None else None


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers (the mirrors get the metrics; `step` and `kind` are how they are indexed)."""
    return {
        k: float(v) for k, v in row.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict, last_step: int | None, last_flops: float | None = None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if last_step is None else last_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        # the same metrics against the FLOPs spent: a writer of its own, purged past the checkpoint's FLOPs
        at = None if last_flops is None else int(last_flops) + 1
        self.at_flops = SummaryWriter(log_dir=str(run_dir / "tensorboard" / "at_flops"), purge_step=at)
        if last_step is None:
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        flops = metrics.get("compute/flops")
        if flops is not None:
            for key, value in metrics.items():
                self.at_flops.add_scalar(key, value, int(flops))
            self.at_flops.flush()
        self.writer.flush()

    def image(self, step: int, tag: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.at_flops.close()


class Wandb:
    def __init__(self, run_dir: Path, config: dict, project: str, mode: str):
        import wandb

        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False)
        self.run = wandb.init(
            project=project,
            name=run_dir.name,
            group=run_dir.resolve().parent.name,
            id=run_id,
            dir=str(run_dir),
            config=config,
            mode=mode,
            resume="allow",
            reinit="create_new",
            settings=settings,
        )
        self.run.define_metric("compute/flops")
        self.run.define_metric("*", step_metric="compute/flops")  # charts at equal compute

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def image(self, step: int, tag: str, path: Path) -> None:
        import wandb

        self.run.log({tag: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fans a metric row out to the configured mirrors."""

    def __init__(self, backends: dict[str, object]):
        self.backends = backends
        atexit.register(self.close)

    def log(self, row: dict) -> None:
        metrics, step = scalars(row), int(row.get("step", 0))
        for name, backend in list(self.backends.items()):
            try:
                backend.log(step, metrics)
            except Exception as err:  # noqa: BLE001 - a mirror never stops the run
                print(
                    f"warning: logging.backends: {name} failed ({type(err).__name__}: {err}); dropped", file=sys.stderr
                )
                self.backends.pop(name)

    def image(self, step: int, tag: str, path: Path) -> None:
        """An image file (the evaluation's grid of videos) at `step`, on every mirror that shows images."""
        for name, backend in list(self.backends.items()):
            try:
                backend.image(step, tag, path)
            except Exception as err:  # noqa: BLE001 - a mirror never stops the run
                print(f"warning: logging.backends: {name} image failed ({type(err).__name__}: {err})", file=sys.stderr)

    def close(self) -> None:
        while self.backends:
            _, backend = self.backends.popitem()
            with contextlib.suppress(Exception):  # closing at exit must not raise
                backend.close()


def last_logged(run_dir: Path, key: str = "step") -> float | None:
    """The largest `key` in the run's metrics rows (None: none has it)."""
    path = run_dir / "metrics.jsonl"
    values = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                values.append(float(json.loads(line)[key]))
            except (ValueError, KeyError, TypeError):
                continue
    return max(values) if values else None


def last_logged_step(run_dir: Path) -> int | None:
    step = last_logged(run_dir)
    return None if step is None else int(step)


def open_tracker(run_dir: Path, config: dict, resume: bool) -> Tracker | None:
    """The mirrors named in config['logging'] (None when metrics.jsonl is the only one)."""
    cfg = config.get("logging") or {}
    names = [b for b in cfg.get("backends", ["jsonl"]) if b != "jsonl"]
    if not names:
        return None
    last = last_logged_step(run_dir) if resume else None
    backends: dict[str, object] = {}
    for name in names:
        if name == "tensorboard":
            flops = last_logged(run_dir, "compute/flops") if resume else None
            backends[name] = TensorBoard(run_dir, config, last, flops)
        elif name == "wandb":
            backends[name] = Wandb(run_dir, config, cfg.get("project", "grpo-zoo"), cfg.get("wandb_mode", "offline"))
    return Tracker(backends)
