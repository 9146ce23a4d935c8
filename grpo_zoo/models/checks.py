"""Before any compute: a model directory holds what loading it will read, and the LoRA targets
name modules of its transformer (checked on the meta device: no weights, no memory)."""

from __future__ import annotations

import json
from pathlib import Path

from grpo_zoo.errors import ConfigError

WAN_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
"""The folders a diffusers Wan directory has (the pipeline's own layout)."""


def model_root(model) -> Path:
    if model.backend == "toy":
        from grpo_zoo.toy.model import resolve

        return resolve(model.path)
    return Path(model.path)


def transformer_config(model) -> dict:
    """The transformer's config.json, read and checked (ConfigError naming the file)."""
    root = model_root(model)
    what = "toy checkpoint" if model.backend == "toy" else "Wan model directory"
    if not root.is_dir():
        raise ConfigError(f"model.path: no {what} at {model.path!r}")
    if model.is_wan:
        parts = (*WAN_PARTS, "transformer_2") if model.backend == "wan2.2-a14b" else WAN_PARTS
        missing = [part for part in parts if not (root / part).is_dir()]
        if missing:
            raise ConfigError(
                f"model.path: {model.path!r} has no {', '.join(missing)} folder (a diffusers Wan directory)"
            )
    path = root / "transformer" / "config.json"
    if not path.is_file():
        raise ConfigError(f"model.path: {str(path)!r} is missing; {model.path!r} is not a complete {what}")
    try:
        conf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"model.path: {str(path)!r} is not valid JSON") from None
    if not isinstance(conf, dict):
        raise ConfigError(f"model.path: {str(path)!r} does not hold a config mapping")
    return conf


def check_model(model) -> None:
    """The model's files, and its LoRA targets against the modules of its transformer."""
    conf = transformer_config(model)
    if model.lora_rank <= 0:
        return
    if not model.lora_targets:
        raise ConfigError("model.lora_targets: empty, but model.lora_rank > 0 (name modules, or set lora_rank 0)")
    import torch
    from diffusers import WanTransformer3DModel

    try:
        with torch.device("meta"):
            net = WanTransformer3DModel.from_config({k: v for k, v in conf.items() if not k.startswith("_")})
    except Exception as err:  # a config diffusers cannot build
        raise ConfigError(f"model.path: its transformer config does not build ({type(err).__name__}: {err})") from None
    names = [name for name, _ in net.named_modules()]
    for target in model.lora_targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError(
                f"model.lora_targets: {target!r} names no module of the transformer (e.g. to_q, to_k, to_v, to_out.0, "
                "ffn.net.0.proj)"
            )
