"""Policy backends by name: `toy` (the toy world's tiny Wan DiT), `wan` (diffusers Wan2.1),
`wan2.2-ti2v` and `wan2.2-a14b` (diffusers Wan2.2: grpo_zoo/models/wan22.py)."""

from __future__ import annotations

from grpo_zoo.errors import ConfigError
from grpo_zoo.models.base import Policy

BACKENDS = ("toy", "wan", "wan2.2-ti2v", "wan2.2-a14b")


def load_policy(cfg, dtype=None, device=None) -> Policy:
    """A Policy from a ModelConfig (`backend`, `path`, ...). A wan transformer loads in `dtype`
    (None: as stored) straight onto `device` (None: the host); the toy's loads as it is shipped."""
    if cfg.backend == "toy":
        from grpo_zoo.models.toy import ToyPolicy

        return ToyPolicy.load(cfg)
    if cfg.backend == "wan":
        from grpo_zoo.models.wan import WanPolicy

        return WanPolicy.load(cfg, dtype, device)
    if cfg.backend == "wan2.2-ti2v":
        from grpo_zoo.models.wan22 import TI2VPolicy

        return TI2VPolicy.load(cfg, dtype, device)
    if cfg.backend == "wan2.2-a14b":
        from grpo_zoo.models.wan22 import A14BPolicy

        return A14BPolicy.load(cfg, dtype, device)
    raise ConfigError(f"model.backend: unknown backend {cfg.backend!r} (choose one of {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Policy", "load_policy"]
