"""Per-GPU memory of a Wan run before it runs: what `python -m grpo_zoo.estimate` prints.

Two kinds of memory make the peak:

- **held** for the whole run, counted from parameter numbers: the transformer's weights (bf16
  under bf16 training; ZeRO-3 shards them), the trainable weights' optimizer states (an fp32
  master copy, AdamW's two moments and fp32 gradients, sharded by ZeRO >= 1 or 2), DeepSpeed's
  contiguous gradient bucket (ZeRO >= 1: 5e8 elements, whatever the model's size), the EMA
  copy of the trainable weights, the frozen reference for the KL when training fully, the
  text encoder and the VAE (in the dtype they load in);
- **transient**, the largest of the phases of an iteration, each run once at the config's
  real shapes on the meta device (shapes and dtypes, no data, no compute) under a dispatch
  mode that follows every storage's allocation and release:
  the rollout forward (P/world x G rows, doubled by CFG, no graph), the update (micro_batch
  rows, doubled by CFG, forward and backward, with or without gradient checkpointing),
  the VAE decode of one group of latents with the decoded videos. Loading adds nothing: the
  transformer's weights are read straight into the training dtype (grpo_zoo/models/wan.py).

The attention is counted as a GPU runs it (fused kernels, memory linear in the sequence).
What is not counted: the CUDA context, NCCL buffers and the caching allocator's
fragmentation, for which the verdict keeps a reserve (RESERVE_GB plus RESERVE_FRACTION of
the card).
"""

from __future__ import annotations

import copy
import json
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from grpo_zoo.models.base import cfg_multiplier

GB = 1e9
GPU_MEMORY_GB = {"h100": 80, "h200": 141, "h800": 80, "a100": 80, "a800": 80, "l40s": 48, "b200": 192}
RESERVE_GB = 2.0
RESERVE_FRACTION = 0.05
REDUCE_BUCKET = 5e8  # DeepSpeed's default reduce_bucket_size (elements)

# UMT5-XXL's encoder (Wan2.1's text encoder), stored in bf16 in Wan-AI's diffusers release
UMT5_XXL = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "torch_dtype": "bfloat16",
}


@dataclass
class Memory:
    """Bytes per GPU by component (held) and by phase (transient); peak = held + max(phase)."""

    held: dict[str, float]
    phases: dict[str, float]

    @property
    def peak(self) -> float:
        return sum(self.held.values()) + max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


def usable_gb(gpu: str) -> float:
    total = GPU_MEMORY_GB[gpu]
    return total * (1 - RESERVE_FRACTION) - RESERVE_GB


# -- the components ---------------------------------------------------------------------------
def _configs(model) -> tuple[dict, dict, dict]:
    """(transformer, VAE, text encoder) configs: the local directory's, else the named arch's."""
    from grpo_zoo.cost.flops import model_shapes
    from grpo_zoo.models.wan_arch import ARCHS

    root = Path(model.path)
    tconf, _, _ = model_shapes(model)
    if (root / "vae" / "config.json").is_file():
        vconf = json.loads((root / "vae" / "config.json").read_text())
    else:
        vconf = dict(ARCHS[model.arch]["vae"])
    if (root / "text_encoder" / "config.json").is_file():
        econf = json.loads((root / "text_encoder" / "config.json").read_text())
    else:
        econf = dict(UMT5_XXL)
    clean = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    return clean(tconf), clean(vconf), econf


