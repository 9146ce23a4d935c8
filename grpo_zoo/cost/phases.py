"""The transient phases of an iteration, each run once at the config's real shapes on fake
tensors (torch's FakeTensorMode: shapes and dtypes, no data, no compute) under a dispatch mode
that follows every storage allocated and freed (grpo_zoo/cost/memory.py adds what is held):

- the rollout forward: `micro` trajectories' rows (doubled by CFG) per forward, no graph, plus
  the rollout's float32 state of all the rank's trajectories;
- the update: optim.micro_batch rows (doubled by CFG), forward and backward, with or without
  gradient checkpointing;
- the VAE decode of one group of latents, model.vae_batch videos at a time in model.vae_dtype,
  the group's videos kept;
- the prompt encoding, once at the start: the text encoder's weights and a forward of a batch
  of prompts (then the encoder is freed and the embeddings live on the host).
Loading adds no phase: the weights are read straight into the training dtype on their device
(grpo_zoo/models/wan.py).
The attention is counted as a GPU runs it (fused kernels, memory linear in the sequence).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from grpo_zoo.cost.components import configs, dtype_of, text_encoder
from grpo_zoo.models.base import cfg_multiplier

ROLLOUT = "rollout forward"
UPDATE = "update (forward + backward)"
DECODE = "VAE decode"
ENCODE = "prompt encoding (once, at the start)"
STATE_TENSORS = 7


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


def tracked_peak(build, run) -> float:
    """Peak bytes that run(*objs) allocates above what it starts with, objs = build() made
    on fake tensors (no data, no compute: torch's FakeTensorMode, which, unlike bare meta
    tensors, also answers the data-dependent calls some models make, such as .item())."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from grpo_zoo.cost.flops import fused_attention

    with torch.device("meta"):
        objs = build()
    with FakeTensorMode(allow_non_fake_inputs=True):
        objs = [o.to_empty(device="cpu") for o in objs]
        tracker = _PeakTracker()
        for o in objs:  # the weights exist before the phase: a view of one (a linear's w.t()) is no allocation
            for t in [*o.parameters(), *o.buffers()]:
                tracker.refs[t.untyped_storage()._cdata] = None
        with fused_attention(), tracker:
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


def local_samples(cfg, world: int) -> int:
    """Trajectories a rank rolls out per iteration."""
    return cfg.data.prompts_per_step // world * cfg.data.group_size


