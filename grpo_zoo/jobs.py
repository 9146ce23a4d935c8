"""What a submitit job runs: one training run, resumable.

`TrainJob(config)` is pickled by submitit and called in the job (in every task of a
multi-GPU job: the torch.distributed environment comes from SLURM). When SLURM preempts
or times the job out, submitit calls `checkpoint()`, which requeues the same job; the
trainer then resumes from the run directory's last checkpoint, losing no completed step.
A run killed any other way (`scontrol requeue`, a node failure) resumes the same way.
"""

from __future__ import annotations

import os
import traceback

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, config: dict, threads: int | None = None, hooks: list | None = None):
        self.config = config
        self.threads = threads
        self.hooks = list(hooks or [])

    def __call__(self) -> dict:
        from grpo_zoo.config import build
        from grpo_zoo.run_config import RunConfig
        from grpo_zoo.runs import RunDir

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        cfg = build(RunConfig, self.config)
        run = RunDir(cfg.run_dir)
        if run.is_complete():
            return run.status()
        from grpo_zoo.trainer import NonFiniteError, Trainer

        try:
            return Trainer(cfg, progress=False, hooks=self.hooks).train()
        except NonFiniteError as err:
            return {"status": "diverged", "reason": str(err)}
        except Exception as err:
            if int(os.environ.get("RANK", "0")) == 0:
                run.path.mkdir(parents=True, exist_ok=True)
                run.set_status(
                    "failed", reason=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-4000:]
                )
            raise
