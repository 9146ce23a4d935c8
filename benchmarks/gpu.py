"""The prepared GPU check: `python -m benchmarks.gpu [--width full|tiny] [--out FILE.json] ...`.

Builds Wan2.1-T2V-1.3B's architecture with random weights on the device, in bf16 (no download:
the 1.3B transformer, Wan2.1's VAE architecture, a tiny UMT5 of the same output width), saves it
as a diffusers directory and measures, at the paper's rows per GPU (one prompt group of G = 8
with CFG 4.5, 16 rows, sampled in experiments/wan2.1/base.yaml's 4 chunks: 4 rows per rollout
forward; micro-batch 1 with CFG: 2 rows per update step):

1. microbenchmarks, for each attention backend this machine has (native SDPA, cuDNN, FlashAttention
   3 local and from the Hub; grpo_zoo/models/accel.py), with LoRA r16 and gradient checkpointing
   as the run trains: the transformer forward at 4 and 16 rows (no graph, as the rollout runs it)
   and one update step at 2 rows (forward and backward); with --compile also native attention
   with compiled blocks. Seconds per call (median after a warm-up call), MFU, transient memory;
2. the VAE decode of one video in fp32 (as the run decodes) against bf16: seconds, and the
   largest and mean |difference| of the decoded pixels (in [-1, 1]);
3. whole iterations through the library's own Trainer and DeepSpeed engine (bf16, ZeRO-2,
   the paper's settings from experiments/wan2.1/base.yaml) for each of --algorithms: one warm-up
   iteration, then --iterations timed ones (median): seconds (rollout, decode + reward, update), MFU,
   peak memory, seconds against grpo_zoo.estimate's at MFU 0.4, and whether the bf16 rollout
   and update log-probs agree (the first, on-policy minibatch's largest |ratio - 1| under the
   clip range);
4. memory: each measured phase (rollout forward, update, VAE decode) and the iteration's peak
   against grpo_zoo/cost/memory.py's prediction for the same config.

FLOPs are grpo_zoo/cost/flops.py's flops_per_nfe (counted on the meta device; the backward
includes gradient checkpointing's recompute, as grpo_zoo.estimate counts it) times the NFE and
backward passes of the step; MFU is against the GPU's dense bf16 datasheet peak (flops.GPUS),
or, where there is none (a CPU, an unlisted GPU), against a bf16 matmul measured here (labelled).
The reward is a pixel statistic registered here (`gpu_check_contrast`): HPSv3's cost is not
what this checks. Prints ONE JSON object on the last line of stdout (and writes it to --out).

--width full (default): 480x832, 33 frames, 20 steps, flash_grpo; estimated at 6-8 minutes on one
H100/H200 from its FLOPs at MFU 0.3-0.5 (not yet run on one: BENCHMARKS.md). --frames 81 is the
paper's length: `--frames 81 --algorithms` (no names) runs parts 1, 2 and 4 at that shape. --width
tiny: a two-layer model of the same structure at 64x64 and 9 frames, for a CPU (what the tests run).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from grpo_zoo.errors import ArgParser, ConfigError, cli, writable_file

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = {
    "flow_grpo": {"name": "flow_grpo", "timestep_fraction": 0.51},
    "flow_grpo_fast1": {"name": "flow_grpo_fast", "window": 1, "window_start_range": [0, 9]},
    "flash_grpo": {"name": "flash_grpo", "grouping": "iso_temporal", "rectify": True, "k_range": [0, 9]},
}
TINY_TRANSFORMER = {"num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 128, "num_layers": 2, "text_dim": 64}
SHAPES = {"full": {"height": 480, "width": 832, "frames": 33}, "tiny": {"height": 64, "width": 64, "frames": 9}}
ATTENTION = {"native": "native", "cudnn": "_native_cudnn", "flash_3": "_flash_3", "flash_3_hub": "_flash_3_hub"}
"""Backends measured: label -> diffusers' AttentionBackendName value."""
FORWARD_ROWS = (4, 16)
GB = 1e9


def rollout_rows(cfg) -> int:
    """Rows of one rollout forward on one GPU: a chunk's samples (sampling.rollout_chunks), twice under CFG."""
    from grpo_zoo.cost.phases import chunk_samples
    from grpo_zoo.models.base import cfg_multiplier

    return chunk_samples(cfg, 1) * cfg_multiplier(cfg.sampling.guidance)


