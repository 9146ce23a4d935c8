"""One DeepSpeed engine for every algorithm: distributed setup, backward, step, checkpoints.

World size 1 needs no launcher (the rendezvous variables are set here); N processes come
from torchrun, the deepspeed launcher, or SLURM's srun (SLURM_PROCID etc. are mapped to
RANK/WORLD_SIZE/LOCAL_RANK). CPU uses gloo, GPUs nccl. ZeRO stage 0-3, fp32 or bf16, a
torch AdamW as DeepSpeed's client optimizer, gradient clipping by DeepSpeed.

The engine knows nothing of algorithms: it steps whatever loss the trainer hands it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from grpo_zoo.config.run import EngineConfig, OptimConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RENDEZVOUS_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def setup_rendezvous() -> list[str]:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from SLURM or for one process;
    returns the keys it set (Engine.close removes them, so that a process that trained in
    place does not hand its rendezvous to the subprocesses it starts later)."""
    env = os.environ
    before = {k for k in RENDEZVOUS_KEYS if k in env}
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            import subprocess

            nodes = subprocess.run(
                ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
            )
            env["MASTER_ADDR"] = nodes.stdout.split()[0]
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    return [k for k in RENDEZVOUS_KEYS if k in env and k not in before]


def local_rank() -> int:
    """This process's rank on its node, as setup_rendezvous sets LOCAL_RANK (it need not have run)."""
    env = os.environ
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"])
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env.get("SLURM_LOCALID", "0"))
    return 0


def local_device(cfg: EngineConfig) -> torch.device:
    """The device this process trains on; known before its Engine exists, so weights load straight onto it."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def pick_device(cfg: EngineConfig) -> torch.device:
    device = local_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def skip_shm_op() -> None:
    """Spare DeepSpeed's shared-memory all-reduce op on CPU: a C++ build at the first start of
    every environment (one to two and a half minutes on 2 cores) that only its
    `inference_all_reduce` uses (deepspeed/comm/torch.py); training over gloo never calls it,
    and without the op that call falls back to the process group's all_reduce anyway."""
    import importlib

    backend = importlib.import_module("deepspeed.comm.torch")  # the submodule (`deepspeed.comm.torch` is torch)
    backend.build_shm_op = lambda: None


def teardown() -> None:
    """Destroy this process's process group, if any, through DeepSpeed's own teardown when it
    made one (it then also drops the groups it cached)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    import sys

    comm = sys.modules.get("deepspeed.comm.comm")
    if comm is not None and comm.cdb is not None:
        comm.destroy_process_group()
    else:
        dist.destroy_process_group()


REDUCE_BUCKET = 500_000_000
"""DeepSpeed's default reduce_bucket_size (elements): ZeRO allocates a gradient buffer this big."""


def reduce_bucket_elements(trainable: int) -> int:
    """ZeRO's reduce bucket, sized to the trainable parameters: a LoRA of 12-52M parameters needs
    no 5e8-element (1 GB in bf16) buffer. Never below the largest parameter, which the whole
    trainable count bounds; at most DeepSpeed's default."""
    return int(min(REDUCE_BUCKET, max(trainable, 1)))


class Engine:
    """DeepSpeed around the trainable module, plus the collectives the trainer needs."""

    def __init__(self, module: torch.nn.Module, cfg: EngineConfig, optim: OptimConfig):
        self.rendezvous_keys = setup_rendezvous()
        self.device = pick_device(cfg)
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if self.device.type == "cuda" else "gloo")
        if backend == "gloo":
            skip_shm_op()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.max_grad_norm,
            "zero_optimization": {
                "stage": cfg.zero_stage,
                "reduce_bucket_size": reduce_bucket_elements(sum(p.numel() for p in params)),
            },
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": cfg.precision == "bf16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        module.to(self.device)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        self.zero_stage = cfg.zero_stage
        self.frozen_base = any(not p.requires_grad for p in module.parameters())  # LoRA: the base never changes

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    def __call__(self, *args, **kwargs):
        return self.ds(*args, **kwargs)

    # -- the update ------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Accumulate gradients of `loss` (already divided by the minibatch size)."""
        self.ds.set_gradient_accumulation_boundary(last_micro_batch)
        self.ds.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Optimizer step at the end of a minibatch; returns the pre-clip gradient norm."""
        own = None
        if self.zero_stage == 0:  # DeepSpeed clips stage-0 gradients without keeping the norm
            grads = [p.grad.detach().float() for p in self.ds.module.parameters() if p.grad is not None]
            own = (
                float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
                if grads
                else 0.0
            )
        self.ds.step()
        norm = self.ds.get_global_grad_norm() if own is None else own
        return float(norm) if norm is not None else float("nan")

    # -- collectives -------------------------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone().to(self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from every rank along dim 0 (rank order)."""
        if self.world_size == 1:
            return t.detach().clone()
        t = t.detach().contiguous().to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return torch.cat(out).cpu()

    def broadcast_float(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gathered(self, params: list[torch.nn.Parameter], modify: bool = False):
        """A context in which `params` are whole on this rank: under ZeRO-3 DeepSpeed's own
        GatheredParameters (with `modify`, rank 0's writes go back into every partition; all
        ranks write the same values here), else nothing to do."""
        import contextlib

        import deepspeed

        if self.zero_stage != 3:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)

    def param_checksum(self) -> float:
        """A number that differs when any trainable weight differs (to compare ranks)."""
        import contextlib

        import deepspeed

        params = [p for p in self.module.parameters() if p.requires_grad]
        total = torch.zeros((), dtype=torch.float64)
        gather = deepspeed.zero.GatheredParameters(params) if self.zero_stage == 3 else contextlib.nullcontext()
        with torch.no_grad(), gather:
            for i, p in enumerate(params):
                w = p.detach().double().flatten().cpu()
                total += (w * torch.linspace(1, 2, len(w), dtype=torch.float64)).sum() * (i + 1)
        return float(total)

    # -- checkpoints -------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Model and optimizer states (every rank writes its shard) under `directory`. With a frozen
        base (LoRA) only the trainable weights: the base is the model directory's, loaded again at
        resume (0.1 GB per checkpoint instead of 28.6 GB at 14B)."""
        self.ds.save_checkpoint(
            str(directory), tag="engine", save_latest=False, exclude_frozen_parameters=self.frozen_base
        )

    def load(self, directory: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(directory), tag="engine", load_module_strict=False)
        if path is None:
            raise RuntimeError(f"no engine checkpoint under {directory}")

    def close(self) -> None:
        """Tear the process group down (a must at exit), and the rendezvous variables set for it.

        Through DeepSpeed's own teardown, which also drops the groups it cached: a later Engine
        in the same process (the debug executor's next job, the tests) starts clean instead of
        meeting a stale group ("Group ... is not registered")."""
        teardown()
        for key in getattr(self, "rendezvous_keys", []):
            os.environ.pop(key, None)
