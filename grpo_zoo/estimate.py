"""What a run will cost before it runs: `python -m grpo_zoo.estimate CONFIG... [--gpus N] [--gpu h100]`.

CONFIG is a run config (python -m grpo_zoo.train ...) or an experiment file (each of its
variants, first seed; --gpus defaults to its resources.gpus). For each:
1. FLOPs per NFE: one transformer forward and its backward, counted by torch's FlopCounterMode
   on the meta device (no weights, no memory) for the configured model (LoRA, gradient
   checkpointing and shapes as trained), once per distinct shape - the count the meter of a
   real run multiplies by (grpo_zoo/cost/flops.py);
2. NFE per iteration from the algorithm's own plans (rollout forwards, with shared-noise
   prefixes computed once; update forwards and backward passes; the KL reference forward),
   averaged over the plans of the first --plans iterations;
3. GPU-hours per iteration = FLOPs / (peak x MFU), the wall time on N GPUs, and how many
   iterations a budget of --budget-gpu-hours buys (the paper's 350 by default).
The MFU is an assumption (--mfu, default 0.4): say which one you used.
4. Memory per GPU (grpo_zoo/cost/memory.py): what the run holds (weights, LoRA and optimizer states
   under the ZeRO stage, EMA, reference model, VAE) plus its largest transient phase (rollout
   forward at its micro-batch, update with or without checkpointing, VAE decode, the prompt
   encoding at the start, loading), the phase that binds, and a
   verdict for --gpu; when it does not fit, the single changes that would make it fit.
   --no-memory skips it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grpo_zoo.cost.counts import estimate
from grpo_zoo.cost.flops import GPUS, model_shapes
from grpo_zoo.errors import AT_LEAST_ONE, POSITIVE, ArgParser, ConfigError, Range, cli, number


def load_configs(path: str) -> list[tuple[str, object]]:
    """(name, RunConfig) of a run config, or of each variant of an experiment (first seed)."""
    return [(name, cfg) for name, cfg, _ in load_sized(path)]


def load_sized(path: str) -> list[tuple[str, object, int | None]]:
    """(name, RunConfig, the GPUs its experiment declares or None) for each config in `path`."""
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build, load_config_file, load_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"CONFIG: no file {path!r}")
    raw = load_yaml(p)
    if "variants" in raw or "seeds" in raw:  # an experiment file
        from grpo_zoo.config.experiment import load_experiment

        exp = load_experiment(p, "/tmp/grpo-zoo-estimate")
        first = {}
        for r in exp.runs:
            first.setdefault(r.variant, r)
        gpus = exp.resources.gpus or None
        return [(f"{exp.name}/{v}", build(RunConfig, r.config), gpus) for v, r in first.items()]
    return [(p.stem, build(RunConfig, load_config_file(p)), None)]


def parser() -> ArgParser:
    p = ArgParser(prog="python -m grpo_zoo.estimate", description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="run config or experiment YAML")
    p.add_argument(
        "--gpus",
        type=number(int, AT_LEAST_ONE),
        default=None,
        help="GPUs the run uses (default: what an experiment file's resources.gpus declares)",
    )
    p.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    p.add_argument(
        "--mfu",
        type=number(float, Range(1e-3, 1)),  # below 0.1% is no assumption a run can make
        default=0.4,
        help="model FLOPs utilisation assumed (default 0.4)",
    )
    p.add_argument(
        "--budget-gpu-hours", type=number(float, POSITIVE), default=350.0, help="budget to turn into iterations"
    )
    p.add_argument(
        "--plans", type=number(int, Range(1, 10_000)), default=64, help="iterations whose plans are averaged"
    )
    p.add_argument("--format", choices=("md", "json"), default="md")
    p.add_argument("--no-memory", action="store_true", help="skip the per-GPU memory estimate")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if (args.gpus is not None and args.gpus < 1) or not 0 < args.mfu <= 1 or args.plans < 1:
        raise ConfigError("--gpus >= 1, 0 < --mfu <= 1 and --plans >= 1, please")
    sized = [c for path in args.configs for c in load_sized(path)]
    if args.gpus is None:
        counts = {gpus for _, _, gpus in sized}
        if None in counts or len(counts) > 1:
            raise ConfigError(
                "--gpus: required (a run config declares no GPUs)"
                if None in counts
                else f"--gpus: required (the experiments declare {', '.join(map(str, sorted(counts)))} GPUs)"
            )
        args.gpus = counts.pop()
    configs = [(name, cfg) for name, cfg, _ in sized]
    for name, cfg in configs:
        if cfg.data.prompts_per_step % args.gpus:
            raise ConfigError(
                f"{name}: data.prompts_per_step {cfg.data.prompts_per_step} does not split over {args.gpus} GPUs"
            )
        if cfg.model.is_wan:
            model_shapes(cfg.model)  # a missing directory with no known arch fails here, before any counting
    rows = []
    for name, cfg in configs:
        rows.append({"config": name, **estimate(cfg, args.gpus, args.gpu, args.mfu, args.budget_gpu_hours, args.plans)})
        if not args.no_memory and cfg.model.is_wan:  # the memory model is the wan stack's
            from grpo_zoo.cost.memory import report

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
            f"| {r['config']} | {r['fwd_flops_per_nfe'] / 1e12:.3g} | {r['bwd_flops_per_nfe'] / 1e12:.3g} | "
            f"{r['rollout_nfe']:.0f} + {r['update_nfe']:.0f} | {r['backward']:.0f} | "
            f"{r['flops_per_iteration'] / 1e15:.3g} | {r['gpu_hours_per_iteration']:.3g} | "
            f"{r['wall_minutes_per_iteration']:.1f} | {r['iterations_in_budget']:.0f} |"
        )
    for r, (_, cfg) in zip(rows, configs, strict=True):
        if "rollout_nfe_high" in r:
            print_experts(r, cfg)
    priced = [r for r in rows if "memory" in r]
    if priced:
        print_memory(priced, args.gpu)
    if not args.no_memory and len(priced) < len(rows):
        print("memory: the per-GPU memory model covers wan models; toy runs measure their own")
    return 0


def print_experts(r: dict, cfg) -> None:
    """A two-expert model's split: what each expert serves and trains per iteration, and its FLOPs."""
    from grpo_zoo.models.wan22 import configured_boundary

    fwd, bwd = r["fwd_flops_per_nfe"], r["bwd_flops_per_nfe"]
    per_item = r["update_nfe"] / max(r["trained_high"] + r["trained_low"], 1)  # update forwards per trained item
    print(f"{r['config']}: experts switched at boundary {configured_boundary(cfg.model):g} (sigma >= it: high)")
    for name in ("high", "low"):
        nfe = r["rollout_nfe_high"] if name == "high" else r["rollout_nfe"] - r["rollout_nfe_high"]
        items = r[f"trained_{name}"]
        back = r["backward"] * items / max(r["trained_high"] + r["trained_low"], 1)
        pflops = ((nfe + items * per_item) * fwd + back * bwd) / 1e15
        trains = "trains" if name in cfg.model.experts else "frozen"
        print(
            f"  {name}: {trains}; serves {nfe:.0f} rollout NFE and {items:.1f} trained transitions per iteration, "
            f"{pflops:.3g} PFLOP/iter"
        )


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
        n, chunks = m["rollout_trajectories"], m["rollout_chunks"]
        where = f"a chunk's {n // chunks} ({chunks} chunks of the rank's {n})" if chunks > 1 else n
        print(f"  rollout: {m['rollout_micro_batch']} of {where} trajectories per forward")
        for fix in m["fixes"]:
            print(f"  would fit with {fix}")
        if not m["fits"] and not m["fixes"]:
            print("  no single change fits: combine them (fewer frames with ZeRO-3, ...)")


if __name__ == "__main__":
    sys.exit(main())