def _contrast(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    return {"gpu_check_contrast": videos.float().flatten(1).std(1)}


def register_reward() -> None:
    from grpo_zoo import rewards

    if "gpu_check_contrast" not in rewards.names():
        rewards.register("gpu_check_contrast")(lambda: _contrast)


def write_model(
    out: Path, width: str, device: torch.device, transformer: dict | None = None, vae_dim: int = 16
) -> Path:
    """A diffusers Wan2.1 directory: the 1.3B transformer (or its tiny twin) with random weights,
    built on `device`; full width takes Wan2.1's VAE architecture, tiny a VAE `vae_dim` wide."""
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
    if width == "full":
        vae = AutoencoderKLWan()  # diffusers' defaults are Wan2.1's VAE (base_dim 96, z_dim 16)
    else:
        vae = AutoencoderKLWan(base_dim=vae_dim, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    vae.save_pretrained(out / "vae")
    return out


def run_config(
    model_dir: Path,
    algorithm: dict,
    width: str,
    frames: int | None,
    steps: int,
    group: int,
    run_dir: Path,
    iterations: int = 1,
):
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
        "budget.steps": iterations,
        "budget.device_hours": None,
        "run_dir": str(run_dir),
        "save_eval_videos": False,
    }
    return build(RunConfig, apply_overrides(data, over))


def gpu_key(name: str) -> str | None:
    from grpo_zoo.cost.flops import GPUS

    return next((k for k in GPUS if k in name.lower()), None)


# -- measuring on either device ------------------------------------------------------------------
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds_per_call(fn, reps: int) -> tuple[float, float]:
    """(first call, median of `reps` further calls) in seconds: CUDA events on a GPU, the wall
    clock on a CPU. The first call is the warm-up (kernel choice, compilation)."""
    times = []
    for _ in range(reps + 1):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def transient_peak(fn) -> float:
    """Bytes allocated by fn above what was allocated when it started, at their largest: the
    caching allocator's counters on a GPU; on a CPU the allocation and free events torch's
    profiler records (the live total over time)."""
    gc.collect()
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync()
        return float(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return _profiled_peak(prof)


def _profiled_peak(prof) -> float:
    """The largest live total of the allocations a finished torch profiler recorded."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def peak_flops(device: torch.device, name: str) -> tuple[float, str]:
    """The device's dense bf16 peak: the datasheet's (flops.GPUS), else a bf16 matmul measured here."""
    from grpo_zoo.cost.flops import GPUS

    key = gpu_key(name) if device.type == "cuda" else None
    if key:
        return GPUS[key], f"datasheet ({key})"
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    _, sec = seconds_per_call(lambda: a @ b, 5)
    return 2 * n**3 / sec, f"measured bf16 matmul {n}x{n}"


# -- 1. the transformer, per attention backend -------------------------------------------------------
def backend_missing(label: str, device: torch.device) -> str | None:
    """Why `label` cannot run here, or None."""
    from diffusers.models import attention_dispatch as ad

    if label == "native":
        return None
    if device.type != "cuda":
        return "needs CUDA"
    if label == "cudnn" and (torch.backends.cudnn.version() or 0) < 90000:
        return "needs cuDNN >= 9"
    if label.startswith("flash_3") and torch.cuda.get_device_capability() < (9, 0):
        return "FlashAttention 3 needs sm90"
    if label == "flash_3" and not ad._CAN_USE_FLASH_ATTN_3:
        return "flash_attn_interface (FlashAttention 3 built from source) is not importable"
    try:
        ad._check_attention_backend_requirements(ad.AttentionBackendName(ATTENTION[label]))
        ad._maybe_download_kernel_for_backend(ad.AttentionBackendName(ATTENTION[label]))  # the Hub kernel
    except Exception as err:
        return str(err).splitlines()[0][:200]
    return None


def microbenchmarks(cfg, device, peak: float, reps: int, compile_blocks: bool) -> tuple[dict, dict]:
    """Forward at 4 and 16 rows and one update step per backend; and the measured phase bytes."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from grpo_zoo.cost.flops import flops_per_nfe, model_shapes
    from grpo_zoo.cost.phases import update_rows
    from grpo_zoo.models.lora import apply_lora

    fwd_flops, bwd_flops = flops_per_nfe(cfg.model)
    _, latent, text_dim = model_shapes(cfg.model)
    net = WanTransformer3DModel.from_pretrained(Path(cfg.model.path) / "transformer", torch_dtype=torch.bfloat16)
    net.enable_gradient_checkpointing()
    net = apply_lora(net, cfg.model).to(device=device, dtype=torch.bfloat16)
    base = net.get_base_model()
    up_rows = update_rows(cfg)

    def inputs(rows: int):
        g = torch.Generator(device).manual_seed(rows)
        x = torch.randn(rows, *latent, device=device, dtype=torch.bfloat16, generator=g)
        emb = torch.randn(rows, cfg.model.max_tokens, text_dim, device=device, dtype=torch.bfloat16, generator=g)
        return x, torch.full((rows,), 500.0, device=device), emb

    def forward(rows: int):
        args = inputs(rows)

        def run():
            with torch.no_grad():
                net(*args, return_dict=False)

        return run

    def update():
        args = inputs(up_rows)

        def run():
            net(*args, return_dict=False)[0].float().square().mean().backward()
            net.zero_grad(set_to_none=True)

        return run

    variants = [(label, label, False) for label in ATTENTION]
    if compile_blocks:
        variants.append(("native+compile", "native", True))
    out, phases = {}, {}
    for name, label, compiled in variants:
        why = backend_missing(label, device)
        if why:
            out[name] = {"available": False, "why": why}
            continue
        default = _AttentionBackendRegistry._active_backend
        if label == "native":
            base.reset_attention_backend()
        else:
            base.set_attention_backend(ATTENTION[label])
            _AttentionBackendRegistry.set_active_backend(default)
        if compiled:
            base.compile_repeated_blocks()
        row = {"available": True, "forward": {}}
        net.eval()
        for rows in FORWARD_ROWS:
            first, sec = seconds_per_call(forward(rows), reps)
            row["forward"][str(rows)] = {
                "first_call_seconds": first,
                "seconds": sec,
                "mfu": rows * fwd_flops / sec / peak,
            }
        if label == "flash_3":  # diffusers 0.42 calls it through a custom op with no autograd formula
            row["update"] = {"available": False, "why": "no backward in diffusers' _flash_3"}
        else:
            net.train()
            first, sec = seconds_per_call(update(), reps)
            mfu = up_rows * (fwd_flops + bwd_flops) / sec / peak
            row["update"] = {"rows": up_rows, "first_call_seconds": first, "seconds": sec, "mfu": mfu}
        if name == "native":  # the memory model counts attention as the fused kernels of native SDPA run it
            net.eval()  # inputs made inside the measured call, as the memory model's phases make them
            phases["rollout forward"] = transient_peak(lambda: forward(rollout_rows(cfg))())
            net.train()
            phases["update (forward + backward)"] = transient_peak(lambda: update()())
        if compiled:
            for m in base.modules():
                m._compiled_call_impl = None
        out[name] = row
    return out, phases


# -- 2. the VAE decode ---------------------------------------------------------------------------------
def vae_decode(cfg, device, reps: int) -> tuple[dict, float]:
    """One video decoded by the fp32 VAE and by its bf16 copy; and the measured bytes of the
    decode phase as WanPolicy runs it and the memory model counts it (the group's videos,
    model.vae_batch at a time in model.vae_dtype)."""
    from diffusers import AutoencoderKLWan

    from grpo_zoo.cost.flops import model_shapes

    _, latent, _ = model_shapes(cfg.model)
    vae = AutoencoderKLWan.from_pretrained(Path(cfg.model.path) / "vae").to(device).eval()
    c = vae.config  # a sampler's latents, brought to the VAE's scale as WanPolicy.decode does
    z = torch.randn(cfg.data.group_size, *latent, device=device, generator=torch.Generator(device).manual_seed(0))
    z = z * torch.tensor(c.latents_std, device=device).view(1, -1, 1, 1, 1)
    z = z + torch.tensor(c.latents_mean, device=device).view(1, -1, 1, 1, 1)

    batch = cfg.model.vae_batch

    def decode(model, dtype, count: int = 1) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    model.decode(z[i : min(i + batch, count)].to(dtype), return_dict=False)[0].float().clamp(-1, 1)
                    for i in range(0, count, batch)
                ]
            )

    first32, sec32 = seconds_per_call(lambda: decode(vae, torch.float32), reps)
    ref = decode(vae, torch.float32)
    vae16 = AutoencoderKLWan.from_pretrained(Path(cfg.model.path) / "vae", torch_dtype=torch.bfloat16).to(device)
    model, dtype = (vae16, torch.bfloat16) if cfg.model.vae_dtype == "bf16" else (vae, torch.float32)
    phase = transient_peak(lambda: decode(model.eval(), dtype, cfg.data.group_size))
    first16, sec16 = seconds_per_call(lambda: decode(vae16.eval(), torch.bfloat16), reps)
    diff = (decode(vae16, torch.bfloat16) - ref).abs()
    row = {
        "videos": 1,
        "fp32": {"first_call_seconds": first32, "seconds": sec32},
        "bf16": {"first_call_seconds": first16, "seconds": sec16},
        "bf16_speedup": sec32 / sec16,
        "bf16_max_abs_error": float(diff.max()),
        "bf16_mean_abs_error": float(diff.mean()),
    }
    return row, phase


