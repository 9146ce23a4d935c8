"""What a run will cost before it runs: `python -m grpo_zoo.estimate CONFIG... --gpus N [--gpu h100]`.

CONFIG is a run config (python -m grpo_zoo.train ...) or an experiment file (each of its
variants, first seed). For each:
1. FLOPs per NFE: one transformer forward and its backward, counted by torch's FlopCounterMode
   on the meta device (no weights, no memory) for the configured model (LoRA, gradient
   checkpointing and shapes as trained) - the same count the meter makes in a real run;
2. NFE per iteration from the algorithm's own plans (rollout forwards, with shared-noise
   prefixes computed once; update forwards and backward passes; the KL reference forward),
   averaged over the plans of the first --plans iterations;
3. GPU-hours per iteration = FLOPs / (peak x MFU), the wall time on N GPUs, and how many
   iterations a budget of --budget-gpu-hours buys (the paper's 350 by default).
The MFU is an assumption (--mfu, default 0.4): say which one you used.
4. Memory per GPU (grpo_zoo/memory.py): what the run holds (weights, LoRA and optimizer states
   under the ZeRO stage, EMA, reference model, text encoder, VAE) plus its largest transient
   phase (rollout forward, update with or without checkpointing, VAE decode, loading), and a
   verdict for --gpu; when it does not fit, the single changes that would make it fit.
   --no-memory skips it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from grpo_zoo.errors import AT_LEAST_ONE, POSITIVE, ArgParser, ConfigError, Range, cli, number

# dense bf16 peak, FLOP/s per GPU (vendor datasheets, no sparsity)
GPUS = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "a800": 312e12, "l40s": 362e12, "b200": 2250e12}


def model_shapes(model) -> tuple[dict, tuple[int, ...], int]:
    """(transformer config, latent shape C,F,H,W, text embedding width) for a wan ModelConfig."""
    from grpo_zoo.models.wan_arch import ARCHS

    root = Path(model.path)
    if (root / "transformer" / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        tconf = json.loads((root / "transformer" / "config.json").read_text())
        vconf = json.loads((root / "vae" / "config.json").read_text())
    elif model.arch in ARCHS:
        tconf, vconf = ARCHS[model.arch]["transformer"], ARCHS[model.arch]["vae"]
    else:
        raise ConfigError(
            f"model.path: no Wan model directory at {model.path!r} and model.arch {model.arch!r} is not one of "
            f"{', '.join(ARCHS)}"
        )
    t_scale = 2 ** sum(vconf["temperal_downsample"])
    s_scale = 2 ** len(vconf["temperal_downsample"])
    latent = (vconf["z_dim"], (model.frames - 1) // t_scale + 1, model.height // s_scale, model.width // s_scale)
    return tconf, latent, tconf["text_dim"]


@contextlib.contextmanager
def fused_attention():
    """Count attention as a GPU runs it. On the meta device SDPA takes its unfused math path,
    whose backward reuses the stored scores (2x the forward's attention FLOPs); the fused
    kernels of a GPU (and the CPU) recompute them (2.5x), and that is what the meter counts."""
    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or enable_gqa:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, scale=scale
        )[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def flops_per_nfe(model) -> tuple[float, float]:
    """(forward, backward) FLOPs of one sample through the transformer, counted on the meta device."""
    from diffusers import WanTransformer3DModel

    from grpo_zoo.meter import measure_flops
    from grpo_zoo.models.lora import apply_lora

    if model.backend != "wan":
        raise ConfigError("model.backend: estimates are for the wan backend (toy runs report measured FLOPs)")
    tconf, latent, text_dim = model_shapes(model)
    with torch.device("meta"):
        net = WanTransformer3DModel.from_config({k: v for k, v in tconf.items() if not k.startswith("_")})
        if model.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        net = apply_lora(net, model)
        x = torch.zeros(1, *latent)
        emb = torch.zeros(1, model.max_tokens, text_dim)
        t = torch.ones(1) * 1000
    net.train()
    with fused_attention():
        fwd, bwd = measure_flops(lambda: net(x, t, emb, return_dict=False)[0], backward=True)
    return float(fwd), float(bwd)


def iteration_counts(cfg, step: int, world: int = 1) -> dict[str, float]:
    """Forwards and backward passes of iteration `step`, from the same plans the trainer draws."""
    from grpo_zoo import algorithm as algorithms
    from grpo_zoo import objectives
    from grpo_zoo.algorithm import PlanContext
    from grpo_zoo.preflight import sampling_tables
    from grpo_zoo.seeding import generator

    s = cfg.sampling
    alg = algorithms.build(cfg.algorithm)
    objective = objectives.get(alg.objective)
    table, _ = sampling_tables(s)
    obj = objective(cfg.algorithm, cfg.optim, s, table, None, None, None, "cpu")
    cfg_mult = 2 if s.guidance != 1.0 else 1
    local = cfg.data.prompts_per_step // world
    rollout = trained = made = 0
    for rank in range(world):
        ctx = PlanContext.of(
            local, cfg.data.group_size, table, generator(cfg.seed, step, rank, "plan"), step, ode_stride=s.ode_stride
        )
        plan = alg.plan(ctx)
        rollout += int(plan.forward_rows().sum()) * cfg_mult
        items = obj.num_items(plan)
        if objective.needs_transitions:  # pruning by advantage: its count, with advantages not known yet
            traj, st = plan.train.nonzero(as_tuple=True)
            keep = alg.keep(ctx, plan, traj, st, torch.zeros(len(traj)))
            items = items if keep is None else int(keep.sum())
        trained += items
        made += obj.num_items(plan) * obj.item_forwards() * obj.cfg_mult
    passes = trained * cfg.optim.inner_epochs * obj.cfg_mult
    extra = passes * obj.extra_forwards()
    return {"rollout_nfe": rollout, "update_nfe": passes + extra + made, "backward": passes}


def estimate(cfg, gpus: int, gpu: str, mfu: float, budget_gpu_hours: float, plans: int) -> dict:
    fwd, bwd = flops_per_nfe(cfg.model)
    counts = [iteration_counts(cfg, step, gpus) for step in range(plans)]
    mean = {k: sum(c[k] for c in counts) / len(counts) for k in counts[0]}
    flops = (mean["rollout_nfe"] + mean["update_nfe"]) * fwd + mean["backward"] * bwd
    gpu_hours = flops / (GPUS[gpu] * mfu) / 3600
    eval_nfe = cfg.data.eval_samples * cfg.sampling.eval_steps * (2 if cfg.sampling.guidance != 1.0 else 1)
    return {
        "algorithm": cfg.algorithm.name,
        "fwd_flops_per_nfe": fwd,
        "bwd_flops_per_nfe": bwd,
        **mean,
        "flops_per_iteration": flops,
        "gpu_hours_per_iteration": gpu_hours,
        "wall_minutes_per_iteration": gpu_hours / gpus * 60,
        "iterations_in_budget": budget_gpu_hours / gpu_hours,
        "eval_gpu_hours": eval_nfe * fwd / (GPUS[gpu] * mfu) / 3600,
    }


def load_configs(path: str) -> list[tuple[str, object]]:
    from grpo_zoo.config import build, load_config_file, load_yaml
    from grpo_zoo.run_config import RunConfig

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"CONFIG: no file {path!r}")
    raw = load_yaml(p)
    if "variants" in raw or "seeds" in raw:  # an experiment file
        from grpo_zoo.experiment import load_experiment

        exp = load_experiment(p, "/tmp/grpo-zoo-estimate")
        first = {}
        for r in exp.runs:
            first.setdefault(r.variant, r)
        return [(f"{exp.name}/{v}", build(RunConfig, r.config)) for v, r in first.items()]
    return [(p.stem, build(RunConfig, load_config_file(p)))]


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.estimate", description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="run config or experiment YAML")
    p.add_argument("--gpus", type=number(int, AT_LEAST_ONE), required=True, help="GPUs the run uses")
    p.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    p.add_argument(
        "--mfu",
        type=number(float, Range(0, 1, low_open=True)),
        default=0.4,
        help="model FLOPs utilisation assumed (default 0.4)",
    )
    p.add_argument(
        "--budget-gpu-hours", type=number(float, POSITIVE), default=350.0, help="budget to turn into iterations"
    )
    p.add_argument("--plans", type=number(int, AT_LEAST_ONE), default=64, help="iterations whose plans are averaged")
    p.add_argument("--format", choices=("md", "json"), default="md")
    p.add_argument("--no-memory", action="store_true", help="skip the per-GPU memory estimate")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.gpus < 1 or not 0 < args.mfu <= 1 or args.plans < 1:
        raise ConfigError("--gpus >= 1, 0 < --mfu <= 1 and --plans >= 1, please")
    configs = [c for path in args.configs for c in load_configs(path)]
    for name, cfg in configs:
        if cfg.data.prompts_per_step % args.gpus:
            raise ConfigError(
                f"{name}: data.prompts_per_step {cfg.data.prompts_per_step} does not split over {args.gpus} GPUs"
            )
        if cfg.model.backend != "wan":
            raise ConfigError(f"{name}: model.backend: estimates are for wan models (toy runs report measured FLOPs)")
        model_shapes(cfg.model)  # a missing directory with no known arch fails here, before any counting
    rows = []
    for name, cfg in configs:
        rows.append({"config": name, **estimate(cfg, args.gpus, args.gpu, args.mfu, args.budget_gpu_hours, args.plans)})
        if not args.no_memory:
            from grpo_zoo.memory import report

            rows[-1]["memory"] = report(cfg, args.gpus, args.gpu)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{args.gpus} x {args.gpu.upper()} at {GPUS[args.gpu] / 1e12:.0f} TFLOP/s bf16 peak, MFU {args.mfu:.0%}; "
        f"budget {args.budget_gpu_hours:g} GPU-hours"
    )
    head = "| config | fwd TFLOP/NFE | bwd TFLOP/NFE | NFE/iter (rollout + update) | backward/iter | PFLOP/iter | GPU-h/iter | wall min/iter | iterations in budget |"
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['fwd_flops_per_nfe'] / 1e12:.1f} | {r['bwd_flops_per_nfe'] / 1e12:.1f} | "
            f"{r['rollout_nfe']:.0f} + {r['update_nfe']:.0f} | {r['backward']:.0f} | "
            f"{r['flops_per_iteration'] / 1e15:.1f} | {r['gpu_hours_per_iteration']:.2f} | "
            f"{r['wall_minutes_per_iteration']:.1f} | {r['iterations_in_budget']:.0f} |"
        )
    if not args.no_memory:
        print_memory(rows, args.gpu)
    return 0


def print_memory(rows: list[dict], gpu: str) -> None:
    """Per-GPU memory in GB: a column per config, a row per component and phase, the verdict."""
    print(f"\nMemory per GPU (GB; peak = held + the largest phase) on {gpu.upper()}:")
    print("| | " + " | ".join(r["config"] for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key in rows[0]["memory"]["memory_gb"]:
        print(f"| {key} | " + " | ".join(f"{r['memory']['memory_gb'][key]:.1f}" for r in rows) + " |")
    print("| **peak** | " + " | ".join(f"**{r['memory']['peak_gb']:.1f}**" for r in rows) + " |")
    for r in rows:
        m = r["memory"]
        verdict = "fits" if m["fits"] else "does NOT fit"
        print(
            f"{r['config']}: {m['peak_gb']:.1f} GB at the {m['peak_phase']} {verdict} in {m['usable_gb']:.0f} GB usable"
        )
        for fix in m["fixes"]:
            print(f"  would fit with {fix}")
        if not m["fits"] and not m["fixes"]:
            print("  no single change fits: combine them (fewer frames with ZeRO-3, ...)")


if __name__ == "__main__":
    sys.exit(main())