def _count(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def _dtype_bytes(name: str | None) -> int:
    return {"bfloat16": 2, "float16": 2}.get(str(name), 4)


_PARAMS: dict[tuple, tuple[int, int, int, int]] = {}
"""Parameter numbers by the configs and LoRA settings: counted once per process."""


def param_counts(model) -> tuple[int, int, int, int]:
    """(frozen transformer, trainable transformer, VAE, text encoder) parameters, on the meta device."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from grpo_zoo.models.lora import apply_lora

    tconf, vconf, econf = _configs(model)
    key = (json.dumps([tconf, vconf, econf], sort_keys=True), model.lora_rank, tuple(model.lora_targets))
    if key not in _PARAMS:
        with torch.device("meta"):
            net = apply_lora(WanTransformer3DModel.from_config(tconf), model)
            base, train = _count(net, False), _count(net, True)
            vae = _count(AutoencoderKLWan.from_config(vconf))
            enc_conf = UMT5Config(**{k: v for k, v in econf.items() if k != "torch_dtype"})
            _PARAMS[key] = (base, train, vae, _count(UMT5EncoderModel(enc_conf)))
    return _PARAMS[key]


def held_bytes(cfg, world: int) -> dict[str, float]:
    """Memory held for the whole run, per GPU."""
    _, _, econf = _configs(cfg.model)
    base, train, vae, enc = param_counts(cfg.model)
    if cfg.model.lora_rank == 0:
        base = 0
    z, bf16 = cfg.engine.zero_stage, cfg.engine.precision == "bf16"
    w = 2 if bf16 else 4
    shard_w = world if z == 3 else 1
    opt_shard = world if z >= 1 else 1
    grad_shard = world if z >= 2 else 1
    # bf16: fp32 master + 2 fp32 moments (+ fp32 gradient partition); fp32: 2 moments, the weights are the master
    states = (12 if bf16 else 8) * train / opt_shard
    grads = (4 * train / grad_shard) if bf16 else 0.0
    held = {
        "transformer weights": w * base / shard_w,
        "trainable weights": w * train / shard_w,
        "optimizer states": states + grads,
        "EMA": w * train if cfg.optim.ema_decay > 0 else 0.0,
        # full fine-tuning with a KL keeps a frozen copy, in the dtype the transformer loads in
        "reference model": w * train if (cfg.model.lora_rank == 0 and cfg.optim.beta > 0) else 0.0,
        # DeepSpeed's contiguous gradient bucket (reduce_bucket_size elements, allocated whole)
        "ZeRO gradient bucket": REDUCE_BUCKET * (2 if (z >= 2 and bf16) else 4) if z >= 1 else 0.0,
        "text encoder": _dtype_bytes(econf.get("torch_dtype")) * enc,
        "VAE": 4 * vae,
    }
    return held


# -- the phases, on the meta device ---------------------------------------------------------------
class _PeakTracker(TorchDispatchMode):
    """Live bytes of the storages that operators create (a storage counts until it is freed)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.refs: dict[int, weakref.ref] = {}

    def _free(self, key: int, nbytes: int) -> None:
        self.refs.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key not in self.refs:
                    n = st.nbytes()
                    self.refs[key] = weakref.ref(st, lambda _, k=key, n=n: self._free(k, n))
                    self.live += n
                    self.peak = max(self.peak, self.live)
        return out


def _tracked_peak(build, run) -> float:
    """Peak bytes that run(*objs) allocates above what it starts with, objs = build(), all on the
    meta device (shapes and dtypes, no data, no compute; the same storages as fake CPU tensors
    give, without their per-operator bookkeeping)."""
    from grpo_zoo.cost.flops import fused_attention

    with torch.device("meta"):
        objs = build()
    tracker = _PeakTracker()
    with fused_attention(), torch.device("meta"), tracker:
        run(*objs)
    return float(tracker.peak)


def update_rows(cfg) -> int:
    """Transformer rows in one micro-batch's graph: optim.micro_batch items x the objective's
    passes per item (a pairwise loss: 2) x its CFG multiplier (forward-process objectives: 1)."""
    from grpo_zoo.core import algorithm as algorithms
    from grpo_zoo.core import objective as objectives
    from grpo_zoo.training.preflight import sampling_tables

    table, _ = sampling_tables(cfg.sampling)
    alg = algorithms.build(cfg.algorithm)
    obj = objectives.get(alg.objective)(cfg.algorithm, cfg.optim, cfg.sampling, table)  # priced, not run
    return cfg.optim.micro_batch * obj.passes_per_item() * obj.cfg_mult


def phase_bytes(cfg, world: int) -> dict[str, float]:
    """Transient peak of each phase of an iteration, per GPU (the algorithm matters only
    through the update's rows per micro-batch: variants of a sweep mostly share one count)."""
    m, d = cfg.model, cfg.data
    key = (
        repr(m),
        cfg_multiplier(cfg.sampling.guidance),
        d.prompts_per_step // world,
        d.group_size,
        update_rows(cfg),
        cfg.engine.precision,
    )
    if key not in _PHASES:
        _PHASES[key] = _phase_bytes(cfg, world)
    return dict(_PHASES[key])


_PHASES: dict[tuple, dict[str, float]] = {}
_DECODES: dict[tuple, float] = {}
"""The VAE decode's peak by (VAE config, latent shape, group size): the transformer plays no part in it."""


def decode_bytes(vconf: dict, latent: tuple[int, ...], group: int) -> float:
    """Peak of WanPolicy.decode on one group's latents: DECODE_BATCH videos at a time, the
    decoded videos kept. The chunks are identical decodes (the VAE clears its frame cache before
    and after each), so the peak is that of the last one, with the earlier chunks' outputs held:
    two decodes are tracked, the first's output standing for every earlier one."""
    from diffusers import AutoencoderKLWan

    from grpo_zoo.models.wan import DECODE_BATCH

    key = (json.dumps(vconf, sort_keys=True), tuple(latent), group)
    if key in _DECODES:
        return _DECODES[key]

    def decode(vae):
        with torch.no_grad():
            z = torch.zeros(group, *latent)  # the group's latents, held while it decodes
            starts = range(0, group, DECODE_BATCH)
            if group % DECODE_BATCH:  # unequal chunks: each one decoded
                torch.cat([vae.decode(z[i : i + DECODE_BATCH], return_dict=False)[0] for i in starts])
                return
            first = vae.decode(z[:DECODE_BATCH], return_dict=False)[0]
            kept = [first] + [torch.empty_like(first) for _ in starts[1:-1]]
            if len(starts) > 1:
                kept.append(vae.decode(z[starts[-1] :], return_dict=False)[0])
            torch.cat(kept)

    _DECODES[key] = _tracked_peak(lambda: (AutoencoderKLWan.from_config(vconf),), decode)
    return _DECODES[key]


def _phase_bytes(cfg, world: int) -> dict[str, float]:
    from diffusers import WanTransformer3DModel

    from grpo_zoo.cost.flops import model_shapes
    from grpo_zoo.models.lora import apply_lora

    tconf, vconf, _ = _configs(cfg.model)
    _, latent, text_dim = model_shapes(cfg.model)
    dtype = torch.bfloat16 if cfg.engine.precision == "bf16" else torch.float32
    cfg_mult = cfg_multiplier(cfg.sampling.guidance)
    local = cfg.data.prompts_per_step // world * cfg.data.group_size
    tokens = cfg.model.max_tokens

    def transformer():
        net = WanTransformer3DModel.from_config(tconf)
        if cfg.model.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        return (apply_lora(net, cfg.model).to(dtype),)

    def inputs(rows):
        x = torch.zeros(rows, *latent, dtype=dtype)
        return x, torch.ones(rows) * 500.0, torch.zeros(rows, tokens, text_dim, dtype=dtype)

    def rollout(net):
        net.eval()
        with torch.no_grad():
            net(*inputs(local * cfg_mult), return_dict=False)

    def update(net):
        net.train()
        out = net(*inputs(update_rows(cfg)), return_dict=False)[0]
        out.float().square().mean().backward()

    state = 4 * local * torch.Size(latent).numel()  # x, v, noise, x_next of the rollout (float32)
    return {
        "rollout forward": _tracked_peak(transformer, rollout) + 4 * state,
        "update (forward + backward)": _tracked_peak(transformer, update),
        "VAE decode": decode_bytes(vconf, latent, cfg.data.group_size),
    }


def estimate_memory(cfg, world: int) -> Memory:
    return Memory(held_bytes(cfg, world), phase_bytes(cfg, world))


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
        m = estimate_memory(_with(cfg, model__gradient_checkpointing=True), world)
        out.append(("model.gradient_checkpointing=true", m.peak))
    if cfg.engine.zero_stage < 3:
        m = Memory({**mem.held}, mem.phases)
        shardable = ("transformer weights", "trainable weights", "optimizer states")
        for k in shardable:
            m.held[k] = mem.held[k] if k == "optimizer states" and cfg.engine.zero_stage >= 2 else mem.held[k] / world
        if cfg.optim.ema_decay > 0:  # the trainer's EMA needs whole parameters on each rank
            m.held["EMA"] = 0.0
        what = "engine.zero_stage=3" + (" optim.ema_decay=0 (no EMA under ZeRO-3)" if cfg.optim.ema_decay > 0 else "")
        out.append((what, m.peak))
    offload = mem.peak - mem.held["optimizer states"]
    out.append(("optimizer states offloaded to CPU (DeepSpeed offload_optimizer; not an engine option yet)", offload))
    shorter = [f for f in (65, 49, 33, 17) if f < cfg.model.frames]
    # memory grows with the frames: when the fewest do not fit, none do (the longer ones are not priced)
    if shorter and estimate_memory(_with(cfg, model__frames=shorter[-1]), world).peak <= limit:
        for frames in shorter:
            m = estimate_memory(_with(cfg, model__frames=frames), world)
            if m.peak <= limit:
                out.append((f"model.frames={frames} (the largest of 65/49/33/17 that fits)", m.peak))
                break
    sharded = mem.held["optimizer states"] + (mem.held["transformer weights"] if cfg.engine.zero_stage == 3 else 0)
    fixed = mem.peak - sharded
    if fixed < limit and sharded > 0:
        need = next((n for n in range(world + 1, 1025) if fixed + sharded * world / n <= limit), None)
        if need:
            out.append((f"{need} GPUs (ZeRO shards only the optimizer states)", fixed + sharded * world / need))
    return [f"{what}: {peak / GB:.1f} GB" for what, peak in out if peak <= limit]


def report(cfg, world: int, gpu: str) -> dict:
    """The memory estimate as a row: GB per component and phase, the peak and the verdict."""
    mem = estimate_memory(cfg, world)
    limit = usable_gb(gpu)
    fits = mem.peak / GB <= limit
    return {
        "memory_gb": {k: v / GB for k, v in {**mem.held, **mem.phases}.items()},
        "peak_gb": mem.peak / GB,
        "peak_phase": mem.peak_phase,
        "usable_gb": limit,
        "fits": fits,
        "fixes": [] if fits else fixes(cfg, world, gpu, mem),
    }
