"""The `toy` backend: the toy world's tiny Wan DiT, in pixel space."""

from __future__ import annotations

import torch

from grpo_zoo.models.base import Policy
from grpo_zoo.models.lora import apply_lora
from grpo_zoo.toy import model as toy_model
from grpo_zoo.toy import world


class ToyPolicy(Policy):
    latent_shape = (3, world.FRAMES, world.SIZE, world.SIZE)

    def __init__(self, transformer: torch.nn.Module, encoder: toy_model.PromptEncoder):
        super().__init__(transformer)
        self.encoder = encoder.requires_grad_(False)

    @classmethod
    def load(cls, cfg) -> ToyPolicy:
        transformer, encoder = toy_model.load_checkpoint(cfg.path)
        transformer = apply_lora(transformer, cfg)
        return cls(transformer, encoder)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.encoder(prompts)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float().clamp(-1, 1)
