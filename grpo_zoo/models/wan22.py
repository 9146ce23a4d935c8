"""The Wan2.2 backends: `wan2.2-ti2v` (Wan2.2-TI2V-5B) and `wan2.2-a14b` (Wan2.2-T2V-A14B).

Both load a local diffusers directory of Wan-AI/Wan2.2-*-Diffusers' layout and sample as
diffusers' WanPipeline does (its `expand_timesteps`, `transformer_2`, `boundary_ratio` and
`guidance_scale_2`; diffusers 0.42 pipelines/wan/pipeline_wan.py):

- TI2V-5B has its own VAE (48 channels, 16x in space: it patchifies 2x2 before its 8x
  downsampling) and takes one timestep per latent token ([B, F' H'/2 W'/2]: WanPipeline's
  expand_timesteps; in text-to-video every token of a video has its step's timestep).
- T2V-A14B has two transformers of one shape: `transformer` (the high-noise expert) serves the
  timesteps t >= boundary x 1000, `transformer_2` (low noise) the others, each with its own CFG
  scale (4.0 and 3.0 in the release). The policy's net holds both (`Experts`) and routes each
  row by its own timestep, so a rollout step, a trained transition and its KL reference all go
  to the expert their sigma selects. `model.experts` names the experts that train (LoRA or full
  fine-tuning on each); an item whose sigma selects a frozen expert is not trained
  (`Policy.trains_at`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from grpo_zoo.errors import ConfigError
from grpo_zoo.flow.schedules import NUM_TRAIN_TIMESTEPS
from grpo_zoo.models.base import cfg_multiplier
from grpo_zoo.models.wan import SUBFOLDERS, WanPolicy, checked_root, load_rest, load_transformer, shape_of


def model_index(root: Path) -> dict:
    """The directory's model_index.json (WanPipeline's registered config), {} where absent."""
    path = root / "model_index.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"model.path: {path} is not valid JSON") from None
    return data if isinstance(data, dict) else {}


DEFAULT_BOUNDARY = 0.875
"""Wan2.2-T2V-A14B's boundary ratio (Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py:36, and its
diffusers model_index.json): for estimates of a model whose directory is not here."""


def is_high(sigma: torch.Tensor, boundary: float) -> torch.Tensor:
    """[N] bool: the high-noise expert serves noise level sigma (timestep 1000 sigma in float32 >=
    boundary x 1000, WanPipeline's switch)."""
    return sigma.to(torch.float32) * NUM_TRAIN_TIMESTEPS >= boundary * NUM_TRAIN_TIMESTEPS


def configured_boundary(model) -> float:
    """The boundary ratio a run will use, without loading it: model.boundary, else the directory's
    model_index.json, else the release's."""
    if model.boundary is not None:
        return float(model.boundary)
    ratio = model_index(Path(model.path)).get("boundary_ratio")
    return float(ratio) if isinstance(ratio, int | float) and not isinstance(ratio, bool) else DEFAULT_BOUNDARY


def trained_steps(model, sigma: torch.Tensor) -> torch.Tensor:
    """[N] bool: an item at noise level sigma trains (its expert is among model.experts)."""
    high = is_high(sigma, configured_boundary(model))
    return (high & ("high" in model.experts)) | (~high & ("low" in model.experts))


def boundary_ratio(cfg, root: Path) -> float:
    """model.boundary, else the directory's boundary_ratio (ConfigError where neither is in (0, 1))."""
    ratio = cfg.boundary if cfg.boundary is not None else model_index(root).get("boundary_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise ConfigError(
            f"model.boundary: a boundary ratio in (0, 1) is needed (model_index.json of {root} gives {ratio!r})"
        )
    return float(ratio)


class TI2VPolicy(WanPolicy):
    """Wan2.2-TI2V-5B in text-to-video: the Wan2.1 stack with its own VAE and per-token timesteps."""

    def raw_velocity(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """One forward with the step's timestep on every latent token, as WanPipeline's
        expand_timesteps passes it ([B, F' x H'/p x W'/p], float32)."""
        p = self.net_config()["patch_size"]
        tokens = x.shape[2] // p[0] * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
        t = (sigma.to(torch.float32) * NUM_TRAIN_TIMESTEPS)[:, None].expand(len(x), tokens)
        return self._model()(x, t, emb.to(x.dtype), return_dict=False)[0]

    def net_config(self) -> dict:
        return shape(getattr(self.net, "module", self.net))


class Experts(torch.nn.Module):
    """Two transformers of one shape as one module: row b goes to `high` where its timestep
    t_b >= boundary (x 1000), else to `low` (WanPipeline's switch, per row)."""

    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, boundary: float):
        super().__init__()
        self.high, self.low, self.boundary = high, low, boundary

    def is_high(self, t: torch.Tensor) -> torch.Tensor:
        """[B] bool of timesteps t (1000 sigma, float32)."""
        return t >= self.boundary * NUM_TRAIN_TIMESTEPS

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, return_dict: bool = False):
        high = self.is_high(t)
        if high.all() or not high.any():
            return (self.high if high.all() else self.low)(x, t, emb, return_dict=False)
        out = torch.empty_like(x)
        for mask, expert in ((high, self.high), (~high, self.low)):
            out[mask] = expert(x[mask], t[mask], emb[mask], return_dict=False)[0]
        return (out,)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Both experts without their LoRA adapters (the KL reference)."""
        with contextlib.ExitStack() as stack:
            for expert in (self.high, self.low):
                if hasattr(expert, "disable_adapter"):
                    stack.enter_context(expert.disable_adapter())
            yield


def shape(transformer) -> dict:
    """A transformer's architecture: its config without the bookkeeping keys (_name_or_path, ...)."""
    base = transformer.get_base_model() if hasattr(transformer, "get_base_model") else transformer
    return {k: v for k, v in dict(base.config).items() if not k.startswith("_")}


