"""Golden metrics: two iterations of every registered algorithm on the toy world.

`python -m tests.golden --update` trains each variant (see `variants`) for two
iterations of a tiny fixed config and stores, per variant, tests/golden/<variant>.json:
the loss terms, rewards, gradient sizes by timestep (`grad_t/<k>`) and compute counters
of every metrics row (wall-clock keys left out), with the sha256 of the toy base
checkpoint it ran on. tests/test_golden.py runs the same and compares within
RTOL/ATOL. Generate them with 2 threads, as the tests run (OMP_NUM_THREADS=2): most variants
give the same rows bit for bit at 1 and 4 threads, but awm-uniform moved by 1.1e-4 at 1
thread, just past RTOL. The machine does not matter (x86: ATen's AVX2 kernels on
every one, see __main__.py).

Variants come from the registry (grpo_zoo.core.algorithm.names()): each algorithm with its
default config, plus each non-default choice of the boolean and Literal switches its own
Config adds (Flash-GRPO's ablations: flash_grpo-per_sample, flash_grpo-no_rectify), plus
the settings in EXTRA that no switch reaches (a field with a value of its own, or a
sampling option a method needs: a dotted key is a run override, not an algorithm field).

All variants run in one process, one after another (the DeepSpeed process group is
kept between them and torn down at the end): one import instead of one per variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent
UPDATE_COMMAND = "python -m tests.golden --update"

RTOL = 1e-4
"""Relative tolerance of a stored value. Rows made with 1, 2 and 4 threads were bit-identical
for most variants (AWM's within about 1e-4);
1e-4 leaves room for float32 reductions split otherwise and is far below what a change of
meaning moves (a dropped weight, a flipped sign: O(1) relative)."""
SENSITIVE_RTOL = {"awm": 5e-3, "diffusion_nft": 5e-3}
"""Relative tolerance of the forward-process methods, by algorithm. Their losses amplify
float32 rounding (AWM's ghuber surrogate takes the mse to the power 0.25; NFT divides by
the detached per-sample error), and their rows moved by up to 3e-3 relative between two x86
machines with the same packages and thread count (an Intel and an AMD EPYC, both with ATen's
AVX2 kernels), while every PPO variant stayed within RTOL. 5e-3 is still far below what a
change of meaning moves."""
ATOL = 1e-6
"""Absolute tolerance, for values that are sums of terms cancelling to about zero."""
WALL_CLOCK_KEYS = ("compute/device_seconds", "compute/device_hours")

CONFIG = {
    "model.backend": "toy",
    "model.path": "toy-base",
    "model.lora_rank": 8,
    "model.lora_alpha": 8,
    "sampling.schedule": "wan",
    "sampling.steps": 4,
    "sampling.shift": 3.0,
    "sampling.noise": "flow_sde",
    "sampling.guidance": 1.0,
    "sampling.eval_steps": 2,
    "reward.name": "toy_hps",
    "data.prompts": "toy:train",
    "data.eval_prompts": "toy:test",
    "data.prompts_per_step": 2,
    "data.group_size": 4,
    "data.eval_every": 0,
    "data.eval_samples": 4,
    "optim.lr": 3e-4,
    "optim.clip_range": 0.2,
    "optim.beta": 0.0,
    "optim.minibatches": 2,
    "optim.micro_batch": 32,
    "engine.zero_stage": 0,
    "engine.precision": "fp32",
    "engine.device": "cpu",
    "budget.steps": 2,
    "checkpoint_every": 2,
    "save_eval_videos": False,
    "seed": 0,
}
"""The tiny fixed config every variant runs with (its algorithm fields come on top)."""


def _switches(config_cls: type) -> list[tuple[str, object]]:
    """(field, value) for each non-default choice of a bool or Literal field that
    `config_cls` adds to the fields every algorithm has."""
    from grpo_zoo.core.algorithm import AlgorithmConfig

    common = {f.name for f in dataclasses.fields(AlgorithmConfig)}
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if f.name in common:
            continue
        hint = hints[f.name]
        if hint is bool:
            choices: tuple = (True, False)
        elif typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
        else:
            continue
        out += [(f.name, c) for c in choices if c != f.default]
    return out


EXTRA = {
    "dance_grpo-two_rewards": {"name": "dance_grpo", "reward.name": {"toy_aesthetic": 1.0, "toy_motion": 0.5}},
    "g2rpo-fine_only": {"name": "g2rpo", "granularities": [1]},
    "mix_grpo-flash": {"name": "mix_grpo", "post_compress_ratio": 0.4, "sampling.ode_solver": "dpm2"},
    "mix_grpo-two_rewards": {"name": "mix_grpo", "reward.name": {"toy_aesthetic": 1.0, "toy_motion": 0.5}},
    "diffusion_nft-no_old_copy": {"name": "diffusion_nft", "old_decay_max": 0.0},
}
"""Variants beyond the switches: DanceGRPO's several rewards, G2RPO at one granularity,
MixGRPO-Flash (its re-gridded ODE tail, solved by the multistep solver, a sampling option),
DiffusionNFT with the current policy as its old one."""


def variants() -> dict[str, dict]:
    """Variant name -> algorithm fields (and dotted run overrides), enumerated from the registry."""
    from grpo_zoo.core import algorithm

    out = {}
    for name in algorithm.names(plugins=False):
        out[name] = {"name": name}
        for field, value in _switches(algorithm.get(name).Config):
            label = (field if value else f"no_{field}") if isinstance(value, bool) else str(value)
            out[f"{name}-{label}"] = {"name": name, field: value}
    return {**out, **{k: v for k, v in EXTRA.items() if v["name"] in out}}


def split(variant_fields: dict) -> tuple[dict, dict]:
    """(algorithm fields, dotted run overrides) of a variant."""
    alg = {k: v for k, v in variant_fields.items() if "." not in k}
    return alg, {k: v for k, v in variant_fields.items() if "." in k}


def checkpoint_hashes() -> dict[str, str]:
    """sha256 of every safetensors file of the toy base checkpoint, by relative path."""
    from grpo_zoo.toy.model import resolve

    root = resolve(CONFIG["model.path"])
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.safetensors"))
    }


def golden_path(variant: str) -> Path:
    return GOLDEN_DIR / f"{variant}.json"


def algorithm_args(variant_fields: dict) -> list[str]:
    """`algorithm.<field>=<value>` command-line overrides of a variant's algorithm fields (and
    its dotted run overrides as they are)."""
    alg, run = split(variant_fields)
    return [f"algorithm.{k}={json.dumps(v)}" for k, v in alg.items()] + [f"{k}={json.dumps(v)}" for k, v in run.items()]


def overrides(variant_fields: dict, run_dir: Path) -> list[str]:
    """The shared CONFIG, a variant's dotted run overrides in place of CONFIG's own, its algorithm."""
    alg, run = split(variant_fields)
    fields = {**CONFIG, **run, "run_dir": str(run_dir)}
    return [f"{k}={json.dumps(v)}" for k, v in fields.items()] + algorithm_args(alg)


def _kept(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS}


def run_variants(names: list[str], workdir: Path) -> dict[str, dict]:
    """Train each named variant for two iterations; its record (rows, hashes, config)."""
    import torch

    from grpo_zoo.runs import RunDir
    from grpo_zoo.train import resolve
    from grpo_zoo.training.trainer import Trainer

    table, hashes, records = variants(), checkpoint_hashes(), {}
    try:
        for name in names:
            run_dir = workdir / name
            trainer = Trainer(resolve(overrides(table[name], run_dir)), progress=False)
            trainer.engine.close = lambda: None  # the next variant reuses the process group
            trainable = {n: p for n, p in trainer.policy.net.named_parameters() if p.requires_grad}
            before = {n: p.detach().clone() for n, p in trainable.items()}
            trainer.train()
            moved = sum(not torch.equal(before[n], p.detach()) for n, p in trainable.items())
            records[name] = {
                "variant": name,
                "algorithm": table[name],
                "config": CONFIG,
                "checkpoint_sha256": hashes,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "regenerate": UPDATE_COMMAND,
                "trained_tensors_moved": [moved, len(trainable)],
                "rows": [_kept(r) for r in RunDir(run_dir).rows()],
            }
    finally:
        from grpo_zoo.training.engine import RENDEZVOUS_KEYS, teardown

        teardown()

        for key in RENDEZVOUS_KEYS:  # later subprocesses must not inherit this rendezvous
            os.environ.pop(key, None)
    return records


def _close(a, b, rtol: float = RTOL) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=ATOL)
    return a == b


def compare(expected: dict, actual: dict) -> list[str]:
    """One line per difference between a stored record and a fresh one (empty: equal)."""
    rtol = SENSITIVE_RTOL.get(expected.get("algorithm", {}).get("name"), RTOL)
    diffs = []
    exp_rows, act_rows = expected["rows"], actual["rows"]
    if [(r["step"], r["kind"]) for r in exp_rows] != [(r["step"], r["kind"]) for r in act_rows]:
        return [
            f"rows differ: {[(r['step'], r['kind']) for r in act_rows]} (stored {[(r['step'], r['kind']) for r in exp_rows]})"
        ]
    for e, a in zip(exp_rows, act_rows):
        where = f"step {e['step']} {e['kind']}"
        if set(e) != set(a):
            diffs.append(f"{where}: keys {sorted(set(a) ^ set(e))} only on one side (stored {sorted(set(e) - set(a))})")
        for key in sorted(set(e) & set(a)):
            if not _close(e[key], a[key], rtol):
                rel = abs(a[key] - e[key]) / max(abs(e[key]), 1e-300) if isinstance(e[key], float) else float("nan")
                diffs.append(f"{where}: {key} = {a[key]!r}, stored {e[key]!r} (rel {rel:.2e})")
    return diffs
