"""Rewards and eval metrics of the toy world, computed from pixels by analytic detectors.

Every function takes videos [B, 3, F, H, W] in [-1, 1] and the prompt texts, and returns
one score per video in [0, 1] (higher is better), deterministically and batched.

Detectors: the object mask m (soft, from the brightest channel over the black
background), its per-frame area and centroid, its mean color, and its best-matching
shape template (the world's own renderer, centred at the centroid).

Rewards (training signals, the paper's three axes):
- `toy_motion`: temporal dynamics. Net centroid travel from first to last frame over the
  travel a prompt asks for, capped at 1, times the object's presence.
- `toy_aesthetic`: a sharp, saturated object on a clean background. Mean of mask
  sharpness (few half-covered pixels), object saturation and background darkness,
  times presence.
- `toy_prompt`: prompt following. Mean of color match (palette posterior of the mean
  object color), shape match (template posterior) and direction match (cosine of the
  travel with the asked direction, once it moved a quarter of the asked travel), times
  presence.
- `toy_hps`: the default training reward, 0.4 prompt + 0.3 aesthetic + 0.3 motion.
- `toy_still`: temporal stillness, exp(-d / STILL_SCALE) times presence, with d the mean absolute
  change of the frame between consecutive frames. It pulls against `toy_motion` (and the
  direction part of `toy_prompt`): a frozen object scores 1, the world's own moving videos about
  0.25, the base about 0.35. A reward that a static video maximises, as video consistency
  rewards are (reward hacking toward still videos): train on it and watch the others fall
  (the report's reward-hacking view), or weigh it against `toy_motion`.

Eval metrics mirroring Table 1's columns (VBench's names) on this world:
- `aesthetic_quality`: vivid color and contrast of the object against the background.
- `imaging_quality`: absence of noise: the median Laplacian magnitude per frame.
- `subject_consistency`: cosine similarity of the object-centred crop across frames
  (to the first frame and to the previous one, as VBench does with DINO features).
- `object_class`: the detected shape is the prompt's (hard accuracy, 0 or 1).
"""

from __future__ import annotations

import torch

from grpo_zoo.toy import world

PRESENCE_WIDTH = 0.6
"""Std of log(area / expected area) that still counts as one object."""
CROP = 9
STILL_SCALE = 0.01
"""Frame-to-frame change (mean absolute, pixels in [0, 1]) at which `toy_still` falls to 1/e."""