# -- 3. whole iterations through the Trainer -------------------------------------------------------------
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


def iterations(cfg, count: int, peak: float) -> dict:
    """One warm-up iteration, then `count` timed ones, through the library's Trainer."""
    import grpo_zoo.training.trainer as trainer_module
    from benchmarks.common import release
    from grpo_zoo.cost.counts import iteration_counts
    from grpo_zoo.cost.flops import flops_per_nfe
    from grpo_zoo.training.trainer import Trainer

    gc.collect()
    cuda = torch.cuda.is_available()
    if cuda:  # the peak from the trainer's start to its last iteration, held weights included
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # the profiler slows a CPU down: the peak from the trainer's start to the warm-up's end
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.__enter__()
    fwd, bwd = flops_per_nfe(cfg.model)
    original_update = trainer_module.update
    trainer = Trainer(cfg, progress=False)  # its meter counts FLOPs from shapes, as flops_per_nfe: no real pass
    update, decode = _Clock(), _Clock()
    trainer_module.update = update.wrap(original_update)
    trainer.policy.decode = decode.wrap(trainer.policy.decode)
    try:
        sync()
        t0 = time.perf_counter()
        trainer.iteration()
        sync()
        warmup = time.perf_counter() - t0
        if not cuda:
            prof.__exit__(None, None, None)
            peak_bytes = _profiled_peak(prof)
        trainer.step += 1
        rows = []
        for _ in range(count):
            update.seconds = decode.seconds = 0.0
            sync()
            t0 = time.perf_counter()
            row = trainer.iteration()
            sync()
            seconds = time.perf_counter() - t0
            c = iteration_counts(cfg, trainer.step)
            trainer.step += 1
            rollout = seconds - update.seconds - decode.seconds
            rows.append(
                {
                    "seconds": seconds,
                    "rollout_seconds": rollout,
                    "decode_reward_seconds": decode.seconds,
                    "update_seconds": update.seconds,
                    "rollout_mfu": c["rollout_nfe"] * fwd / rollout / peak,
                    "update_mfu": (c["update_nfe"] * fwd + c["backward"] * bwd) / update.seconds / peak,
                    "ratio_dev": row["stats/ratio_dev_first_minibatch"],
                }
            )
        if cuda:
            peak_bytes = float(torch.cuda.max_memory_allocated() - base)
    finally:
        trainer_module.update = original_update
        release(trainer)
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "ratio_dev"}
    dev = max(r["ratio_dev"] for r in rows)
    return {
        "warmup_seconds": warmup,
        "timed_iterations": count,
        **{("seconds_per_iteration" if k == "seconds" else k): v for k, v in median.items()},
        "peak_memory_gb": peak_bytes / GB,
        "first_minibatch_ratio_max_dev": dev,
        "logprobs_agree": dev < cfg.optim.clip_range,
    }


