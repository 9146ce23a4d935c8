"""Pretrain the toy model by flow matching: `python -m grpo_zoo.toy.pretrain [CONFIG.yaml] [key=value ...]`.

The base is deliberately imperfect, so every reward has headroom for RL:
- captions are corrupted: each of color, shape and direction is replaced by another
  word with probability `label_noise` (the corrupted caption stays a train prompt), so
  the model follows prompts only partly;
- objects move slower than asked: a share `static_prob` of the videos is static and the
  rest move at a speed factor drawn uniformly in [`slow_min`, 1];
- the held-out `test` prompts are never shown, and training is short.

Writes the checkpoint (transformer/ with save_pretrained, text encoder, tokenizer),
the config that produced it (`pretrain.yaml`), and its loss curve (`loss.csv`, `loss.png`).
"""

from __future__ import annotations

import csv
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from tqdm import tqdm

from grpo_zoo.config.schema import apply_overrides, build, describe, load_yaml, num, path, to_dict
from grpo_zoo.errors import ConfigError, cli
from grpo_zoo.flow.schedules import NUM_TRAIN_TIMESTEPS, shift_sigmas
from grpo_zoo.toy import world
from grpo_zoo.toy.model import (
    CHECKPOINT_DIR,
    SIGMA_FLOOR,
    PromptEncoder,
    new_transformer,
    prediction_of,
    save_checkpoint,
)


@dataclass
class PretrainConfig:
    out: str = path(str(CHECKPOINT_DIR / "toy-base"), "dir")
    """Checkpoint directory to write (replaced atomically at the end)."""
    overwrite: bool = False
    """Replace a checkpoint that already exists at `out` (the shipped toy-base included); off, an
    existing non-empty folder is refused before any compute. A folder that is not a checkpoint
    (no meta.json) is never replaced."""
    steps: int = num(2000, ge=1)
    """Optimizer steps."""
    batch_size: int = num(48, ge=1)
    """Videos per step."""
    lr: float = num(1e-3, gt=0)
    """Peak AdamW learning rate (linear warmup, cosine decay)."""
    warmup: int = num(100, ge=0)
    """Warmup steps."""
    weight_decay: float = num(0.01, ge=0)
    """AdamW weight decay."""
    label_noise: float = num(0.3, ge=0, le=1)
    """Probability that each caption attribute (color, shape, direction) is replaced."""
    static_prob: float = num(0.3, ge=0, le=1)
    """Share of training videos whose object does not move."""
    slow_min: float = num(0.2, ge=0, le=1)
    """Moving objects go at SPEED times a factor drawn in [slow_min, 1]."""
    cfg_dropout: float = num(0.1, ge=0, le=1)
    """Probability of an empty caption (for classifier-free guidance)."""
    timestep_shift: float = num(3.0, gt=0)
    """Half the training sigmas are drawn uniformly, half shifted by this (as sampling is)."""
    seed: int = 0
    """Seed of the model init, the data and the noise."""
    init: str | None = None
    """Start from this checkpoint (a name or directory) instead of random weights."""
    data_seed_offset: int = num(0, ge=0)
    """Added to the data seed (so a continued pretraining sees fresh samples)."""
    ema: float = num(0.0, ge=0, lt=1)
    """Decay of an exponential moving average of the weights, saved instead of the raw ones (0 = off)."""
    heads: int | None = num(None, ge=1)
    """Attention heads (width = heads * head_dim); None keeps the toy default. From scratch only."""
    head_dim: int | None = num(None, ge=6)
    """Channels per attention head (RoPE splits them over time, height and width); None keeps the toy default. From scratch only."""
    ffn_dim: int | None = num(None, ge=1)
    """Feed-forward width; None keeps the toy default. From scratch only."""
    layers: int | None = num(None, ge=1)
    """Transformer blocks; None keeps the toy default. From scratch only."""
    patch: list[int] | None = None
    """Patch size [frames, height, width], each dividing the video's; None keeps the toy default. From scratch only."""
    prediction: Literal["velocity", "sample"] | None = None
    """What the transformer predicts (see grpo_zoo.toy.model): None = the init's, or `sample` from scratch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`cpu`, `cuda` or `auto` (cuda when available). Data and noise are drawn on the CPU either way."""
    save_every: int = num(0, ge=0)
    """Also write the checkpoint every this many steps (0 = only at the end), so a stopped run keeps its progress."""


def corrupt(prompt: world.Prompt, p: float, gen: torch.Generator) -> world.Prompt:
    """Replace each attribute with probability p, keeping the caption a train prompt."""
    while True:
        u = torch.rand(3, generator=gen)
        c = int(torch.randint(len(world.COLORS), (1,), generator=gen)) if u[0] < p else prompt.color
        s = int(torch.randint(len(world.SHAPES), (1,), generator=gen)) if u[1] < p else prompt.shape
        d = int(torch.randint(len(world.DIRECTIONS), (1,), generator=gen)) if u[2] < p else prompt.direction
        out = world.Prompt(c, s, d)
        if not out.held_out:
            return out


def batch(cfg: PretrainConfig, gen: torch.Generator, device=None) -> tuple[torch.Tensor, list[str]]:
    train = world.prompts("train")
    idx = torch.randint(len(train), (cfg.batch_size,), generator=gen)
    truth = [train[i] for i in idx]
    factor = cfg.slow_min + (1 - cfg.slow_min) * torch.rand(cfg.batch_size, generator=gen)
    factor[torch.rand(cfg.batch_size, generator=gen) < cfg.static_prob] = 0.0
    videos = world.render(truth, gen, speed=world.SPEED * factor, device=device)
    captions = [corrupt(p, cfg.label_noise, gen).text for p in truth]
    drop = torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    return videos, captions


