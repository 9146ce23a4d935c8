"""The `wan` backend: Wan2.1 components loaded from a local diffusers directory.

The directory has the diffusers layout of Wan-AI/Wan2.1-T2V-*-Diffusers: transformer/
(WanTransformer3DModel), vae/ (AutoencoderKLWan), text_encoder/ (UMT5EncoderModel) and
tokenizer/. Prompts are encoded as WanPipeline does (padded to max_sequence_length, the
embeddings past each prompt's length zeroed), under no_grad; latents are decoded with the
VAE's latents_mean/std, as WanPipeline does. Only the transformer trains (LoRA or full).
"""

from __future__ import annotations

from pathlib import Path

import torch

from grpo_zoo.errors import ConfigError
from grpo_zoo.models import accel
from grpo_zoo.models.base import Policy
from grpo_zoo.models.lora import apply_lora

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
DECODE_BATCH = 1
"""Videos the VAE decodes at once."""


class WanPolicy(Policy):
    def __init__(
        self, transformer, vae, text_encoder, tokenizer, frames: int, height: int, width: int, max_tokens: int
    ):
        super().__init__(transformer)
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        t_scale = 2 ** sum(vae.config.temperal_downsample)
        s_scale = 2 ** len(vae.config.temperal_downsample)
        if (frames - 1) % t_scale or height % (s_scale * 2) or width % (s_scale * 2):
            raise ConfigError(
                f"model.frames/height/width: {frames}x{height}x{width} do not fit the VAE "
                f"(frames = {t_scale}k + 1, height and width multiples of {s_scale * 2})"
            )
        self.latent_shape = (vae.config.z_dim, (frames - 1) // t_scale + 1, height // s_scale, width // s_scale)

    @classmethod
    def load(cls, cfg) -> WanPolicy:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(cfg.path)
        missing = [s for s in SUBFOLDERS if not (root / s).is_dir()]
        if missing:
            raise ConfigError(f"model.path: {root} lacks {', '.join(missing)}/ (a diffusers Wan2.1 directory)")
        transformer = WanTransformer3DModel.from_pretrained(root / "transformer")
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        accel.apply(transformer, cfg)  # attention kernel and compiled blocks (model.attention_backend, compile_blocks)
        transformer = apply_lora(transformer, cfg)
        vae = AutoencoderKLWan.from_pretrained(root / "vae")
        text_encoder = UMT5EncoderModel.from_pretrained(
            root / "text_encoder", dtype="auto"
        )  # as stored (bf16 in the release)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        return cls(transformer, vae, text_encoder, tokenizer, cfg.frames, cfg.height, cfg.width, cfg.max_tokens)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            [p.strip() for p in prompts],
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(tok.input_ids.to(device), tok.attention_mask.to(device)).last_hidden_state
        return hidden * tok.attention_mask.to(device)[..., None].to(hidden.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """One video at a time (DECODE_BATCH): the VAE's activations at full resolution grow with
        the batch (about 8 GB per 81-frame 480x832 video), the videos themselves are small."""
        c = self.vae.config
        mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1).to(latents.device)
        std = torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1).to(latents.device)
        x = latents.float() * std + mean
        dtype = next(self.vae.parameters()).dtype
        videos = [
            self.vae.decode(x[i : i + DECODE_BATCH].to(dtype), return_dict=False)[0].float().clamp(-1, 1)
            for i in range(0, len(x), DECODE_BATCH)
        ]
        return torch.cat(videos)
