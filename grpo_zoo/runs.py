"""One run = one directory. Analysis reads only this.

    RUN/
      config.yaml        the resolved config (every field)
      meta.json          git commit, package versions, world size, device, host, start time
      metrics.jsonl      one JSON object per row, flushed per row: train rows (kind=train)
                         and eval rows (kind=eval, eval/... keys); every row has `step`
                         and the compute/... counters
      checkpoints/       step-N/ (engine states + trainer state), `latest` names the newest
      eval/              the last evaluation's grid.png and videos
      status.json        running | completed | pruned | diverged | failed, with the reason
      COMPLETED          the completion marker (written last, atomically)

Everything is written atomically (temporary name, then rename), so a crash or a kill
leaves either the old file or the new one, never half of one; a killed run loses at most
the row being written.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from grpo_zoo.tracking import open_tracker

CONFIG, META, METRICS, STATUS, COMPLETED = "config.yaml", "meta.json", "metrics.jsonl", "status.json", "COMPLETED"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "diffusers", "deepspeed", "peft", "accelerate", "grpo-zoo"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


class RunDir:
    tracker = None  # the TensorBoard / W&B mirrors of logging.backends, opened by start()

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- writing -----------------------------------------------------------------------
    def start(self, config: dict, world_size: int, device: str, resume: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        header = f"# python -m grpo_zoo.train {self.path / CONFIG}\n"
        atomic_write(self.path / CONFIG, header + yaml.safe_dump(config, sort_keys=False))
        meta = {
            "git_commit": git_commit(),
            "versions": package_versions(),
            "world_size": world_size,
            "device": device,
            "host": platform.node(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if resume and (self.path / META).exists():
            old = json.loads((self.path / META).read_text())
            meta["resumes"] = old.get("resumes", []) + [meta["started"]]
            meta["started"] = old.get("started", meta["started"])
        atomic_write(self.path / META, json.dumps(meta, indent=1))
        (self.path / COMPLETED).unlink(missing_ok=True)
        self.set_status("running")
        self.tracker = open_tracker(self.path, config, resume)

    def set_status(self, status: str, **info: Any) -> None:
        atomic_write(self.path / STATUS, json.dumps({"status": status, **info}, indent=1))

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows past `after_step` (a resumed run rewrites them) and any torn last line."""
        path = self.path / METRICS
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the row a kill interrupted
            if row.get("step", 0) <= after_step:
                keep.append(line)
        atomic_write(path, "".join(line + "\n" for line in keep))

    def log(self, row: dict) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tracker:
            self.tracker.log(row)

    def complete(self, summary: dict, status: str = "completed") -> None:
        """Mark the run finished (`completed`, or `pruned` when a hook ended it early)."""
        self.set_status(status, **summary)
        atomic_write(self.path / COMPLETED, json.dumps(summary, indent=1))
        if self.tracker:
            self.tracker.close()

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def staging(self, step: int) -> Path:
        return self.checkpoints / f".staging-step-{step}"

    def commit_checkpoint(self, step: int, keep: int = 2) -> Path:
        """Publish a staged checkpoint: rename it, then point `latest` at it, then prune."""
        final = self.checkpoints / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.staging(step), final)
        atomic_write(self.checkpoints / "latest", final.name)
        steps = sorted(
            (int(p.name.split("-")[1]) for p in self.checkpoints.glob("step-*") if p.is_dir()),
        )
        for old in steps[:-keep]:
            shutil.rmtree(self.checkpoints / f"step-{old}", ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "latest"
        if not pointer.exists():
            return None
        path = self.checkpoints / pointer.read_text().strip()
        return path if path.is_dir() else None

    # -- reading -------------------------------------------------------------------------
    def is_complete(self) -> bool:
        return (self.path / COMPLETED).exists()

    def rows(self) -> list[dict]:
        path = self.path / METRICS
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def config(self) -> dict:
        return yaml.safe_load((self.path / CONFIG).read_text())

    def status(self) -> dict:
        path = self.path / STATUS
        return json.loads(path.read_text()) if path.exists() else {"status": "missing"}