class A14BPolicy(WanPolicy):
    """Wan2.2-T2V-A14B: the high-noise and low-noise experts, switched at the boundary timestep."""

    SUBFOLDERS = (*SUBFOLDERS, "transformer_2")

    @classmethod
    def load(cls, cfg, dtype: torch.dtype | None = None, device: torch.device | None = None) -> A14BPolicy:
        root = checked_root(cfg, cls.SUBFOLDERS)
        ratio = boundary_ratio(cfg, root)
        high, low = (
            load_transformer(root / folder, cfg, dtype, device, train=name in cfg.experts)
            for name, folder in (("high", "transformer"), ("low", "transformer_2"))
        )
        if shape(high) != shape(low):
            raise ConfigError(f"model.path: {root}'s transformer and transformer_2 differ in shape (not an A14B pair)")
        policy = cls(Experts(high, low, ratio), *load_rest(root, device), *shape_of(cfg))
        policy.trained, policy.low_guidance = tuple(cfg.experts), cfg.low_noise_guidance
        return policy

    def experts(self) -> Experts:
        return getattr(self.net, "module", self.net)

    def trains_at(self, sigma: torch.Tensor) -> torch.Tensor:
        high = is_high(sigma, self.experts().boundary)
        return (high & ("high" in self.trained)) | (~high & ("low" in self.trained))

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor, null_emb: torch.Tensor | None, guidance: float
    ) -> torch.Tensor:
        """v_u + g_b (v_c - v_u) with g_b the guidance of row b's expert (WanPipeline's guidance_scale
        for the high-noise expert, guidance_scale_2 for the low-noise one)."""
        if cfg_multiplier(guidance, null_emb) == 1 or self.low_guidance is None:
            return super().velocity(x, sigma, emb, null_emb, guidance)
        null = null_emb.expand(len(x), *null_emb.shape[1:])
        both = self.raw_velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([emb, null]))
        v_c, v_u = both.chunk(2)
        high = is_high(sigma, self.experts().boundary)
        g = torch.where(high, float(guidance), float(self.low_guidance)).to(v_c.dtype)
        return v_u + g.view(-1, *([1] * (v_c.dim() - 1))) * (v_c - v_u)
