"""FLOPs of one sample through the transformer, counted from shapes (the meta device for
wan models; the toy's tiny transformer as the trainer counts it), and the GPUs' peaks."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from grpo_zoo.errors import ConfigError

# dense bf16 peak, FLOP/s per GPU (vendor datasheets, no sparsity)
GPUS = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "a800": 312e12, "l40s": 362e12, "b200": 2250e12}


def model_shapes(model) -> tuple[dict, tuple[int, ...], int]:
    """(transformer config, latent shape C,F,H,W, text embedding width) for a wan ModelConfig."""
    from grpo_zoo.models.wan_arch import ARCHS

    root = Path(model.path)
    if (root / "transformer" / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        tconf = json.loads((root / "transformer" / "config.json").read_text())
        vconf = json.loads((root / "vae" / "config.json").read_text())
    elif model.arch in ARCHS:
        tconf, vconf = ARCHS[model.arch]["transformer"], ARCHS[model.arch]["vae"]
    else:
        raise ConfigError(
            f"model.path: no Wan model directory at {model.path!r} and model.arch {model.arch!r} is not one of "
            f"{', '.join(ARCHS)}"
        )
    from grpo_zoo.models.wan_arch import vae_scales

    t_scale, s_scale = vae_scales(vconf)
    latent = (vconf["z_dim"], (model.frames - 1) // t_scale + 1, model.height // s_scale, model.width // s_scale)
    return tconf, latent, tconf["text_dim"]


@contextlib.contextmanager
def fused_attention():
    """Count attention as a GPU runs it. On the meta device SDPA takes its unfused math path,
    whose backward reuses the stored scores (2x the forward's attention FLOPs); the fused
    kernels of a GPU (and the CPU) recompute them (2.5x), and that is what the meter counts."""
    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or enable_gqa:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, scale=scale
        )[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def shape_key(model) -> tuple:
    """What a wan model's FLOPs per NFE depend on: the transformer's config, the latent and
    prompt shapes, the LoRA adapters (rank and targets: alpha and dropout add no matmul) and
    gradient checkpointing (its backward recomputes the forward)."""
    tconf, latent, _ = model_shapes(model)
    conf = json.dumps({k: v for k, v in tconf.items() if not k.startswith("_")}, sort_keys=True)
    lora = (model.lora_rank, tuple(model.lora_targets)) if model.lora_rank > 0 else (0, ())
    return conf, latent, model.max_tokens, lora, bool(model.gradient_checkpointing)


_COUNTED: dict[tuple, tuple[float, float]] = {}
"""FLOPs per NFE by shape_key (wan) or by the whole model config (toy): counted once per process."""


def flops_per_nfe(model) -> tuple[float, float]:
    """(forward, backward) FLOPs of one sample through the transformer, counted once per
    distinct shape: on the meta device for wan models (no weights, no compute)."""
    key = shape_key(model) if model.is_wan else ("toy", repr(model))
    if key not in _COUNTED:
        _COUNTED[key] = meta_flops_per_nfe(model) if model.is_wan else toy_flops_per_nfe(model)
    return _COUNTED[key]


def meta_flops_per_nfe(model, layers: int | None = None) -> tuple[float, float]:
    """(forward, backward) FLOPs of one sample through a wan transformer, counted on the meta device.

    The transformer's blocks are identical in shape, so the count is exactly linear in their
    number: it is counted at one and two blocks and extended to the model's (`layers` given:
    counted at that many blocks as they are)."""
    if layers is None:
        tconf, _, _ = model_shapes(model)
        n = tconf["num_layers"]
        if n > 2:
            one, two = meta_flops_per_nfe(model, 1), meta_flops_per_nfe(model, 2)
            return tuple(a + (n - 1) * (b - a) for a, b in zip(one, two, strict=True))
        layers = n
    from diffusers import WanTransformer3DModel

    from grpo_zoo.cost.meter import measure_flops
    from grpo_zoo.models.lora import apply_lora

    tconf, latent, text_dim = model_shapes(model)
    conf = {k: v for k, v in tconf.items() if not k.startswith("_")} | {"num_layers": layers}
    with torch.device("meta"):
        net = WanTransformer3DModel.from_config(conf)
        if model.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        net = apply_lora(net, model)
        x = torch.zeros(1, *latent)
        emb = torch.zeros(1, model.max_tokens, text_dim)
        t = torch.ones(1) * 1000
    net.train()
    with fused_attention():
        fwd, bwd = measure_flops(lambda: net(x, t, emb, return_dict=False)[0], backward=True)
    return float(fwd), float(bwd)


def run_flops(model, policy, prompt: str) -> tuple[float, float]:
    """What a run's meter multiplies its passes by: a wan model's count from shapes (the same
    number `estimate` prices; no real pass, whatever the model's size), the toy's tiny
    transformer counted through the loaded policy, as it trains."""
    if model.is_wan:
        return flops_per_nfe(model)
    return policy_flops(policy, prompt)


def policy_flops(policy, prompt: str) -> tuple[float, float]:
    """(forward, backward) FLOPs of one sample's transformer pass through `policy`, as trained."""
    from grpo_zoo.cost.meter import measure_flops
    from grpo_zoo.models.accel import eager

    x = torch.zeros(1, *policy.latent_shape)
    emb = policy.encode([prompt])
    with eager(policy):  # the operators as dispatched, on the CPU: native attention, no compiled blocks
        fwd, bwd = measure_flops(lambda: policy.raw_velocity(x, torch.ones(1), emb), backward=True)
    for p in policy.parameters():
        p.grad = None
    return float(fwd), float(bwd)


def toy_flops_per_nfe(model) -> tuple[float, float]:
    """(forward, backward) FLOPs of one sample through a toy (or any non-wan) policy: its
    transformer is tiny, so it is built and counted as the trainer counts it."""
    from grpo_zoo.models import load_policy

    return policy_flops(load_policy(model), "a red circle moving left")
