"""Export a run's trained weights for diffusers: `python -m grpo_zoo.export RUN [--out DIR] [--checkpoint NAME] [--weights ema|raw]`.

A LoRA run writes its adapter as diffusers' Wan LoRA file (`pytorch_lora_weights.safetensors`,
WanPipeline.save_lora_weights, the rank and alpha in its metadata), which
`transformer.load_lora_adapter(DIR, weight_name="pytorch_lora_weights.safetensors")` (or
`WanPipeline.load_lora_weights`) loads onto the run's base transformer; a full fine-tuning run writes the whole transformer
(`DIR/transformer`, save_pretrained). The weights are those the run evaluates: its EMA where it
keeps one (`--weights raw` for the optimizer's), from the newest checkpoint (or `--checkpoint
step-N`). DIR/export.json says what was exported from where. DIR defaults to RUN/export; it
must not exist yet (nothing is overwritten) and is written whole or not at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from grpo_zoo.errors import ArgParser, ConfigError, cli, readable_dir
from grpo_zoo.runs.files import check_new_dir, staged_dir


def checkpoint_dir(run, name: str | None) -> Path:
    if name is None:
        found = run.latest_checkpoint()
        if found is None:
            raise ConfigError(
                f"run_dir: {run.path} has no checkpoint yet (it saves one every checkpoint_every iterations)"
            )
        return found
    path = run.checkpoints / name
    if not name.startswith("step-") or not path.is_dir():
        have = ", ".join(p.name for p in sorted(run.checkpoints.glob("step-*"))) or "none"
        raise ConfigError(f"--checkpoint: no checkpoint {name!r} in {run.checkpoints} (have: {have})")
    return path


def trained_policy(run_dir: str | Path, checkpoint: str | None, weights: str):
    """(config, the run's policy with the checkpoint's weights, checkpoint path, weights taken)."""
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build
    from grpo_zoo.models import load_policy
    from grpo_zoo.runs import RunDir

    run = RunDir(run_dir)
    run.check_state()
    cfg = build(RunConfig, {**run.config(), "run_dir": str(run_dir)})
    if cfg.engine.zero_stage == 3:
        raise ConfigError(f"run_dir: {run_dir} trained with ZeRO-3 (sharded weights); consolidate its checkpoint first")
    ckpt = checkpoint_dir(run, checkpoint)
    states_file = ckpt / "engine" / "mp_rank_00_model_states.pt"
    trainer_file = ckpt / "trainer_rank0.pt"
    for f in (states_file, trainer_file):
        if not f.is_file():
            raise ConfigError(f"--checkpoint: {ckpt} lacks {f.relative_to(ckpt)}")
    policy = load_policy(cfg.model, torch.float32, torch.device("cpu"))
    module = torch.load(states_file, map_location="cpu", weights_only=False)["module"]
    trainable = {n: p for n, p in policy.net.named_parameters() if p.requires_grad}
    missing = [n for n in trainable if n not in module]
    if missing:
        raise ConfigError(f"--checkpoint: {states_file} lacks trained weights ({missing[0]}, ...)")
    policy.net.load_state_dict(
        {k: v for k, v in module.items() if k in dict(policy.net.named_parameters())}, strict=False
    )
    ema = torch.load(trainer_file, map_location="cpu", weights_only=False).get("ema")
    shadow = (ema or {}).get("shadow", ema) if ema else None
    if weights == "ema" and not shadow:
        raise ConfigError(f"--weights: the run keeps no EMA (optim.ema_decay {cfg.optim.ema_decay}); use --weights raw")
    taken = "raw"
    if weights in ("ema", "auto") and shadow:
        with torch.no_grad():
            for name, value in shadow.items():
                trainable[name].copy_(value.float())
        taken = "ema"
    return cfg, policy, ckpt, taken


def lora_layers(net) -> dict[str, torch.Tensor]:
    """The adapter's weights under diffusers' names (peft's, without the PeftModel prefix)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(net)
    prefix = "base_model.model."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v.detach().contiguous() for k, v in state.items()}


def export(
    run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None, weights: str = "auto"
) -> Path:
    run_dir = Path(run_dir)
    out = check_new_dir(run_dir / "export" if out is None else out, "--out")
    cfg, policy, ckpt, taken = trained_policy(run_dir, checkpoint, weights)
    with staged_dir(out, "--out") as staging:
        if cfg.model.lora_rank > 0:
            from diffusers import WanPipeline

            meta = {
                "r": cfg.model.lora_rank,
                "lora_alpha": cfg.model.lora_alpha,
                "target_modules": list(cfg.model.lora_targets),
            }
            WanPipeline.save_lora_weights(
                staging, transformer_lora_layers=lora_layers(policy.net), transformer_lora_adapter_metadata=meta
            )
            what = "lora"
        else:
            policy.net.save_pretrained(staging / "transformer")
            what = "transformer"
        record = {
            "run": str(run_dir),
            "checkpoint": ckpt.name,
            "weights": taken,
            "format": what,
            "base_model": cfg.model.path,
            "backend": cfg.model.backend,
            "algorithm": cfg.algorithm.name,
        }
        (staging / "export.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.export", description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="a new directory (default RUN/export)")
    p.add_argument("--checkpoint", default=None, help="step-N (default: the newest)")
    p.add_argument(
        "--weights", default="auto", choices=("auto", "ema", "raw"), help="auto: the EMA where the run keeps one"
    )
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    readable_dir(args.run_dir, "run_dir")
    path = export(args.run_dir, args.out, args.checkpoint, args.weights)
    print(f"exported: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
