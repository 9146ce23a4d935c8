"""Seeds and process identity: every random draw of a run comes from a named generator.

`generator(seed, step, rank, purpose)` is seeded from a hash of its parts, so a resumed
run draws exactly what an uninterrupted one would, whatever ran before it.
"""

from __future__ import annotations

import hashlib
import os

import torch


def seed_of(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def rank_from_env() -> int:
    """This process's rank before torch.distributed is up: RANK (torchrun, deepspeed), else
    SLURM_PROCID in a multi-task srun job, else 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def world_size_from_env() -> int:
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if key in os.environ:
            return int(os.environ[key])
    return 1
