"""Per-GPU memory of a Wan run before it runs: what `python -m grpo_zoo.estimate` prints.

Two kinds of memory make the peak:

- **held** for the whole run, counted from parameter numbers: the transformer's weights (bf16
  under bf16 training; ZeRO-3 shards them), the trainable weights' optimizer states (an fp32
  master copy, AdamW's two moments and fp32 gradients, sharded by ZeRO >= 1 or 2), DeepSpeed's
  contiguous gradient bucket (ZeRO >= 1: sized to the trainable weights, at most 5e8 elements:
  grpo_zoo/training/engine.py), the EMA copy of the trainable weights, the frozen reference for
  the KL when training fully, and the VAE (in model.vae_dtype). The text encoder is not held:
  the fixed prompt set is encoded once at the start and the encoder freed (a phase below);
- **transient**, the largest of the phases of an iteration (grpo_zoo/cost/phases.py): the
  rollout forward at its micro-batch, the update, the VAE decode, the prompt encoding, loading.

The rollout's micro-batch (sampling.rollout_micro_batch; null on a GPU: the largest whose
rollout fits the card, `auto_micro_batch`) is chosen here, so a run and its estimate agree.
What is not counted: the CUDA context, NCCL buffers and the caching allocator's
fragmentation, for which the verdict keeps a reserve (RESERVE_GB plus RESERVE_FRACTION of
the card).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace

import torch

from grpo_zoo.cost.components import configs, count, dtype_bytes
from grpo_zoo.cost.phases import UPDATE, chunk_samples, local_samples, phase_bytes, rollout_bytes

GB = 1e9
STAGE3_MAX_LIVE = 1e9
"""DeepSpeed's default stage3_max_live_parameters (elements whole at once under ZeRO-3)."""
GPU_MEMORY_GB = {"h100": 80, "h200": 141, "h800": 80, "a100": 80, "a800": 80, "l40s": 48, "b200": 192}
RESERVE_GB = 2.0
RESERVE_FRACTION = 0.05


@dataclass
class Memory:
    """Bytes per GPU by component (held) and by phase (transient); peak = held + max(phase)."""

    held: dict[str, float]
    phases: dict[str, float]
    micro_batch: int = 0
    """Trajectories per rollout forward the phases were priced at."""

    @property
    def peak(self) -> float:
        return sum(self.held.values()) + max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


def usable_bytes(total: float) -> float:
    """What the verdict lets a card of `total` bytes hold."""
    return total * (1 - RESERVE_FRACTION) - RESERVE_GB * GB


def usable_gb(gpu: str) -> float:
    return usable_bytes(GPU_MEMORY_GB[gpu] * GB) / GB


# -- the components ---------------------------------------------------------------------------
_PARAMS: dict[tuple, tuple[int, int, int]] = {}
"""(frozen, trainable, VAE) parameter numbers by the model's configs and LoRA settings."""


