"""The policy interface every backend implements.

A policy predicts the flow velocity v(x_t, t, prompt) of a video latent x_t, with
classifier-free guidance, decodes latents to pixels, and provides its reference policy
(for the KL term): the base model with the LoRA adapter disabled, or a frozen copy of
the initial weights when training fully.

`net` is the trainable module (the transformer, possibly wrapped by peft); the engine
may replace it by its DeepSpeed wrapper, whose call runs the same forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from grpo_zoo.flow.schedules import NUM_TRAIN_TIMESTEPS


def cfg_multiplier(guidance: float, null_emb: object = True) -> int:
    """Transformer passes per sample of a velocity at CFG scale `guidance`: 2 (conditional and
    unconditional in one batched forward) when guidance != 1 and there is an unconditional
    embedding, else 1. The one rule every counter uses (rollout, evaluation, meter, estimate,
    memory model)."""
    return 2 if float(guidance) != 1.0 and null_emb is not None else 1


class Policy(torch.nn.Module):
    latent_shape: tuple[int, ...]
    """(C, F, H, W) of one latent video."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self._frozen_ref: torch.nn.Module | None = None
        self._use_ref = False

    # -- to implement ------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings [B, L, D] (an empty string is the unconditional prompt)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos [B, 3, F, H, W] in [-1, 1] from latents."""
        raise NotImplementedError

    def fix_prompts(self, prompts: list[str]) -> None:
        """The run's whole prompt set, known at its start. A backend whose text encoder is large
        encodes them once here and frees the encoder (`encode` then reads the cache); the toy's
        is a few kilobytes and keeps encoding."""

    def trains_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """[N] bool: whether an item at noise level sigma [N] trains (a weight of the module that
        serves it can learn). Every item, but where only some experts train (wan2.2-a14b)."""
        return torch.ones(sigma.shape, dtype=torch.bool)

    # -- shared --------------------------------------------------------------------------
    def _model(self) -> torch.nn.Module:
        return self._frozen_ref if (self._use_ref and self._frozen_ref is not None) else self.net

    def raw_velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """One transformer forward: v for x_t at noise level sigma [B] with embeddings emb.

        The timestep 1000 * sigma goes in as float32 whatever the model's dtype, as WanPipeline
        passes its scheduler's timesteps: bf16 would round it to a multiple of 4 above 512."""
        t = sigma.to(torch.float32) * NUM_TRAIN_TIMESTEPS
        return self._model()(x, t, emb.to(x.dtype), return_dict=False)[0]

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor, null_emb: torch.Tensor | None, guidance: float
    ) -> torch.Tensor:
        """v with classifier-free guidance: v_u + g (v_c - v_u) in one batched forward (g > 1)."""
        if cfg_multiplier(guidance, null_emb) == 1:
            return self.raw_velocity(x, sigma, emb)
        null = null_emb.expand(len(x), *null_emb.shape[1:])
        both = self.raw_velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([emb, null]))
        v_c, v_u = both.chunk(2)
        return v_u + guidance * (v_c - v_u)

    def freeze_reference(self) -> None:
        """Keep a frozen copy of the current weights as the reference (full fine-tuning)."""
        self._frozen_ref = copy.deepcopy(self.net).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside this context the policy is its reference: adapters off, or the frozen copy."""
        net = getattr(self.net, "module", self.net)  # a DeepSpeed engine wraps the module
        if self._frozen_ref is not None:
            self._use_ref = True
            try:
                yield
            finally:
                self._use_ref = False
        elif hasattr(net, "disable_adapter"):
            with net.disable_adapter():
                yield
        else:
            raise RuntimeError("no reference policy: train with LoRA or call freeze_reference()")