def chunk_samples(cfg, world: int) -> int:
    """Trajectories a rank samples at once: a chunk of its rollout (sampling.rollout_chunks)."""
    return max(1, local_samples(cfg, world) // cfg.sampling.rollout_chunks)


_CACHE: dict[tuple, float] = {}


def _cached(key: tuple, fn) -> float:
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


def _dtype(cfg) -> torch.dtype:
    return torch.bfloat16 if cfg.engine.precision == "bf16" else torch.float32


def _transformer_run(cfg, rows: int, train: bool) -> float:
    """Peak of one transformer forward of `rows` rows (with its backward when `train`).

    Every block past the first adds the same bytes (its saved input under checkpointing, its
    activations without; nothing with no graph), so a deep model is priced at 2 and 3 blocks
    and extended to its depth: equal to tracing every block (tests/test_memory_model.py), at
    a tenth of the time for 30 to 40 blocks."""
    tconf, _, _ = configs(cfg.model)
    depth = tconf.get("num_layers", 1)
    if depth <= 3:
        return _transformer_peak(cfg, rows, train, depth)
    two, three = _transformer_peak(cfg, rows, train, 2), _transformer_peak(cfg, rows, train, 3)
    return two + (depth - 2) * (three - two)


def _transformer_peak(cfg, rows: int, train: bool, depth: int) -> float:
    """tracked_peak of the transformer at `depth` blocks (cached by what it depends on)."""
    from diffusers import WanTransformer3DModel

    from grpo_zoo.cost.flops import model_shapes
    from grpo_zoo.models.lora import apply_lora

    tconf, _, _ = configs(cfg.model)
    tconf = {**tconf, "num_layers": depth}
    _, latent, text_dim = model_shapes(cfg.model)
    dtype = _dtype(cfg)
    m = cfg.model
    lora = (m.lora_rank, m.lora_alpha, tuple(m.lora_targets), m.gradient_checkpointing, m.max_tokens)
    key = ("transformer", repr(sorted(tconf.items())), tuple(latent), text_dim, lora, str(dtype), rows, train)

    def transformer():
        net = WanTransformer3DModel.from_config(tconf)
        if m.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        return (apply_lora(net, m).to(dtype),)

    def run(net):
        x = torch.zeros(rows, *latent, dtype=dtype)
        args = x, torch.ones(rows) * 500.0, torch.zeros(rows, m.max_tokens, text_dim, dtype=dtype)
        if train:
            net.train()
            net(*args, return_dict=False)[0].float().square().mean().backward()
        else:
            net.eval()
            with torch.no_grad():
                net(*args, return_dict=False)

    return _cached(key, lambda: tracked_peak(transformer, run))


def rollout_bytes(cfg, world: int, micro: int) -> float:
    """The rollout phase with `micro` trajectories per forward (CFG doubles the rows)."""
    from grpo_zoo.cost.flops import model_shapes

    _, latent, _ = model_shapes(cfg.model)
    local = chunk_samples(cfg, world)  # one chunk's trajectories are on the GPU at a time
    rows = min(micro, local) * cfg_multiplier(cfg.sampling.guidance)
    forward = _transformer_run(cfg, rows, train=False)
    # float32 latents of every trajectory live beside the forward: x, v, the step's noise, x_next,
    # the SDE mean's temporaries, the initial noise and the recorded transitions (measured on the
    # tiny Wan: about 7; tests/test_real_scale.py). 17 MB each at 14B's 2 trajectories a chunk.
    state = 4 * local * torch.Size(latent).numel()
    return forward + STATE_TENSORS * state


def update_bytes(cfg) -> float:
    rows = update_rows(cfg)
    return _transformer_run(cfg, rows, train=True)


def decode_bytes(cfg) -> float:
    """As WanPolicy.decode: vae_batch videos at a time in vae_dtype, the group's videos kept."""
    from diffusers import AutoencoderKLWan

    from grpo_zoo.cost.flops import model_shapes

    m = cfg.model
    _, vconf, _ = configs(m)
    _, latent, _ = model_shapes(m)
    dtype, b, g = dtype_of(m.vae_dtype), m.vae_batch, cfg.data.group_size

    def decode(vae):
        with torch.no_grad():
            z = torch.zeros(g, *latent, dtype=dtype)
            torch.cat([vae.decode(z[i : i + b], return_dict=False)[0].float() for i in range(0, g, b)])

    key = ("decode", repr(sorted(vconf.items())), tuple(latent), str(dtype), b, g)  # the 1.3B and 14B share a VAE

    def build():  # torch.nn.Module.to: a cast diffusers would warn about (the VAE keeps no module in fp32)
        return (torch.nn.Module.to(AutoencoderKLWan.from_config(vconf), dtype),)

    return _cached(key, lambda: tracked_peak(build, decode))


def encode_bytes(cfg) -> float:
    """The text encoder's weights and one forward of ENCODE_BATCH prompts, at the start only."""
    from grpo_zoo.models.wan import ENCODE_BATCH

    _, _, econf = configs(cfg.model)
    tokens = cfg.model.max_tokens

    def encode(enc):
        with torch.no_grad():
            ids = torch.zeros(ENCODE_BATCH, tokens, dtype=torch.long)
            enc(ids, torch.ones(ENCODE_BATCH, tokens, dtype=torch.long))

    def weights() -> float:
        with torch.device("meta"):
            enc = text_encoder(econf)
        return float(sum(p.numel() * p.element_size() for p in enc.parameters()))

    key = ("encode", repr(sorted(econf.items())), tokens)
    return _cached(key, lambda: weights() + tracked_peak(lambda: (text_encoder(econf),), encode))


def phase_bytes(cfg, world: int, micro: int) -> dict[str, float]:
    """Transient peak of each phase, per GPU, with `micro` trajectories per rollout forward."""
    return {
        ROLLOUT: rollout_bytes(cfg, world, micro),
        UPDATE: update_bytes(cfg),
        DECODE: decode_bytes(cfg),
        ENCODE: encode_bytes(cfg),
    }
