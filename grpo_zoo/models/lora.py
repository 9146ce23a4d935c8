"""LoRA through peft, or full fine-tuning, as the model config says."""

from __future__ import annotations

import torch


def apply_lora(transformer: torch.nn.Module, cfg) -> torch.nn.Module:
    """Wrap with a peft LoRA adapter when cfg.lora_rank > 0; else train every weight."""
    if getattr(cfg, "lora_rank", 0) <= 0:
        return transformer.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=list(cfg.lora_targets),
        init_lora_weights="gaussian",
    )
    return get_peft_model(transformer, lcfg)
