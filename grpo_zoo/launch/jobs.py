"""What a submitit job runs: one training run, resumable; and what the scheduler says of a job.

`TrainJob(config)` is pickled by submitit and called in the job (in every task of a
multi-GPU job: the torch.distributed environment comes from SLURM). When SLURM preempts
or times the job out, submitit calls `checkpoint()`, which requeues the same job; the
trainer then resumes from the run directory's last checkpoint, losing no completed step.
A run killed any other way (`scontrol requeue`, a node failure) resumes the same way.

`job_state(executor, job_id)` asks the scheduler itself (squeue, then scontrol: no SLURM
accounting needed) and `is_active` says whether that state still holds the job (queued,
running, or held for a requeue): a run whose job is active has a writer, or will have one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import submitit

ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "PREEMPTED",
    "SIGNALING",
    "STAGE_OUT",
    "SPECIAL_EXIT",
    "RESV_DEL_HOLD",
    "STOPPED",
}
"""SLURM job states in which the job still runs or will run again (see squeue(1), JOB STATE CODES)."""


def _slurm(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def job_state(executor: str, job_id: str | None) -> str | None:
    """The scheduler's state of a job (PENDING, RUNNING, CANCELLED, ...), or None once it no
    longer lists the job (or for the debug executor, which has no jobs)."""
    if not job_id:
        return None
    job_id = str(job_id)
    if executor == "slurm":
        listed = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if listed and listed.strip():
            return listed.split()[0].strip().upper()
        shown = _slurm(["scontrol", "-o", "show", "job", job_id])  # ended jobs stay MinJobAge seconds
        for word in (shown or "").split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1].upper()
        return None
    if executor == "local":
        return "RUNNING" if _local_alive(job_id) else None
    return None


def is_active(state: str | None) -> bool:
    return state is not None and state.rstrip("+") in ACTIVE_STATES


def _local_alive(job_id: str) -> bool:
    """A local submitit job (or a tune driver) is a process on this host: alive, not a zombie, ours."""
    try:
        pid = int(job_id)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError, OverflowError):
        return False
    if pid == os.getpid():
        return True  # this very process (a driver embedded in another program)
    proc = Path(f"/proc/{pid}")
    try:
        if proc.joinpath("stat").read_text().split(") ")[-1].startswith("Z"):
            return False
        command = proc.joinpath("cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: the signal said it lives
    return b"submitit" in command or b"grpo_zoo" in command  # not another process that reused the pid


DEBUGGER = "GRPO_ZOO_PDB"
"""Set (to anything) to let a failing job of the debug executor open submitit's post-mortem pdb."""


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, config: dict, threads: int | None = None, hooks: list | None = None):
        self.config = config
        self.threads = threads
        self.hooks = list(hooks or [])

    def __call__(self) -> dict:
        from grpo_zoo.config.run import RunConfig
        from grpo_zoo.config.schema import build, to_dict
        from grpo_zoo.runs import RunBusy, RunDir

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        cfg = build(RunConfig, self.config)
        run = RunDir(cfg.run_dir)
        if run.is_complete() and run.config().get("budget") == to_dict(cfg)["budget"]:
            return run.status()  # done; a raised budget extends it below
        from grpo_zoo.training.trainer import NonFiniteError, Trainer

        try:
            return Trainer(cfg, progress=False, hooks=self.hooks).train()
        except NonFiniteError as err:
            return {"status": "diverged", "reason": str(err)}
        except RunBusy:  # another live trainer writes this directory: its status is its own
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            if int(os.environ.get("RANK", "0")) == 0:
                run.path.mkdir(parents=True, exist_ok=True)
                run.set_status("failed", reason=reason, traceback=traceback.format_exc()[-4000:])
            if "SUBMITIT_DEBUG_JOB_ID" in os.environ and not os.environ.get(DEBUGGER):
                # the debug executor would open pdb on an escaping error: a failed run is its status
                print(f"{cfg.run_dir}: failed: {reason}", file=sys.stderr, flush=True)
                return {"status": "failed", "reason": reason}
            raise