# -- the check -----------------------------------------------------------------------------------------------
def check(args, work: Path) -> dict:
    from grpo_zoo.cost.counts import estimate
    from grpo_zoo.cost.memory import report
    from grpo_zoo.cost.phases import update_rows

    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    key = gpu_key(name) if cuda else None
    parts, mark = {}, [started]

    def lap(part: str) -> None:  # wall seconds of each part of the check
        now = time.perf_counter()
        parts[part], mark[0] = now - mark[0], now

    register_reward()
    model_dir = write_model(work / "model", args.width, device)
    peak, source = peak_flops(device, name)
    lap("build")
    first = next(iter(args.algorithms), "flash_grpo")
    n_iter = args.iterations + 1  # the warm-up and the timed ones
    cfg = run_config(model_dir, ALGORITHMS[first], args.width, args.frames, args.steps, args.group, work / "r", n_iter)
    result = {
        "device": name,
        "backend": "nccl" if cuda else "gloo",
        "width": args.width,
        "torch": torch.__version__,
        "peak_flops": peak,
        "peak_flops_source": source,
        "shape": {k: getattr(cfg.model, k) for k in ("height", "width", "frames")}
        | {"steps": args.steps, "group_size": args.group, "cfg": cfg.sampling.guidance}
        | {"rollout_rows": rollout_rows(cfg), "update_rows": update_rows(cfg)},
    }
    result["microbenchmarks"], measured = microbenchmarks(cfg, device, peak, args.reps, args.compile)
    lap("microbenchmarks")
    result["vae_decode"], measured["VAE decode"] = vae_decode(cfg, device, args.reps)
    lap("vae_decode")
    mem = report(cfg, 1, key or "h100")
    lap("memory_model")
    result["memory"] = {
        "predicted_gb": {**mem["memory_gb"], "peak": mem["peak_gb"]},
        "measured_gb": {k: v / GB for k, v in measured.items()},
        "measured_over_predicted": {k: v / GB / mem["memory_gb"][k] for k, v in measured.items()},
    }
    result["algorithms"] = {}
    for label in args.algorithms:
        cfg = run_config(
            model_dir, ALGORITHMS[label], args.width, args.frames, args.steps, args.group, work / label, n_iter
        )
        row = iterations(cfg, args.iterations, peak)
        row["predicted_peak_memory_gb"] = report(cfg, 1, key or "h100")["peak_gb"]
        est = estimate(cfg, 1, key, 0.4, 350.0, 1) if key else None
        row["predicted_seconds_per_iteration"] = est["wall_minutes_per_iteration"] * 60 if est else None
        result["algorithms"][label] = row
        lap(label)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    result["clip_range"] = cfg.optim.clip_range
    result["part_seconds"] = parts
    result["total_seconds"] = time.perf_counter() - started
    return result


