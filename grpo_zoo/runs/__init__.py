"""Run directories: one run = one directory, a transactional store with one writer.

store.py     RunDir: config, meta, metrics rows, status, checkpoints' bookkeeping, COMPLETED
metrics.py   metrics.jsonl rows, parsed with file:line errors
identity.py  the one "same run" rule (run_difference, budget_shrinks)
lock.py      RunLock: one writer, an flock a SIGKILL releases
signals.py   TERM/INT as `Terminated`, `critical` writes, the kill-point test hooks
files.py     atomic_write, say
tracking.py  mirrors of the rows (TensorBoard, W&B)
media.py     video grids and files
"""

from grpo_zoo.runs.files import atomic_write, say
from grpo_zoo.runs.identity import ADDRESS, budget_shrinks, config_difference, run_difference, run_identity
from grpo_zoo.runs.lock import LOCK, RunBusy, RunLock
from grpo_zoo.runs.metrics import MetricsError, parse_metrics, read_metrics, split_lines
from grpo_zoo.runs.signals import Terminated, critical, exit_signals, test_point
from grpo_zoo.runs.store import (
    COMPLETED,
    CONFIG,
    EXPERIMENT,
    META,
    METRICS,
    STATUS,
    RunDir,
    git_commit,
    package_versions,
    read_experiment,
)

__all__ = [
    "ADDRESS", "COMPLETED", "CONFIG", "EXPERIMENT", "LOCK", "META", "METRICS", "STATUS", "MetricsError", "RunBusy",
    "RunDir", "RunLock", "Terminated", "atomic_write", "budget_shrinks", "config_difference", "critical",
    "exit_signals", "git_commit", "package_versions", "parse_metrics", "read_metrics", "run_difference",
    "read_experiment", "run_identity", "say", "split_lines", "test_point",
]  # fmt: skip
