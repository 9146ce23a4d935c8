"""The rollout's micro-batch a run uses: sampling.rollout_micro_batch, or (null) the whole batch,
except a wan run on a GPU, which takes the largest that fits its card by the memory model."""

from __future__ import annotations

import torch


def rollout_micro_batch(cfg, world: int, device: torch.device) -> int | None:
    """Trajectories per transformer forward in a rollout (None: all of them at once)."""
    if cfg.sampling.rollout_micro_batch is not None:
        return cfg.sampling.rollout_micro_batch
    if not cfg.model.is_wan or torch.device(device).type != "cuda":
        return None
    from grpo_zoo.cost.memory import micro_batch, usable_bytes

    total = torch.cuda.get_device_properties(device).total_memory
    return micro_batch(cfg, world, usable_bytes(total))