def _prompt_indices(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parsed = [world.Prompt.parse(p) for p in prompts]
    return (
        torch.tensor([p.color for p in parsed]),
        torch.tensor([p.shape for p in parsed]),
        torch.tensor([p.direction for p in parsed]),
    )


def _expected_area() -> float:
    masks = world.shape_masks(torch.arange(len(world.SHAPES)), torch.full((4,), 8.0), torch.full((4,), 8.0))
    return float(masks.sum((1, 2)).mean())


EXPECTED_AREA = _expected_area()


class Detections:
    """What the detectors see in a batch of videos (computed once, shared by every score)."""

    def __init__(self, videos: torch.Tensor):
        img = ((videos.float() + 1) / 2).clamp(0, 1)  # [B, 3, F, H, W]
        self.img = img
        bright = img.max(dim=1).values  # [B, F, H, W]
        self.mask = ((bright - 0.15) / 0.35).clamp(0, 1)
        b, f, h, w = self.mask.shape
        self.area = self.mask.sum((2, 3))  # [B, F]
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        denom = self.area.clamp_min(1e-6)
        self.cx = (self.mask * xs).sum((2, 3)) / denom
        self.cy = (self.mask * ys).sum((2, 3)) / denom
        log_ratio = torch.log(self.area.clamp_min(1e-3) / EXPECTED_AREA)
        self.presence_f = torch.exp(-(log_ratio**2) / (2 * PRESENCE_WIDTH**2))  # [B, F]
        self.presence = self.presence_f.mean(1)
        wsum = self.mask.sum((1, 2, 3)).clamp_min(1e-6)
        self.color = (img * self.mask[:, None]).sum((2, 3, 4)) / wsum[:, None]  # [B, 3]
        self.travel = torch.stack([self.cx[:, -1] - self.cx[:, 0], self.cy[:, -1] - self.cy[:, 0]], 1)  # [B, 2]
        self._shape_post: torch.Tensor | None = None

    @property
    def saturation(self) -> torch.Tensor:
        """[B]: (max - min) / max of the mean object color, in [0, 1]."""
        c = self.color
        return ((c.max(1).values - c.min(1).values) / c.max(1).values.clamp_min(1e-3)).clamp(0, 1)

    @property
    def shape_posterior(self) -> torch.Tensor:
        """[B, F, S]: softmax over shapes of the soft IoU between mask and centred template."""
        if self._shape_post is None:
            b, f = self.area.shape
            templates = world.all_shape_masks(self.cx.flatten(), self.cy.flatten())
            templates = templates.view(b, f, len(world.SHAPES), world.SIZE, world.SIZE)
            m = self.mask[:, :, None]
            iou = torch.minimum(m, templates).sum((3, 4)) / torch.maximum(m, templates).sum((3, 4)).clamp_min(1e-6)
            self._shape_post = torch.softmax(iou / 0.05, dim=-1)
        return self._shape_post

    def crops(self) -> torch.Tensor:
        """Object-centred crops [B, F, 3 * CROP * CROP] (zero-padded at the borders)."""
        b, _, f, h, w = self.img.shape
        pad = CROP // 2
        padded = torch.nn.functional.pad(self.img, (pad, pad, pad, pad))
        x0 = self.cx.floor().long().clamp(0, w - 1)
        y0 = self.cy.floor().long().clamp(0, h - 1)
        ar = torch.arange(CROP)
        pix = padded.permute(0, 2, 3, 4, 1)  # [B, F, H + 2 pad, W + 2 pad, 3]
        out = pix[
            torch.arange(b)[:, None, None, None],
            torch.arange(f)[None, :, None, None],
            y0[:, :, None, None] + ar[None, None, :, None],
            x0[:, :, None, None] + ar[None, None, None, :],
        ]  # [B, F, CROP, CROP, 3]
        return out.flatten(2)


def _asked_travel() -> float:
    return world.SPEED * (world.FRAMES - 1)


def motion(det: Detections) -> torch.Tensor:
    return (det.travel.norm(dim=1) / _asked_travel()).clamp(0, 1) * det.presence


def aesthetic(det: Detections) -> torch.Tensor:
    m = det.mask
    sharp = 1 - ((4 * m * (1 - m)).sum((2, 3)) / det.area.clamp_min(1.0)).mean(1).clamp(0, 1)
    sat = det.saturation
    bright = det.img.max(dim=1).values
    bg = 1 - m
    bg_level = (bright * bg).sum((1, 2, 3)) / bg.sum((1, 2, 3)).clamp_min(1e-6)
    clean = (1 - bg_level / 0.15).clamp(0, 1)
    return (sharp + sat + clean) / 3 * det.presence


def still(det: Detections) -> torch.Tensor:
    change = (det.img[:, :, 1:] - det.img[:, :, :-1]).abs().mean((1, 2, 3, 4))
    return torch.exp(-change / STILL_SCALE) * det.presence


def prompt_following(det: Detections, prompts: list[str]) -> torch.Tensor:
    color_ix, shape_ix, dir_ix = _prompt_indices(prompts)
    d2 = ((det.color[:, None, :] - world.PALETTE[None]) ** 2).sum(-1)  # [B, C]
    color = torch.softmax(-d2 / 0.02, dim=1)[torch.arange(len(prompts)), color_ix]
    shape = det.shape_posterior[torch.arange(len(prompts)), :, shape_ix].mean(1)
    travel = det.travel
    norm = travel.norm(dim=1)
    cos = (travel * world.DIR_VECTORS[dir_ix]).sum(1) / norm.clamp_min(1e-6)
    direction = cos.clamp(0, 1) * (norm / (0.25 * _asked_travel())).clamp(0, 1)
    return (color + shape + direction) / 3 * det.presence


HPS_WEIGHTS = {"toy_prompt": 0.4, "toy_aesthetic": 0.3, "toy_motion": 0.3}


def world_sized(videos: torch.Tensor) -> torch.Tensor:
    """Videos [B, 3, F, H, W] at the world's H x W (a real model's tiny test video of another
    size is area-resized first; the world's own size passes as it is)."""
    if tuple(videos.shape[-2:]) == (world.SIZE, world.SIZE):
        return videos
    import torch.nn.functional as F

    b, c, f, h, w = videos.shape
    frames = videos.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    frames = F.interpolate(frames, size=(world.SIZE, world.SIZE), mode="area")
    return frames.reshape(b, f, c, world.SIZE, world.SIZE).permute(0, 2, 1, 3, 4)


def all_rewards(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Every toy reward by name, from one pass of the detectors."""
    det = Detections(world_sized(videos))
    out = {"toy_motion": motion(det), "toy_aesthetic": aesthetic(det), "toy_prompt": prompt_following(det, prompts)}
    out["toy_hps"] = sum(w * out[k] for k, w in HPS_WEIGHTS.items())
    out["toy_still"] = still(det)
    return out


def eval_metrics(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Table 1's columns on the toy world, per video, in [0, 1]."""
    det = Detections(world_sized(videos))
    m = det.mask
    sat = det.saturation
    bright = det.img.max(dim=1).values
    fg_level = (bright * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1e-6)
    bg_level = (bright * (1 - m)).sum((1, 2, 3)) / (1 - m).sum((1, 2, 3)).clamp_min(1e-6)
    contrast = (fg_level - bg_level).clamp(0, 1)
    aesthetic_quality = (0.5 * sat + 0.5 * contrast) * det.presence

    # imaging quality: noise, as the median Laplacian magnitude (edges are too sparse to move it)
    img = det.img.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*F, 3, H, W]
    lap_k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    lap = torch.nn.functional.conv2d(torch.nn.functional.pad(img, (1, 1, 1, 1), mode="replicate"), lap_k, groups=3)
    noise = lap.abs().mean(1).flatten(1).median(dim=1).values.view(det.area.shape).mean(1)
    imaging_quality = torch.exp(-noise / 0.05)

    crops = torch.nn.functional.normalize(det.crops(), dim=-1)  # [B, F, D]
    to_first = (crops[:, 1:] * crops[:, :1]).sum(-1)
    to_prev = (crops[:, 1:] * crops[:, :-1]).sum(-1)
    subject_consistency = (0.5 * (to_first + to_prev)).mean(1).clamp(0, 1) * det.presence

    _, shape_ix, _ = _prompt_indices(prompts)
    detected = det.shape_posterior.mean(1).argmax(1)
    object_class = ((detected == shape_ix) & (det.presence > 0.5)).float()
    return {
        "aesthetic_quality": aesthetic_quality,
        "imaging_quality": imaging_quality,
        "subject_consistency": subject_consistency,
        "object_class": object_class,
    }
