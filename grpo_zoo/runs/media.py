"""Saving videos for people to look at: PNG frame grids and mp4 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3]."""
    v = ((videos.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1).numpy()


def save_grid(videos: torch.Tensor, path: str | Path, captions: list[str] | None = None, scale: int = 6) -> Path:
    """One row per video, one column per frame, nearest-neighbour upscaled, captions on the left."""
    from PIL import Image, ImageDraw

    frames = to_uint8(videos)
    b, f, h, w, _ = frames.shape
    pad, label_w = 2, (230 if captions else 0)
    cell_h, cell_w = h * scale, w * scale
    canvas = Image.new("RGB", (label_w + f * (cell_w + pad) + pad, b * (cell_h + pad) + pad), (60, 60, 60))
    draw = ImageDraw.Draw(canvas)
    for i in range(b):
        y = pad + i * (cell_h + pad)
        if captions:
            draw.text((4, y + cell_h // 2 - 6), captions[i], fill=(230, 230, 230))
        for j in range(f):
            img = Image.fromarray(frames[i, j]).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(img, (label_w + pad + j * (cell_w + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_mp4(video: torch.Tensor, path: str | Path, fps: int = 4, scale: int = 16) -> Path:
    """One video [3, F, H, W] in [-1, 1] as an H.264 mp4."""
    return write_mp4(to_uint8(video[None])[0], path, fps, scale)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int | None = None, scale: int | None = None) -> Path:
    """uint8 frames [F, H, W, 3] as an H.264 mp4 (imageio-ffmpeg's bundled ffmpeg), written to a
    temporary name and renamed. Small videos are upscaled (nearest) to at least 256 pixels high;
    the frame rate defaults to 16 fps (Wan2.1's) for long videos and 4 for short ones."""
    import os

    import imageio.v2 as imageio

    scale = scale or max(1, 256 // frames.shape[1])
    fps = fps or (16 if len(frames) > 16 else 4)
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    os.replace(tmp, path)
    return path
