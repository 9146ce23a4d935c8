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
ENCODE_BATCH = 8
"""Prompts the text encoder encodes at once (once per run: `fix_prompts`)."""


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of a diffusers model folder's weights as stored (its first floating tensor)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if files:
        with safe_open(files[0], "pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safetensors file is not iterable)
                dtype = f.get_slice(name).get_dtype()
                if dtype in ("BF16", "F16", "F32"):
                    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    return torch.float32


def placement(device: torch.device | None) -> dict:
    """from_pretrained's placement: straight onto a GPU, else the host."""
    return {"device_map": {"": device}} if device is not None and device.type != "cpu" else {}


def checked_root(cfg, subfolders) -> Path:
    root = Path(cfg.path)
    missing = [s for s in subfolders if not (root / s).is_dir()]
    if missing:
        raise ConfigError(f"model.path: {root} lacks {', '.join(missing)}/ (a diffusers {cfg.backend} directory)")
    return root


def load_transformer(folder: Path, cfg, dtype, device, train: bool = True):
    """A WanTransformer3DModel in `dtype` (None: as stored) with the run's kernels, checkpointing
    and LoRA (`train`; else frozen: an expert that does not train)."""
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel.from_pretrained(
        folder, torch_dtype=dtype or stored_dtype(folder), **placement(device)
    )
    if cfg.gradient_checkpointing and train:
        transformer.enable_gradient_checkpointing()
    accel.apply(transformer, cfg)  # attention kernel and compiled blocks (model.attention_backend, compile_blocks)
    return apply_lora(transformer, cfg) if train else transformer.requires_grad_(False)


def load_rest(root: Path, device) -> tuple:
    """(VAE in float32 as WanPipeline decodes, UMT5 as stored: bf16 in the release, tokenizer)."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    vae = AutoencoderKLWan.from_pretrained(root / "vae", **placement(device))
    text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", dtype="auto", **placement(device))
    return vae, text_encoder, AutoTokenizer.from_pretrained(root / "tokenizer")


def shape_of(cfg) -> tuple:
    return cfg.frames, cfg.height, cfg.width, cfg.max_tokens, cfg.vae_dtype, cfg.vae_batch


class WanPolicy(Policy):
    SUBFOLDERS = SUBFOLDERS

    def __init__(
        self, transformer, vae, text_encoder, tokenizer, frames: int, height: int, width: int, max_tokens: int,
        vae_dtype: str = "fp32", vae_batch: int = 1,
    ):  # fmt: skip
        super().__init__(transformer)
        # torch.nn.Module.to: diffusers warns on any cast, though the Wan VAE keeps no module in fp32
        self.vae = torch.nn.Module.to(vae, torch.bfloat16 if vae_dtype == "bf16" else torch.float32)
        self.vae.requires_grad_(False).eval()
        self.vae_batch = vae_batch
        self._prompt_cache: dict[str, torch.Tensor] | None = None
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        from grpo_zoo.models.wan_arch import vae_scales

        t_scale, s_scale = vae_scales(dict(vae.config))
        if (frames - 1) % t_scale or height % (s_scale * 2) or width % (s_scale * 2):
            raise ConfigError(
                f"model.frames/height/width: {frames}x{height}x{width} do not fit the VAE "
                f"(frames = {t_scale}k + 1, height and width multiples of {s_scale * 2})"
            )
        self.latent_shape = (vae.config.z_dim, (frames - 1) // t_scale + 1, height // s_scale, width // s_scale)

    @classmethod
    def load(cls, cfg, dtype: torch.dtype | None = None, device: torch.device | None = None) -> WanPolicy:
        """The components from cfg.path. The transformer loads in `dtype` (the training precision:
        what DeepSpeed would cast it to; None: as stored), each weight read straight into that
        dtype and, on a GPU, onto `device`: no float32 copy of a bf16 checkpoint on the host."""
        root = checked_root(cfg, cls.SUBFOLDERS)
        transformer = load_transformer(root / "transformer", cfg, dtype, device)
        return cls(transformer, *load_rest(root, device), *shape_of(cfg))  # fmt: skip

    @torch.no_grad()
    def fix_prompts(self, prompts: list[str]) -> None:
        """Encode the run's prompts once (ENCODE_BATCH at a time, where the encoder is) into a host
        cache and free the text encoder: UMT5-XXL's 11.4 GB leave the GPU for the rest of the run."""
        unique = list(dict.fromkeys(prompts))
        cache = {}
        for i in range(0, len(unique), ENCODE_BATCH):
            chunk = unique[i : i + ENCODE_BATCH]
            cache.update(zip(chunk, self.encode(chunk).cpu(), strict=True))
        self._prompt_cache, self.text_encoder = cache, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        if self._prompt_cache is not None:  # the run's prompts, encoded once (fix_prompts)
            missing = [p for p in prompts if p not in self._prompt_cache]
            if missing:
                raise KeyError(f"prompt {missing[0]!r} is not among the run's prompts (fix_prompts)")
            device = next(self.net.parameters()).device
            return torch.stack([self._prompt_cache[p] for p in prompts]).to(device)
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
        """vae_batch videos at a time in the VAE's dtype (model.vae_batch, model.vae_dtype): its
        activations at full resolution grow with the batch, the videos themselves are small."""
        c = self.vae.config
        mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1).to(latents.device)
        std = torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1).to(latents.device)
        x = latents.float() * std + mean
        dtype = next(self.vae.parameters()).dtype
        videos = [
            self.vae.decode(x[i : i + self.vae_batch].to(dtype), return_dict=False)[0].float().clamp(-1, 1)
            for i in range(0, len(x), self.vae_batch)
        ]
        return torch.cat(videos)
