"""What every benchmark shares: a real Trainer on the toy world, timers, peak memory.

Benchmarks run the library's own code paths (the trainer's iteration, the rollout sampler)
on the embedded toy model, in one process, the configurations they compare interleaved
iteration by iteration, so the ratios they print are taken on the same machine in the same
moments (a ratio is the median of per-iteration pairs).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOY_BASE = ROOT / "experiments" / "toy" / "bench_wide.yaml"  # the settings BENCHMARKS.md was measured at

ALGORITHMS = {
    "flow_grpo": {"name": "flow_grpo", "timestep_fraction": 0.6},
    "flow_grpo_fast_w1": {"name": "flow_grpo_fast", "window": 1},
    "flow_grpo_fast_w2": {"name": "flow_grpo_fast", "window": 2},
    "flow_grpo_fast_w3": {"name": "flow_grpo_fast", "window": 3},
    "flash_grpo": {"name": "flash_grpo", "grouping": "iso_temporal", "rectify": True},
    "flash_grpo_shared": {"name": "flash_grpo", "grouping": "iso_temporal", "rectify": True, "initial_noise": "shared"},
}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    return info


def make_trainer(algorithm: str, steps: int, group_size: int, prompts: int = 4, **extra):
    """A Trainer for the toy base config with these settings, in a throwaway run directory."""
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import apply_overrides, build, load_config_file
    from grpo_zoo.training.trainer import Trainer

    data = load_config_file(TOY_BASE)
    run_dir = tempfile.mkdtemp(prefix="grpo-zoo-bench-")
    over = {
        "algorithm": ALGORITHMS[algorithm],
        "sampling.steps": steps,
        "data.group_size": group_size,
        "data.prompts_per_step": prompts,
        "data.eval_samples": 4,
        "sampling.eval_steps": 2,
        "save_eval_videos": False,
        "run_dir": run_dir,
        **extra,
    }
    data = apply_overrides(data, over)
    return Trainer(build(RunConfig, data), progress=False)


def release(trainer) -> None:
    """Free a trainer without tearing down the process group the next one reuses."""
    import shutil

    shutil.rmtree(trainer.run.path, ignore_errors=True)
    del trainer
    gc.collect()


def peak_memory_mb(trainer) -> float:
    """Peak memory of tensors allocated during one iteration, above the level at its start.

    CPU: from the allocation and free events torch's profiler records (every tensor
    allocation, in order), which is deterministic, unlike the process's resident size that
    the C allocator's caching blurs. CUDA: torch.cuda.max_memory_allocated."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.iteration()
        trainer.step += 1
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.iteration()
    trainer.step += 1
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


@contextmanager
def model_timer(trainer):
    """Time spent inside the transformer's forward and in backward passes, per iteration."""
    module = trainer.engine.module
    acc = {"forward": 0.0, "backward": 0.0}
    starts: list[float] = []
    pre = module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

    def post(*_):
        acc["forward"] += time.perf_counter() - starts.pop()

    hook = module.register_forward_hook(post)
    engine = trainer.engine
    original = engine.backward

    def timed_backward(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        acc["backward"] += time.perf_counter() - t0
        return out

    engine.backward = timed_backward
    try:
        yield acc
    finally:
        engine.backward = original
        pre.remove()
        hook.remove()


def iteration_costs(trainer, iterations: int, warmup: int = 1) -> dict:
    """Cost of `iterations` training iterations after `warmup` (median device-s; mean NFE, FLOPs,
    backward passes, the split between model and everything else), and the peak memory of
    one more iteration."""
    return interleaved_costs({"one": trainer}, iterations, warmup)["one"]


def interleaved_costs(trainers: dict, iterations: int, warmup: int = 1) -> dict[str, dict]:
    """iteration_costs of several trainers at once, their iterations interleaved: round i runs
    one iteration of each, in an order that rotates every round, so a slow spell of the machine
    (other tenants, frequency changes) lands on every configuration alike. Each cost keeps its
    per-iteration seconds (`times`): the i-th of two configurations form a pair."""
    names = list(trainers)
    for name in names:
        for _ in range(warmup):
            trainers[name].iteration()
            trainers[name].step += 1
    before = {k: dict(t.meter.total.as_metrics()) for k, t in trainers.items()}
    times: dict[str, list[float]] = {k: [] for k in names}
    with ExitStack() as stack:
        accs = {k: stack.enter_context(model_timer(t)) for k, t in trainers.items()}
        for i in range(iterations):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                t0 = time.perf_counter()
                trainers[name].iteration()
                times[name].append(time.perf_counter() - t0)
                trainers[name].step += 1
    return {k: _cost(trainers[k], before[k], times[k], accs[k]) for k in names}


def _cost(trainer, before: dict, times: list[float], acc: dict) -> dict:
    after = trainer.meter.total.as_metrics()
    peak = peak_memory_mb(trainer)  # one more iteration, profiled (not timed)
    n = len(times)
    model = acc["forward"] + acc["backward"]
    return {
        "device_s": statistics.median(times),  # robust to one disturbed iteration
        "device_s_min": min(times),
        "device_s_max": max(times),
        "times": times,
        "nfe": (after["compute/nfe"] - before["compute/nfe"]) / n,
        "backward": (after["compute/backward"] - before["compute/backward"]) / n,
        "flops": (after["compute/flops"] - before["compute/flops"]) / n,
        "peak_mem_mb": peak,
        "model_s": model / n,
        "outside_model_share": max(0.0, 1 - model / sum(times)),  # over all the timed iterations
    }
