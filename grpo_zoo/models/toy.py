"""The `toy` backend: the toy world's tiny Wan DiT, in pixel space."""

from __future__ import annotations

import torch

from grpo_zoo.models.base import Policy
from grpo_zoo.models.lora import apply_lora
from grpo_zoo.toy import model as toy_model
from grpo_zoo.toy import world


class ToyPolicy(Policy):
    latent_shape = (3, world.FRAMES, world.SIZE, world.SIZE)

    def __init__(self, transformer: torch.nn.Module, encoder: toy_model.PromptEncoder, prediction: str = "velocity"):
        super().__init__(transformer)
        self.encoder = encoder.requires_grad_(False)
        self.prediction = prediction
        """What the transformer outputs (toy.model.PREDICTIONS); raw_velocity converts it."""

    @classmethod
    def load(cls, cfg) -> ToyPolicy:
        transformer, encoder = toy_model.load_checkpoint(cfg.path)
        transformer = apply_lora(transformer, cfg)
        return cls(transformer, encoder, toy_model.prediction_of(cfg.path))

    @classmethod
    def from_checkpoint(cls, name_or_path: str) -> ToyPolicy:
        """The checkpoint's policy, without an adapter."""
        transformer, encoder = toy_model.load_checkpoint(name_or_path)
        return cls(transformer, encoder, toy_model.prediction_of(name_or_path))

    def raw_velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return toy_model.velocity(super().raw_velocity(x, sigma, emb), x, sigma, self.prediction)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.encoder(prompts)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float().clamp(-1, 1)