def parser() -> ArgParser:
    p = ArgParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--width", choices=sorted(SHAPES), default="full", help="full: Wan2.1-1.3B; tiny: for a CPU")
    p.add_argument("--frames", type=int, default=None, help="video frames (4k + 1; default 33 full, 9 tiny)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps T (default 20, the paper's)")
    p.add_argument("--group", type=int, default=8, help="rollouts of the one prompt group (default 8: 16 rows)")
    p.add_argument(
        "--algorithms",
        nargs="*",
        choices=sorted(ALGORITHMS),
        default=["flash_grpo"],
        help="whole iterations of these (default flash_grpo; none: microbenchmarks, VAE and memory only)",
    )
    p.add_argument("--iterations", type=int, default=1, help="timed iterations after the warm-up (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per microbenchmark after its warm-up (default 3)")
    p.add_argument("--compile", action="store_true", help="also time native attention with compiled blocks")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--workdir", default=None, help="where the model and runs go (default: a temporary directory)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.frames is not None and (args.frames < 1 or (args.frames - 1) % 4):
        raise ConfigError(f"--frames: 4k + 1 frames for Wan's VAE, got {args.frames}")
    if args.steps < 10 or args.group < 2:
        raise ConfigError("--steps >= 10 (k is drawn from steps 0..9) and --group >= 2, please")
    if args.iterations < 1 or args.reps < 1:
        raise ConfigError("--iterations and --reps: at least 1")
    out = writable_file(args.out, "--out") if args.out else None
    if args.workdir:
        from grpo_zoo.errors import writable_dir

        writable_dir(args.workdir, "--workdir")
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="grpo-zoo-gpu-") as tmp:
        result = check(args, Path(args.workdir) if args.workdir else Path(tmp))
    text = json.dumps(result)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)  # one JSON object on the last line (libraries may log to stdout before it)
    return 0


if __name__ == "__main__":
    sys.exit(main())