def held_bytes(cfg, world: int) -> dict[str, float]:
    """Memory held for the whole run, per GPU."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from grpo_zoo.models.lora import apply_lora
    from grpo_zoo.training.engine import reduce_bucket_elements

    tconf, vconf, _ = configs(cfg.model)
    key = (json.dumps([tconf, vconf], sort_keys=True), cfg.model.lora_rank, tuple(cfg.model.lora_targets))
    if key not in _PARAMS:  # counted once per process (the estimate prices many variants of one model)
        with torch.device("meta"):
            net = apply_lora(WanTransformer3DModel.from_config(tconf), cfg.model)
            _PARAMS[key] = count(net, False), count(net, True), count(AutoencoderKLWan.from_config(vconf))
    base, train, vae = _PARAMS[key]
    # two experts of one shape (wan2.2-a14b): both held, the ones in model.experts trained
    n_exp = 2 if cfg.model.backend == "wan2.2-a14b" else 1
    n_train = len(cfg.model.experts) if n_exp == 2 else 1
    if cfg.model.lora_rank == 0:  # full fine-tuning: a frozen expert's weights are all base
        base, train = train * (n_exp - n_train), train * n_train
    else:
        base, train = base * n_exp, train * n_train
    z, bf16 = cfg.engine.zero_stage, cfg.engine.precision == "bf16"
    w = 2 if bf16 else 4
    shard_w = world if z == 3 else 1
    opt_shard = world if z >= 1 else 1
    grad_shard = world if z >= 2 else 1
    # bf16: fp32 master + 2 fp32 moments (+ fp32 gradient partition); fp32: 2 moments, the weights are the master
    states = (12 if bf16 else 8) * train / opt_shard
    grads = (4 * train / grad_shard) if bf16 else 0.0
    bucket = reduce_bucket_elements(train) * (2 if (z >= 2 and bf16) else 4)
    return {
        "transformer weights": w * base / shard_w,
        "trainable weights": w * train / shard_w,
        "optimizer states": states + grads,
        "EMA": w * train if cfg.optim.ema_decay > 0 else 0.0,
        # full fine-tuning with a KL keeps a frozen copy, in the dtype the transformer loads in
        "reference model": w * (train + base) if (cfg.model.lora_rank == 0 and cfg.optim.beta > 0) else 0.0,
        # DeepSpeed's contiguous gradient bucket (reduce_bucket_size elements, allocated whole)
        "ZeRO gradient bucket": bucket if z >= 1 else 0.0,
        "VAE": dtype_bytes(cfg.model.vae_dtype) * vae,
        # ZeRO-3 gathers each layer's weights for its forward and backward: at most DeepSpeed's
        # stage3_max_live_parameters (1e9 elements, its default) are whole at once
        "ZeRO-3 gathered weights": w * min(STAGE3_MAX_LIVE, base + train) if z == 3 else 0.0,
    }


def auto_micro_batch(cfg, world: int, limit: float, held: dict[str, float] | None = None) -> int:
    """The largest number of trajectories per rollout forward whose rollout phase fits `limit`
    bytes beside what is held (at least 1). The forward's activations grow linearly with its
    rows: priced at 1 and 2, extrapolated, then checked at the answer. At most a chunk's rows."""
    local = chunk_samples(cfg, world)
    room = limit - sum((held if held is not None else held_bytes(cfg, world)).values())
    if local == 1 or rollout_bytes(cfg, world, local) <= room:
        return local
    one, two = rollout_bytes(cfg, world, 1), rollout_bytes(cfg, world, 2)
    m = max(1, min(local, 1 + int((room - one) // max(two - one, 1.0))))
    while m > 1 and rollout_bytes(cfg, world, m) > room:
        m -= 1
    return m


def micro_batch(cfg, world: int, limit: float | None, held: dict[str, float] | None = None) -> int:
    """sampling.rollout_micro_batch, else the auto choice for a card of `limit` usable bytes
    (None: no card, the whole batch)."""
    if cfg.sampling.rollout_micro_batch is not None:
        return min(cfg.sampling.rollout_micro_batch, chunk_samples(cfg, world))
    if limit is None:
        return chunk_samples(cfg, world)
    return auto_micro_batch(cfg, world, limit, held)


def estimate_memory(cfg, world: int, limit: float | None = None) -> Memory:
    """Held and phases per GPU; the rollout at the micro-batch a card of `limit` usable bytes takes."""
    held = held_bytes(cfg, world)
    m = micro_batch(cfg, world, limit, held)
    return Memory(held, phase_bytes(cfg, world, m), m)


# -- what would make it fit --------------------------------------------------------------------
def _with(cfg, **changes):
    c = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        setattr(c, section, replace(getattr(c, section), **{field: value}))
    return c


def fixes(cfg, world: int, gpu: str, mem: Memory) -> list[str]:
    """Changes (one at a time) that bring the per-GPU peak under the GPU's usable memory."""
    limit = usable_gb(gpu) * GB
    out = []
    if not cfg.model.gradient_checkpointing:
        m = estimate_memory(_with(cfg, model__gradient_checkpointing=True), world, limit)
        out.append(("model.gradient_checkpointing=true", m.peak))
    if cfg.engine.zero_stage < 3:
        m = Memory({**mem.held}, mem.phases)
        shardable = ("transformer weights", "trainable weights", "optimizer states")
        for k in shardable:
            m.held[k] = mem.held[k] if k == "optimizer states" and cfg.engine.zero_stage >= 2 else mem.held[k] / world
        whole = mem.held["transformer weights"] + mem.held["trainable weights"]
        m.held["ZeRO-3 gathered weights"] = min(STAGE3_MAX_LIVE * (2 if cfg.engine.precision == "bf16" else 4), whole)
        out.append(("engine.zero_stage=3 (the frozen base sharded over the GPUs)", m.peak))
    offload = mem.peak - mem.held["optimizer states"]
    out.append(("optimizer states offloaded to CPU (DeepSpeed offload_optimizer; not an engine option yet)", offload))
    shorter = [f for f in (65, 49, 33, 17) if f < cfg.model.frames]
    # memory grows with the frames: when the fewest do not fit, none do (the longer ones are not priced)
    if shorter and estimate_memory(_with(cfg, model__frames=shorter[-1]), world, limit).peak <= limit:
        for frames in shorter:
            m = estimate_memory(_with(cfg, model__frames=frames), world, limit)
            if m.peak <= limit:
                out.append((f"model.frames={frames} (the largest of 65/49/33/17 that fits)", m.peak))
                break
    if mem.peak_phase == UPDATE:  # the sequence split over the node's GPUs shares the activations
        rest = max(v for k, v in mem.phases.items() if k != UPDATE)
        cp = sum(mem.held.values()) + max(rest, mem.phases[UPDATE] / world)
        what = f"the update's sequence split over the {world} GPUs (context parallelism; not an engine option yet)"
        out.append((what, cp))
    sharded = mem.held["optimizer states"] + (mem.held["transformer weights"] if cfg.engine.zero_stage == 3 else 0)
    fixed = mem.peak - sharded
    if fixed < limit and sharded > 0:
        need = next((n for n in range(world + 1, 1025) if fixed + sharded * world / n <= limit), None)
        if need:
            out.append((f"{need} GPUs (ZeRO shards only the optimizer states)", fixed + sharded * world / need))
    return [f"{what}: {peak / GB:.1f} GB" for what, peak in out if peak <= limit]


def report(cfg, world: int, gpu: str) -> dict:
    """The memory estimate as a row: GB per component and phase, the peak and the verdict."""
    limit = usable_gb(gpu)
    mem = estimate_memory(cfg, world, limit * GB)
    fits = mem.peak / GB <= limit
    return {
        "memory_gb": {k: v / GB for k, v in {**mem.held, **mem.phases}.items()},
        "peak_gb": mem.peak / GB,
        "peak_phase": mem.peak_phase,
        "rollout_micro_batch": mem.micro_batch,
        "rollout_trajectories": local_samples(cfg, world),
        "rollout_chunks": cfg.sampling.rollout_chunks,
        "usable_gb": limit,
        "fits": fits,
        "fixes": [] if fits else fixes(cfg, world, gpu, mem),
    }