def check_out(cfg: PretrainConfig) -> None:
    """Refuse, before any compute, to write over what the user owns: an existing folder at `out`
    needs overwrite=true and must be a checkpoint (this command's own kind of folder)."""
    out = Path(cfg.out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a checkpoint folder; choose another out")
    if not (out / "meta.json").is_file():
        raise ConfigError(
            f"out: {out} holds files but is not a checkpoint (no meta.json); pretraining never replaces a folder "
            "it did not write: choose another out"
        )
    if not cfg.overwrite:
        raise ConfigError(
            f"out: {out} already holds a checkpoint; pass overwrite=true to replace it or choose another out"
        )


def pretrain(cfg: PretrainConfig) -> Path:
    check_out(cfg)
    arch = {
        "num_attention_heads": cfg.heads,
        "attention_head_dim": cfg.head_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.layers,
        "patch_size": tuple(cfg.patch) if cfg.patch is not None else None,
    }
    arch = {k: v for k, v in arch.items() if v is not None}
    if cfg.init and arch:
        raise ConfigError(
            "heads, head_dim, ffn_dim, layers, patch: set them only when pretraining from scratch (init is set)"
        )
    if cfg.head_dim is not None and cfg.head_dim % 2:
        raise ConfigError(f"head_dim: {cfg.head_dim} must be even (RoPE rotates channel pairs)")
    if cfg.patch is not None:
        sizes = (world.FRAMES, world.SIZE, world.SIZE)
        if len(cfg.patch) != 3 or any(p < 1 or n % p for p, n in zip(cfg.patch, sizes)):
            raise ConfigError(f"patch: {list(cfg.patch)} must be three sizes that divide the video's {list(sizes)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda is not available here (use cpu or auto)")
    gen = torch.Generator().manual_seed(cfg.seed + cfg.data_seed_offset)
    if cfg.init:
        from grpo_zoo.toy.model import load_checkpoint

        transformer, encoder = load_checkpoint(cfg.init)
        if cfg.prediction not in (None, prediction_of(cfg.init)):
            raise ConfigError(f"prediction: {cfg.init!r} predicts {prediction_of(cfg.init)}; pretrain it as that")
        cfg.prediction = prediction_of(cfg.init)
    else:
        cfg.prediction = cfg.prediction or "sample"
        transformer = new_transformer(cfg.seed, **arch)
        encoder = PromptEncoder()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    transformer.to(device)
    encoder.to(device)
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(transformer, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    rows = []
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="pretrain", dynamic_ncols=True)
    for step in bar:
        x0, captions = batch(cfg, gen, device)
        noise = torch.randn(x0.shape, generator=gen)
        u = torch.rand(len(x0), generator=gen)
        shifted = torch.rand(len(x0), generator=gen) < 0.5
        sigma = torch.where(shifted, shift_sigmas(u, cfg.timestep_shift), u).clamp(1e-3, 1.0)
        x0, noise, sigma = x0.to(device), noise.to(device), sigma.to(device)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        out = transformer(xt, sigma * NUM_TRAIN_TIMESTEPS, encoder(captions), return_dict=False)[0].float()
        if cfg.prediction == "velocity":
            loss = torch.nn.functional.mse_loss(out, noise - x0)
        else:  # the velocity loss (x0 - x0_hat) / sigma, its weight capped below SIGMA_FLOOR
            loss = ((out - x0) / s.clamp_min(SIGMA_FLOOR)).pow(2).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite pretraining loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(transformer)
        rows.append({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0], "seconds": time.time() - start})
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            write(cfg, transformer if ema is None else ema.module, encoder, rows, start)
    return write(cfg, transformer if ema is None else ema.module, encoder, rows, start)


def write(cfg: PretrainConfig, transformer, encoder: PromptEncoder, rows: list[dict], start: float) -> Path:
    """Replace the checkpoint at cfg.out atomically with these weights, the config and the loss so far."""
    out = Path(cfg.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "prediction": cfg.prediction,
        "pretrain_seconds": round(time.time() - start, 1),
        "steps": len(rows),
        "final_loss": rows[-1]["loss"],
    }
    if cfg.init:
        from grpo_zoo.toy.model import resolve

        init_meta = resolve(cfg.init) / "meta.json"
        if init_meta.exists():
            import json

            meta["init"] = json.loads(init_meta.read_text())
    save_checkpoint(tmp, transformer, encoder, meta)
    (tmp / "pretrain.yaml").write_text(
        "# python -m grpo_zoo.toy.pretrain grpo_zoo/toy/checkpoints/toy-base/pretrain.yaml overwrite=true\n"
        + yaml.safe_dump(to_dict(cfg), sort_keys=False)
    )
    with open(tmp / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_loss(rows, tmp / "loss.png")
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def plot_loss(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(df["step"], df["loss"], alpha=0.3, label="loss")
    ax.plot(df["step"], df["loss"].rolling(50, min_periods=1).mean(), label="loss (50-step mean)")
    ax.set(xlabel="optimizer step", ylabel="flow-matching MSE", title="toy-base pretraining", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        print("\n".join(describe(PretrainConfig)))
        return 0
    data: dict = {}
    if argv and not argv[0].count("="):
        data = load_yaml(argv.pop(0))
    cfg = build(PretrainConfig, apply_overrides(data, argv))
    out = pretrain(cfg)
    print(f"checkpoint written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
