"""The toy video world: a colored shape moving in a direction, with its prompt.

Videos are [B, 3, F, H, W] tensors in [-1, 1] (F = 8 frames of 16 x 16 RGB), black
background, one anti-aliased shape of radius R moving SPEED pixels per frame. Prompts
come from a small grammar, "a {color} {shape} moving {direction}": 6 colors x 4 shapes x
4 directions = 96 prompts, of which 16 (a fixed rule) are held out: never seen in
pretraining, they form the `test` set; the other 80 are `train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRAMES, SIZE = 8, 16
RADIUS = 3.0
SPEED = 0.8
"""Pixels per frame the prompt asks for; (FRAMES - 1) * SPEED is the full travel."""
SUPERSAMPLE = 4

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.12, 0.1),
    "green": (0.1, 0.9, 0.15),
    "blue": (0.15, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "magenta": (1.0, 0.1, 0.9),
    "cyan": (0.1, 0.9, 0.95),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
COLOR_NAMES, DIRECTION_NAMES = tuple(COLORS), tuple(DIRECTIONS)
PALETTE = torch.tensor(list(COLORS.values()))
DIR_VECTORS = torch.tensor(list(DIRECTIONS.values()))


@dataclass(frozen=True)
class Prompt:
    """One prompt of the grammar, by index into COLORS, SHAPES and DIRECTIONS."""

    color: int
    shape: int
    direction: int

    @property
    def text(self) -> str:
        return f"a {COLOR_NAMES[self.color]} {SHAPES[self.shape]} moving {DIRECTION_NAMES[self.direction]}"

    @property
    def held_out(self) -> bool:
        return (self.color + self.shape + self.direction) % 6 == 0

    @classmethod
    def parse(cls, text: str) -> Prompt:
        words = text.strip().lower().split()
        if len(words) != 5 or words[0] != "a" or words[3] != "moving":
            raise ValueError(f"not a toy prompt: {text!r} (expected 'a <color> <shape> moving <direction>')")
        try:
            return cls(COLOR_NAMES.index(words[1]), SHAPES.index(words[2]), DIRECTION_NAMES.index(words[4]))
        except ValueError:
            raise ValueError(f"not a toy prompt: {text!r} (unknown word)") from None


ALL_PROMPTS = tuple(
    Prompt(c, s, d) for c in range(len(COLORS)) for s in range(len(SHAPES)) for d in range(len(DIRECTIONS))
)
SPLITS = {
    "train": tuple(p for p in ALL_PROMPTS if not p.held_out),
    "test": tuple(p for p in ALL_PROMPTS if p.held_out),
}


def prompts(split: str) -> tuple[Prompt, ...]:
    """The `train` (80) or `test` (16, held out of pretraining) prompts."""
    return SPLITS[split]


def _grid(size: int, ss: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss
    return torch.meshgrid(c, c, indexing="ij")  # (y, x) pixel-centre coordinates


def all_shape_masks(cx: torch.Tensor, cy: torch.Tensor, radius: float = RADIUS) -> torch.Tensor:
    """Anti-aliased coverage [N, S, H, W] in [0, 1] of every shape centred at (cx, cy) [N]."""
    gy, gx = (g.to(cx.device) for g in _grid(SIZE, SUPERSAMPLE))
    dx = gx[None] - cx[:, None, None]
    dy = gy[None] - cy[:, None, None]
    r = radius
    inside = torch.stack(
        [
            dx**2 + dy**2 <= r**2,
            torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r,
            (dy <= 0.8 * r) & (dx.abs() <= (dy + r) / 1.8),
            ((dx.abs() <= 0.38 * r) & (dy.abs() <= r)) | ((dy.abs() <= 0.38 * r) & (dx.abs() <= r)),
        ],
        dim=1,
    ).float()  # [N, S, h, w] in SHAPES order
    return torch.nn.functional.avg_pool2d(inside, SUPERSAMPLE)


def shape_masks(shape: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, radius: float = RADIUS) -> torch.Tensor:
    """Anti-aliased coverage [N, H, W] of shapes (indices [N]) centred at (cx, cy)."""
    return all_shape_masks(cx, cy, radius)[torch.arange(len(shape), device=shape.device), shape]


def trajectories(
    directions: torch.Tensor, speed: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (cx, cy) [B, F] of shapes moving `speed` px/frame, kept inside the frame."""
    b = len(directions)
    v = DIR_VECTORS[directions] * speed[:, None]  # [B, 2]
    travel = v * (FRAMES - 1)
    margin = RADIUS + 0.5
    lo = margin - travel.clamp(max=0)
    hi = SIZE - margin - travel.clamp(min=0)
    start = lo + (hi - lo) * torch.rand(b, 2, generator=gen)
    f = torch.arange(FRAMES, dtype=torch.float32)
    centres = start[:, None, :] + f[None, :, None] * v[:, None, :]
    return centres[..., 0], centres[..., 1]


def render(
    prompts: list[Prompt] | tuple[Prompt, ...],
    gen: torch.Generator,
    speed: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Videos [B, 3, F, H, W] in [-1, 1] showing each prompt (speed in px/frame, default SPEED).

    Random draws come from `gen` on the CPU; `device` only says where the pixels are drawn
    (the same videos, faster on a GPU)."""
    b = len(prompts)
    color = torch.tensor([p.color for p in prompts])
    shape = torch.tensor([p.shape for p in prompts])
    direction = torch.tensor([p.direction for p in prompts])
    speed = torch.full((b,), SPEED) if speed is None else speed.float()
    cx, cy = trajectories(direction, speed, gen)
    if device is not None:
        cx, cy = cx.to(device), cy.to(device)
    shapes = shape.repeat_interleave(FRAMES).to(cx.device)
    masks = shape_masks(shapes, cx.flatten(), cy.flatten()).view(b, FRAMES, SIZE, SIZE)
    rgb = PALETTE.to(cx.device)[color.to(cx.device)][:, :, None, None, None] * masks[:, None]  # [B, 3, F, H, W]
    return rgb * 2 - 1
