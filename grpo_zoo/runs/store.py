"""One run = one directory. Analysis reads only this.

    RUN/
      config.yaml        the resolved config (every field)
      meta.json          git commit, package versions, world size, device, host, start time
      metrics.jsonl      one JSON object per row, flushed per row: train rows (kind=train)
                         and eval rows (kind=eval, eval/... keys); every row has `step`
                         and the compute/... counters
      checkpoints/       step-N/ (engine states + trainer state), `latest` names the newest
      eval/              the last evaluation's grid.png and videos
      status.json        running | completed | pruned | diverged | failed | terminated |
                         interrupted, with the reason
      COMPLETED          the completion marker (written last, atomically)
      lock               the writer's job id, host and pid while a trainer holds the directory

A run directory is a small transactional store with one writer (`RunLock`, an flock that a
SIGKILL releases). Everything is written atomically (temporary name, fsync, rename), so a
crash or a kill leaves either the old file or the new one, never half of one. A checkpoint
records how many metrics rows were written before it (and the last evaluation): a resume
keeps exactly those rows and drops the rest, so no row is lost or doubled and a finished
final evaluation is not repeated; with no checkpoint a rerun starts from an empty file. A
newest checkpoint that cannot be read falls back to the newest one that can (one line,
recorded in status.json and meta.json). A metrics file that does not parse is an error
naming file:line (`MetricsError`), never silently shortened; the one repair is a last
line without its newline, the row a kill cut mid-write.

Test hooks (for the kill-point tests): GRPO_ZOO_KILL_AT=POINT[@STEP] SIGKILLs the process
and GRPO_ZOO_STOP_AT=POINT[@STEP] SIGSTOPs it at a named point: `row` (after a metrics row
of that step is written), `checkpoint_write` (a checkpoint staged, not yet published),
`checkpoint_publish` (renamed into place, `latest` not yet updated), `before_complete`
(final evaluation and checkpoint done, status not yet written), `after_complete`
(COMPLETED written, the process not yet ended).
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

from grpo_zoo.errors import ConfigError
from grpo_zoo.runs.files import DamagedState, append_line, atomic_write, read_state, regular_file, say
from grpo_zoo.runs.identity import budget_shrinks, run_difference
from grpo_zoo.runs.metrics import MetricsError, parse_metrics, read_metrics, split_lines
from grpo_zoo.runs.signals import critical, test_point
from grpo_zoo.runs.tracking import open_tracker

CONFIG, META, METRICS, STATUS, COMPLETED = "config.yaml", "meta.json", "metrics.jsonl", "status.json", "COMPLETED"
EXPERIMENT = "experiment.json"
"""In an experiment's folder (RUNS_DIR/<experiment>), beside its runs: written by the sweep, read
by the report (the variants in the experiment's order, the declared baseline)."""


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
        self.rows_written = 0  # rows in metrics.jsonl, as this writer knows it

    # -- writing -----------------------------------------------------------------------
    def start(self, config: dict, world_size: int, device: str, resume: bool, fallback: str | None = None) -> None:
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
        old = read_state(self.path / META, default={}, what="meta.json")  # damaged: one line, before any write
        if resume and old:
            meta["resumes"] = old.get("resumes", []) + [meta["started"]]
            meta["started"] = old.get("started", meta["started"])
        fallbacks = old.get("checkpoint_fallbacks", []) if resume else []
        if fallback:
            fallbacks = fallbacks + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "note": fallback}]
        if fallbacks:
            meta["checkpoint_fallbacks"] = fallbacks
        atomic_write(self.path / META, json.dumps(meta, indent=1))
        (self.path / COMPLETED).unlink(missing_ok=True)
        self.set_status("running", **({"checkpoint_fallback": fallback} if fallback else {}))
        self.tracker = open_tracker(self.path, config, resume)

    def set_status(self, status: str, **info: Any) -> None:
        atomic_write(self.path / STATUS, json.dumps({"status": status, **info}, indent=1))

    def check_config(self, config: dict) -> None:
        """ConfigError when the directory holds another run than `config` (run_difference's rule)."""
        self.check_state()
        if not regular_file(self.path / CONFIG, "config.yaml"):
            return
        old = self.config()
        what = "a completed run" if self.is_complete() else "a diverged run" if self.is_finished() else "a run"
        diff = run_difference(old, config)
        if diff:
            raise ConfigError(
                f"run_dir: {self.path} holds {what} with another config ({diff}); "
                "resume it with that config or choose a new run_dir"
            )
        shrinks = budget_shrinks(old, config) if self.is_finished() else None
        if shrinks:
            raise ConfigError(
                f"run_dir: {self.path} holds {what} that ran to a larger budget ({shrinks}); "
                "raise the budget to extend it or choose a new run_dir"
            )

    def resume_metrics(self, keep_rows: int | None, after_step: int, checkpoint: str | None) -> None:
        """Keep the rows written before the resumed checkpoint, drop the rest (atomically).

        `keep_rows`: how many rows the checkpoint recorded (None for an older checkpoint:
        then rows up to `after_step`). No checkpoint: an empty file (nothing stale kept).
        A row before the checkpoint that does not parse, or fewer rows than it recorded,
        is a MetricsError naming file:line: the file is never silently shortened."""
        path = self.path / METRICS
        lines, tail = split_lines(path)
        if checkpoint is None:
            keep: list[bytes] = []
            if lines or tail:
                say(
                    f"note: run_dir: no checkpoint to resume from; starting afresh, dropping {len(lines) + bool(tail)} "
                    "rows of an earlier attempt"
                )
        elif keep_rows is not None:
            if len(lines) < keep_rows:
                raise MetricsError(
                    f"{path}:{len(lines) + 1}: the file ends after {len(lines)} rows but checkpoint {checkpoint} "
                    f"was taken after row {keep_rows}; it was cut (restore it, or delete the run directory)"
                )
            keep = lines[:keep_rows]
            parse_metrics(path, keep)
        else:
            rows = parse_metrics(path, lines)
            keep = [line for line, row in zip(lines, rows) if row["step"] <= after_step]
        dropped = len(lines) - len(keep) + bool(tail)
        if checkpoint is not None:
            cut = ", the last one cut off mid-write" if tail else ""
            say(
                f"note: run_dir: resuming from checkpoint {checkpoint}; "
                f"{len(keep)} rows kept, {dropped} past it dropped{cut}"
            )
        if dropped or path.exists():
            atomic_write(path, "".join(line.decode() + "\n" for line in keep))
        self.rows_written = len(keep)

    def log(self, row: dict) -> None:
        append_line(self.path / METRICS, json.dumps(row, allow_nan=True))  # whole, or not at all (a full disk)
        self.rows_written += 1
        if self.tracker:
            self.tracker.log(row)
        test_point("row", row.get("step"))

    def complete(self, summary: dict, status: str = "completed") -> None:
        """Mark the run finished (`completed`, or `pruned` when a hook ended it early)."""
        test_point("before_complete")
        with critical():
            self.set_status(status, **summary)
            atomic_write(self.path / COMPLETED, json.dumps(summary, indent=1))
        if self.tracker:
            self.tracker.close()
        test_point("after_complete")

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def staging(self, step: int) -> Path:
        return self.checkpoints / f".staging-step-{step}"

    def _steps(self) -> list[int]:
        return sorted(
            int(p.name.split("-")[1])
            for p in self.checkpoints.glob("step-*")
            if p.is_dir() and p.name.split("-")[1].isdigit()
        )

    def commit_checkpoint(self, step: int, keep: int = 2) -> Path:
        """Publish a staged checkpoint: rename it, then point `latest` at it, then prune."""
        test_point("checkpoint_write", step)
        final = self.checkpoints / f"step-{step}"
        with critical():
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.staging(step), final)
            test_point("checkpoint_publish", step)
            atomic_write(self.checkpoints / "latest", final.name)
            for old in self._steps()[:-keep]:
                shutil.rmtree(self.checkpoints / f"step-{old}", ignore_errors=True)
        return final

    def checkpoint_candidates(self) -> tuple[list[Path], str | None]:
        """Checkpoints to try, newest first, and the newest one's name (even if it is gone).

        The newest is the highest step-N directory or the one `latest` names, whichever is
        higher (a kill between the rename and the pointer leaves the directory newer)."""
        steps = self._steps()
        newest = f"step-{steps[-1]}" if steps else None
        pointer = self.checkpoints / "latest"
        if regular_file(pointer, "checkpoint pointer"):
            named = pointer.read_text(errors="replace").strip()
            tail = named.split("-")[-1]
            if tail.isdigit() and (newest is None or int(tail) > int(newest.split("-")[1])):
                newest = named
        return [self.checkpoints / f"step-{s}" for s in reversed(steps)], newest

    def latest_checkpoint(self) -> Path | None:
        cands, _ = self.checkpoint_candidates()
        return cands[0] if cands else None

    # -- reading -------------------------------------------------------------------------
    def is_complete(self) -> bool:
        return (self.path / COMPLETED).exists()

    def is_finished(self) -> bool:
        """Completed (or pruned) or diverged: the directory holds the run's outcome."""
        return self.is_complete() or self.status().get("status") == "diverged"

    def rows(self) -> list[dict]:
        """Every row (MetricsError naming file:line if one does not parse; a last row cut
        off mid-write, by a writer that is still going or by a kill, is left out)."""
        rows = read_metrics(self.path / METRICS, torn_tail_ok=not self.is_complete())[0]
        if not rows and self.is_complete():
            raise MetricsError(f"{self.path / METRICS}:1: empty, but the run completed; the metrics file is damaged")
        return rows

    def config(self) -> dict:
        """The run's resolved config; DamagedState if it is not a YAML mapping whose sections
        are mappings (the file is left as it was)."""
        return read_state(self.path / CONFIG, "yaml", default={}, what="config.yaml", check=_config_problem)

    def status(self) -> dict:
        return read_state(self.path / STATUS, default={"status": "missing"}, what="status.json", check=_status_problem)

    def meta(self) -> dict:
        return read_state(self.path / META, default={}, what="meta.json")

    def check_state(self) -> None:
        """DamagedState naming the first file of the directory that is not what it should be
        (config, status, meta, COMPLETED, the checkpoints folder and its pointer, the lock),
        before anything in it is read for a resume or written."""
        self.config()
        self.status()
        self.meta()
        if self.is_complete():
            read_state(self.path / COMPLETED, what="completion marker COMPLETED")
        if self.checkpoints.exists() and not self.checkpoints.is_dir():
            raise DamagedState(
                f"{self.checkpoints}: a file where the checkpoints folder belongs; it was left as it was (remove it)"
            )
        regular_file(self.checkpoints / "latest", "checkpoint pointer")
        regular_file(self.path / METRICS, "metrics file")
        regular_file(self.path / "lock", "lock file")


