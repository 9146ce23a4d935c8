"""The parts of a Wan model the memory model prices (grpo_zoo/cost/memory.py): their configs,
read from the local diffusers directory or, without the weights, from the named architecture."""

from __future__ import annotations

import json
from pathlib import Path

import torch

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


def configs(model) -> tuple[dict, dict, dict]:
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


def text_encoder(econf: dict) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    enc = UMT5EncoderModel(UMT5Config(**{k: v for k, v in econf.items() if k != "torch_dtype"}))
    return enc.to(dtype_of(econf.get("torch_dtype")))


def count(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def dtype_of(name: str | None) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "bf16": torch.bfloat16}.get(str(name), torch.float32)


def dtype_bytes(name: str | None) -> int:
    return dtype_of(name).itemsize
