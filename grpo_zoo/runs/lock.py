"""One writer per run directory: an flock on RUN/lock that a SIGKILL releases."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import weakref
from pathlib import Path

from grpo_zoo.errors import ConfigError
from grpo_zoo.runs.files import regular_file, say

LOCK = "lock"


class RunBusy(ConfigError):
    """Another live process holds the run directory's lock (it must not be written to)."""


def _holder_text(raw: str) -> str:
    try:
        h = json.loads(raw)
        job = f"job {h['job_id']}, " if h.get("job_id") else ""
        return f"{job}host {h.get('host')}, pid {h.get('pid')}"
    except (json.JSONDecodeError, TypeError, AttributeError):
        return "another process"


class RunLock:
    """One writer per run directory: an exclusive flock on RUN/lock, which holds the writer's
    job id (SLURM_JOB_ID), host and pid. The kernel drops the flock when its process dies
    (SIGKILL included), so a lock left by a dead writer is taken over, said in one line."""

    def __init__(
        self,
        run_dir: str | Path,
        name: str = LOCK,
        what: str = "run_dir",
        rule: str = "one writer per run directory (wait for it to end, stop it, or choose another run_dir)",
    ):
        self.path = Path(run_dir) / name
        self.what, self.rule = what, rule
        self._release: weakref.finalize | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        regular_file(self.path, "lock file")  # a folder or a FIFO there: one line, never opened
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise RunBusy(f"{self.what}: {self.path.parent} is being written by {holder}; {self.rule}") from None
        old = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if old:
            say(f"note: {self.what}: took over the lock of {_holder_text(old)}, which ended without releasing it")
        me = {"job_id": os.environ.get("SLURM_JOB_ID"), "host": platform.node(), "pid": os.getpid()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        # released by release(), when this object is collected (a trainer that failed to
        # build) or at exit; only a SIGKILL leaves the file's content behind (a stale lock)
        self._release = weakref.finalize(self, _unlock, fd)
        return self

    def release(self) -> None:
        if self._release is not None:
            self._release()


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor drops the flock
