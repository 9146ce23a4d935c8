"""The prepared GPU check: `python -m benchmarks.gpu [--width full|tiny] [--frames F] [--steps T] [--group G]`.

Builds Wan2.1-T2V-1.3B's transformer architecture with random weights (no download; a tiny
UMT5 text encoder of the same output width and a tiny VAE with Wan's 16 latent channels and
4x/8x compression), saves it as a diffusers directory, and runs, through the library's own
Trainer and DeepSpeed engine, one iteration (rollout, reward, update) of each of flow_grpo,
flow_grpo_fast (window 1) and flash_grpo with the paper's settings (experiments/wan2.1/
base.yaml: bf16, ZeRO-2, LoRA r16, gradient checkpointing, CFG 4.5, wan_linear noise, k in
steps 0..9) on one prompt group, over nccl on a GPU (gloo on CPU). The reward is a pixel
statistic registered here (`gpu_check_contrast`: each video's pixel standard deviation), for
any video size: HPSv3 needs its service and weights, and its cost is not what this checks.

Prints ONE JSON object: the device's name; per algorithm the MFU of the rollout forwards
and of the update (model FLOPs counted as the estimate counts them, over the measured time,
against the GPU's dense bf16 peak; null on CPU), the measured peak memory against
grpo_zoo.cost.memory's prediction, seconds per iteration against grpo_zoo.estimate's (at its
assumed MFU of 0.4), and whether the bf16 rollout and update log-probs agree (the largest
|ratio - 1| of the first minibatch, which is on-policy, against the clip range).

--width full (default) is the real 1.3B architecture at 480x832 and 33 frames (one 80 GB GPU,
a few minutes); --width tiny is a two-layer model of the same structure at 64x64 and 9
frames, for a CPU (what the tests run).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from grpo_zoo.errors import ArgParser, ConfigError, cli

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = {
    "flow_grpo": {"name": "flow_grpo", "timestep_fraction": 0.51},
    "flow_grpo_fast1": {"name": "flow_grpo_fast", "window": 1, "window_start_range": [0, 9]},
    "flash_grpo": {"name": "flash_grpo", "grouping": "iso_temporal", "rectify": True, "k_range": [0, 9]},
}
TINY_TRANSFORMER = {"num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 128, "num_layers": 2, "text_dim": 64}
SHAPES = {"full": {"height": 480, "width": 832, "frames": 33}, "tiny": {"height": 64, "width": 64, "frames": 9}}


def _contrast(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    return {"gpu_check_contrast": videos.float().flatten(1).std(1)}


def register_reward() -> None:
    from grpo_zoo import rewards

    if "gpu_check_contrast" not in rewards.names():
        rewards.register("gpu_check_contrast")(lambda: _contrast)


def write_model(
    out: Path, width: str, device: torch.device, transformer: dict | None = None, vae_dim: int = 16
) -> Path:
    """A diffusers Wan2.1 directory: the 1.3B transformer (or its tiny twin) with random weights."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from grpo_zoo.models.tiny_wan import write_tiny_wan
    from grpo_zoo.models.wan_arch import ARCHS

    write_tiny_wan(out)  # its tokenizer; the three models are replaced below
    conf = dict(ARCHS["wan2.1-t2v-1.3b"]["transformer"])
    if width == "tiny":
        conf.update(TINY_TRANSFORMER)
    conf.update(transformer or {})
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**conf)
    transformer.to(torch.bfloat16).save_pretrained(out / "transformer")
    del transformer
    enc = UMT5EncoderModel(
        UMT5Config(vocab_size=64, d_model=conf["text_dim"], d_kv=16, d_ff=64, num_layers=1, num_heads=4)
    )
    enc.save_pretrained(out / "text_encoder")
    vae = AutoencoderKLWan(base_dim=vae_dim, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    vae.save_pretrained(out / "vae")
    return out


def run_config(model_dir: Path, algorithm: dict, width: str, frames: int | None, steps: int, group: int, run_dir: Path):
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import apply_overrides, build, load_config_file

    data = load_config_file(ROOT / "experiments" / "wan2.1" / "base.yaml")
    shape = dict(SHAPES[width], **({"frames": frames} if frames else {}))
    over = {
        "algorithm": algorithm,
        "model.path": str(model_dir),
        "model.arch": "wan2.1-t2v-1.3b",
        **{f"model.{k}": v for k, v in shape.items()},
        "model.max_tokens": 16 if width == "tiny" else 512,
        "sampling.steps": steps,
        "reward": {"name": "gpu_check_contrast", "options": {}},
        "data.prompts": "toy:train",
        "data.eval_prompts": "toy:test",
        "data.prompts_per_step": 1,
        "data.group_size": group,
        "data.eval_samples": 1,
        "budget.steps": 1,
        "budget.device_hours": None,
        "run_dir": str(run_dir),
        "save_eval_videos": False,
    }
    return build(RunConfig, apply_overrides(data, over))


def gpu_key(name: str) -> str | None:
    from grpo_zoo.cost.flops import GPUS

    return next((k for k in GPUS if k in name.lower()), None)


class _Clock:
    """Wall seconds of the calls it wraps, after the device finishes."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            self.seconds += time.perf_counter() - t0
            return out

        return timed


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(cfg) -> dict:
    """One iteration through the library's Trainer: times, FLOPs, peak memory, log-prob agreement."""
    from benchmarks.common import release
    from grpo_zoo.cost.counts import iteration_counts
    from grpo_zoo.cost.flops import flops_per_nfe
    from grpo_zoo.training.trainer import Trainer

    gc.collect()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, progress=False)
        peak_cpu = None
    else:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.__enter__()
        trainer = Trainer(cfg, progress=False)
    update, decode = _Clock(), _Clock()
    import grpo_zoo.training.trainer as trainer_module

    trainer_module.update = update.wrap(trainer_module.update)
    trainer.policy.decode = decode.wrap(trainer.policy.decode)
    sync()
    t0 = time.perf_counter()
    row = trainer.iteration()
    sync()
    seconds = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        prof.__exit__(None, None, None)
        events = sorted(
            (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
        )
        live = peak_cpu = 0
        for _, nbytes in events:
            live += nbytes
            peak_cpu = max(peak_cpu, live)
        peak = peak_cpu
    release(trainer)
    fwd, bwd = flops_per_nfe(cfg.model)
    c = iteration_counts(cfg, 0)
    return {
        "seconds": seconds,
        "rollout_seconds": seconds - update.seconds - decode.seconds,
        "decode_reward_seconds": decode.seconds,
        "update_seconds": update.seconds,
        "rollout_flops": c["rollout_nfe"] * fwd,
        "update_flops": c["update_nfe"] * fwd + c["backward"] * bwd,
        "peak_bytes": float(peak),
        "ratio_dev": row["stats/ratio_dev_first_minibatch"],
    }


def check(width: str, frames: int | None, steps: int, group: int, out: Path) -> dict:
    from grpo_zoo.cost.counts import estimate
    from grpo_zoo.cost.flops import GPUS
    from grpo_zoo.cost.memory import report

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    key = gpu_key(name) if cuda else None
    started = time.perf_counter()
    register_reward()
    model_dir = write_model(out / "model", width, device)
    result = {
        "device": name,
        "backend": "nccl" if cuda else "gloo",
        "width": width,
        "torch": torch.__version__,
        "algorithms": {},
    }
    for label, alg in ALGORITHMS.items():
        cfg = run_config(model_dir, alg, width, frames, steps, group, out / "runs" / label)
        m = measure(cfg)
        predicted_mem = report(cfg, 1, key or "h100")["peak_gb"]
        peak_flops = GPUS[key] if key else None
        predicted_s = estimate(cfg, 1, key, 0.4, 350.0, 1)["wall_minutes_per_iteration"] * 60 if key else None
        result["shape"] = {k: getattr(cfg.model, k) for k in ("height", "width", "frames")} | {
            "steps": steps,
            "group_size": group,
            "cfg": cfg.sampling.guidance,
        }
        result["algorithms"][label] = {
            "rollout_mfu": m["rollout_flops"] / m["rollout_seconds"] / peak_flops if peak_flops else None,
            "update_mfu": m["update_flops"] / m["update_seconds"] / peak_flops if peak_flops else None,
            "peak_memory_gb": m["peak_bytes"] / 1e9,
            "predicted_peak_memory_gb": predicted_mem,
            "seconds_per_iteration": m["seconds"],
            "predicted_seconds_per_iteration": predicted_s,
            "rollout_seconds": m["rollout_seconds"],
            "update_seconds": m["update_seconds"],
            "decode_reward_seconds": m["decode_reward_seconds"],
            "first_minibatch_ratio_max_dev": m["ratio_dev"],
            "logprobs_agree": m["ratio_dev"] < cfg.optim.clip_range,
        }
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    result["clip_range"] = cfg.optim.clip_range
    result["total_seconds"] = time.perf_counter() - started
    return result


def parser() -> ArgParser:
    p = ArgParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--width", choices=sorted(SHAPES), default="full", help="full: Wan2.1-1.3B; tiny: for a CPU")
    p.add_argument("--frames", type=int, default=None, help="video frames (4k + 1; default 33 full, 9 tiny)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps T (default 20, the paper's)")
    p.add_argument("--group", type=int, default=4, help="rollouts of the one prompt group (default 4)")
    p.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.frames is not None and (args.frames < 1 or (args.frames - 1) % 4):
        raise ConfigError(f"--frames: 4k + 1 frames for Wan's VAE, got {args.frames}")
    if args.steps < 10 or args.group < 2:
        raise ConfigError("--steps >= 10 (k is drawn from steps 0..9) and --group >= 2, please")
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="grpo-zoo-gpu-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        # one JSON object on the last line (libraries may log to stdout before it)
        print(json.dumps(check(args.width, args.frames, args.steps, args.group, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