def read_experiment(root: str | Path) -> dict:
    """The experiment record a sweep wrote in `root` ({} where there is none): `variants` (in
    order) and `baseline` (a name or null); DamagedState if it is not that."""
    return read_state(Path(root) / EXPERIMENT, default={}, what="experiment record", check=_experiment_problem)


def _experiment_problem(data: dict) -> str | None:
    variants = data.get("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        return "`variants` is not a list of names (rerun the sweep, or delete it and pass --baseline)"
    if not isinstance(data.get("baseline"), str | None):
        return "`baseline` is not a name or null (rerun the sweep, or delete it and pass --baseline)"
    target = data.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float) or target != target):
        return "`target` is not a number or null (rerun the sweep, or delete it and pass --target)"
    if not isinstance(data.get("metric"), str | None):
        return "`metric` is not an entry name or null (rerun the sweep)"
    return None


SECTIONS = ("model", "data", "sampling", "algorithm", "optim", "engine", "budget", "reward", "logging")
"""The sections of a run config that are mappings (a stored config with one of them as a
number or a list is damaged)."""


def _config_problem(cfg: dict) -> str | None:
    for key in SECTIONS:
        if key in cfg and not isinstance(cfg[key], dict | None):
            return f"`{key}` is {type(cfg[key]).__name__} {cfg[key]!r}, expected a mapping"
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"`seed` is {seed!r}, expected an integer"
    budget = cfg.get("budget") or {}
    bad = next((k for k, v in budget.items() if v is not None and not isinstance(v, int | float)), None)
    if bad is not None:
        return f"`budget.{bad}` is {budget[bad]!r}, expected a number or null"
    name = (cfg.get("algorithm") or {}).get("name")
    if name is not None and not isinstance(name, str):
        return f"`algorithm.name` is {name!r}, expected a name"
    return None


def _status_problem(status: dict) -> str | None:
    if "status" in status and not isinstance(status["status"], str):
        return f"`status` is {status['status']!r}, expected a word such as completed"
    return None
