"""Bad input, table-driven: every CLI, run in this process through its `main(argv)`, answers each
malformed input with exit status 2 and exactly one line on stderr (no traceback), before any
compute, and leaves an existing run directory (and everything else under the runs folder)
byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, TINY, damaged_checkpoint

BASE = str(ROOT / "experiments" / "toy" / "base.yaml")
NOT_WRITABLE = "/proc/1"  # no one may create files here, root included (chmod does not bind root)


def experiment(**changes) -> dict:
    exp = {
        "name": "bad",
        "base": BASE,
        "config": TINY,
        "seeds": [0],
        "variants": {"flash": {"algorithm": {"name": "flash_grpo"}}},
        "tune": {
            "n_trials": 2,
            "budget": {"steps": 2},
            "rungs": 2,
            "sampler": {"name": "random", "seed": 0},
            "space": {"optim.lr": {"low": 1e-4, "high": 1e-3, "log": True}},
        },
    }
    for key, value in changes.items():
        if value is DELETE:
            exp.pop(key)
        else:
            exp[key] = value
    return exp


def tune_section(**changes) -> dict:
    tune = dict(experiment()["tune"])
    for key, value in changes.items():
        if value is DELETE:
            tune.pop(key)
        else:
            tune[key] = value
    return experiment(tune=tune)


DELETE = object()

# experiment files the cases name as {exp:NAME}; each one is wrong in one way
EXPERIMENTS = {
    "ok": experiment(),
    "unknown_key": experiment(runs=3),
    "name_path": experiment(name="../escape"),
    "base_number": experiment(base=5),
    "base_missing": experiment(base="nope.yaml"),
    "seeds_text": experiment(seeds="zero"),
    "seeds_empty": experiment(seeds=[]),
    "seeds_negative": experiment(seeds=[-1]),
    "variants_list": experiment(variants=["flash"]),
    "variant_name": experiment(variants={"a b": {}}),
    "variant_not_mapping": experiment(variants={"a": 3}),
    "variant_unknown_field": experiment(variants={"a": {"optim": {"lrr": 1}}}),
    "variant_lr_zero": experiment(variants={"a": {"optim": {"lr": 0}}}),
    "grid_scalar": experiment(grid={"optim.lr": 1e-4}),
    "grid_empty": experiment(grid={"optim.lr": []}),
    "config_list": experiment(config=[1, 2]),
    "config_lr_nan": experiment(config={**TINY, "optim": {"lr": float("nan")}}),
    "config_adv_clip_inf": experiment(config={**TINY, "optim": {"adv_clip": float("inf")}}),
    "config_eval_every": experiment(config={**TINY, "data": {**TINY["data"], "eval_every": -1}}),
    "config_eval_samples": experiment(config={**TINY, "data": {**TINY["data"], "eval_samples": 0}}),
    "config_budget_none": experiment(config={**TINY, "budget": {"steps": None}}),
    "config_budget_hours": experiment(config={**TINY, "budget": {"device_hours": -1.0}}),
    "config_reward_options": experiment(config={**TINY, "reward": {"options": {"url": "x"}}}),
    "config_k_range": experiment(variants={"a": {"algorithm": {"name": "flash_grpo", "k_range": [0, 99]}}}),
    "config_model_path": experiment(config={**TINY, "model": {"path": "/nonexistent/model"}}),
    "config_prompts": experiment(config={**TINY, "data": {**TINY["data"], "prompts": "/nonexistent.txt"}}),
    "resources_negative": experiment(resources={"gpus": -1}),
    "resources_unknown": experiment(resources={"gpu": 1}),
    "resources_text": experiment(resources={"nodes": "two"}),
    "resources_list": experiment(resources=[1]),
    "report_list": experiment(report=["flash"]),
    "report_unknown": experiment(report={"baseline": "flash", "goal": 0.5}),
    "report_target_text": experiment(report={"target": "high"}),
    "report_target_huge": experiment(report={"target": 1e300}),
    "report_baseline_unknown": experiment(report={"baseline": "flow"}),
    "report_baseline_prefix": experiment(report={"baseline": "flas"}),  # matched exactly
    "report_baseline_seeded": experiment(report={"baseline": "flash_seed0"}),  # a run, not a variant
    "report_baseline_number": experiment(report={"baseline": 3}),
    # tune sections
    "tune_missing": experiment(tune=DELETE),
    "tune_list": experiment(tune=[1]),
    "tune_unknown": tune_section(trials=3),
    "tune_space_empty": tune_section(space={}),
    "tune_space_list": tune_section(space=[1]),
    "tune_low_high": tune_section(space={"optim.lr": {"low": 1e-3, "high": 1e-5}}),
    "tune_low_nan": tune_section(space={"optim.lr": {"low": float("nan"), "high": 1e-3}}),
    "tune_high_inf": tune_section(space={"optim.lr": {"low": 1e-4, "high": float("inf")}}),
    "tune_log_zero": tune_section(space={"optim.lr": {"low": 0.0, "high": 1e-3, "log": True}}),
    "tune_step_zero": tune_section(space={"optim.lr": {"low": 1e-4, "high": 1e-3, "step": 0}}),
    "tune_low_text": tune_section(space={"optim.lr": {"low": "small", "high": 1e-3}}),
    "tune_type": tune_section(space={"optim.lr": {"low": 1e-4, "high": 1e-3, "type": "str"}}),
    "tune_choices_empty": tune_section(space={"optim.lr": []}),
    "tune_field_unknown": tune_section(space={"optim.lrr": [1e-4]}),
    "tune_value_invalid": tune_section(space={"data.group_size": [1, 4]}),
    "tune_value_nan": tune_section(space={"optim.adv_clip": [float("nan"), 5.0]}),
    "tune_k_range_schedule": tune_section(space={"algorithm.k_range": [[0, 3], [0, 9]]}),
    "tune_variants_unknown": tune_section(variants=["nope"]),
    "tune_variants_text": tune_section(variants="flash"),
    "tune_spaces_unknown": tune_section(spaces={"nope": {"optim.lr": [1e-4]}}),
    "tune_spaces_not_mapping": tune_section(spaces={"flash": [1]}),
    "tune_pruner_name": tune_section(pruner={"name": "hyperband2"}),
    "tune_pruner_text": tune_section(pruner="median"),
    "tune_pruner_option": tune_section(pruner={"name": "median", "n_startup_trials": -1}),
    "tune_sampler_name": tune_section(sampler={"name": "grid"}),
    "tune_sampler_seed": tune_section(sampler={"name": "random", "seed": "zero"}),
    "tune_sampler_option": tune_section(sampler={"name": "random", "bogus": 1}),
    "tune_rungs_zero": tune_section(rungs=0),
    "tune_rungs_text": tune_section(rungs="two"),
    "tune_n_trials_zero": tune_section(n_trials=0),
    "tune_budget_list": tune_section(budget=[1]),
    "tune_budget_key": tune_section(budget={"hours": 1}),
    "tune_budget_nan": tune_section(budget={"flops": float("nan")}),
    "tune_budget_negative": tune_section(budget={"device_hours": -1.0}),
    "tune_budget_text": tune_section(budget={"steps": "many"}),
    "tune_drop_big": tune_section(collapse_drop=2.0),
    "tune_drop_text": tune_section(collapse_drop="much"),
    "tune_seed_negative": tune_section(seed=-1),
    "tune_enqueue_text": tune_section(enqueue="x"),
    "tune_enqueue_unknown": tune_section(enqueue=[{"optim.beta": 0.1}]),
    "tune_enqueue_invalid": tune_section(enqueue=[{"optim.lr": -1.0}]),
    # values, structures and names the code cannot hold or that cannot be meant: one class each
    "seeds_huge": experiment(seeds=[10**30]),
    "name_empty": experiment(name=""),
    "name_blank": experiment(name="  "),
    "variants_identical": experiment(
        variants={"a": {"algorithm": {"name": "flash_grpo"}}, "b": {"algorithm": {"name": "flash_grpo"}}}
    ),
    "variant_empty_name": experiment(variants={"": {"algorithm": {"name": "flash_grpo"}}}),
    "grid_duplicate_values": experiment(grid={"optim.lr": [1e-4, 1e-4]}),
    "tune_int_fractional_step": tune_section(space={"data.group_size": {"low": 2, "high": 8, "step": 1.5}}),
    "tune_n_trials_bool": tune_section(n_trials=True),
    "tune_variants_empty": tune_section(variants=[]),
    "tune_bound_huge": tune_section(
        space={
            "optim.lr": {
                "low": 1e-4,
                "high": float(
                    "10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
                ),
            }
        }
    ),
    "tune_int_bound_huge": tune_section(
        space={
            "data.group_size": {
                "low": 2,
                "high": 10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000,
            }
        }
    ),
    "tune_seed_huge": tune_section(seed=10**30),
    "tune_sampler_seed_huge": tune_section(sampler={"name": "random", "seed": 10**30}),
    "tune_rungs_huge": tune_section(rungs=10**30),
    "tune_n_trials_huge": tune_section(n_trials=10**30),
}

CLUSTERS = {
    "ok": {"partition": "debug", "cpus_per_task": 1},
    "unknown": {"partition": "debug", "gpus": 1},
    "mem": {"mem_gb": -1},
    "time": {"time_min": "long"},
    "setup": {"setup": "module load x"},
    "exclusive": {"exclusive": "yes"},
    "list": [1, 2],
}

# (CLI, argv). Placeholders: {cfg} a valid run config, {run} the existing run directory,
# {runs} the runs folder, {file} a regular file, {dir} an empty directory, {missing} a path
# in a missing folder, {ro} a folder no one may write, {yaml_bad} malformed YAML, {binary}
# a binary file, {yaml_list} YAML that is not a mapping, {exp:X} / {cluster:X} files above,
# {journal} an existing journal storage holding another study, {store} where no storage is.
TRAIN = [
    ["{missing}/config.yaml"],
    ["{yaml_bad}"],
    ["{binary}"],
    ["{yaml_list}"],
    ["{dir}"],
    ["{cfg}", "run_dir={run}", "seed=1000000000000000000000000000000"],  # values the code cannot hold: one class
    ["{cfg}", "run_dir={run}", "seed=4294967296"],
    ["{cfg}", "run_dir={run}", "data.eval_seed=1000000000000000000000000000000"],
    ["{cfg}", "run_dir={run}", "engine.threads=100000000000000000000"],
    ["{cfg}", "run_dir={run}", "engine.threads=100000"],
    ["{cfg}", "run_dir={run}", "sampling.steps=1000000000000000000000000000000"],
    ["{cfg}", "run_dir={run}", "sampling.eval_steps=5000"],
    ["{cfg}", "run_dir={run}", "model.lora_rank=100000000000000000000"],
    [
        "{cfg}",
        "run_dir={run}",
        "optim.lr=10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    ],
    ["{cfg}", "run_dir={run}", "optim.micro_batch=9999999999999999999999999"],
    ["{cfg}", "run_dir={run}", "model.frames=1000000000000000000000000000000"],
    ["{cfg}", "run_dir="],  # empty paths, duplicate keys, symlink loops: one class each
    ["{cfg}", "run_dir=  "],
    [""],
    ["{dup_yaml}", "run_dir={run}"],
    ["{loop}", "run_dir={run}"],
    ["{base_int}", "run_dir={run}"],
    ["{base_list}", "run_dir={run}"],
    ["{cfg}", "run_dir={run}", "optim.lr=nan"],
    ["{cfg}", "run_dir={run}", "optim.lr=.inf"],
    ["{cfg}", "run_dir={run}", "optim.lr=0"],
    ["{cfg}", "run_dir={run}", "optim.lr=-1e-4"],
    ["{cfg}", "run_dir={run}", "optim.lr=fast"],
    ["{cfg}", "run_dir={run}", "optim.adv_clip=0"],
    ["{cfg}", "run_dir={run}", "optim.adv_clip=.nan"],
    ["{cfg}", "run_dir={run}", "optim.max_grad_norm=0"],
    ["{cfg}", "run_dir={run}", "optim.max_grad_norm=-1"],
    ["{cfg}", "run_dir={run}", "optim.max_grad_norm=.inf"],
    ["{cfg}", "run_dir={run}", "optim.clip_range=0"],
    ["{cfg}", "run_dir={run}", "optim.weight_decay=-0.1"],
    ["{cfg}", "run_dir={run}", "optim.beta=-1"],
    ["{cfg}", "run_dir={run}", "optim.ema_decay=1"],
    ["{cfg}", "run_dir={run}", "optim.minibatches=0"],
    ["{cfg}", "run_dir={run}", "optim.micro_batch=-2"],
    ["{cfg}", "run_dir={run}", "data.eval_every=-1"],
    ["{cfg}", "run_dir={run}", "data.eval_samples=0"],
    ["{cfg}", "run_dir={run}", "data.group_size=1"],
    ["{cfg}", "run_dir={run}", "data.prompts_per_step=0"],
    ["{cfg}", "run_dir={run}", "data.prompts={missing}/prompts.txt"],
    ["{cfg}", "run_dir={run}", "sampling.steps=0"],
    ["{cfg}", "run_dir={run}", "sampling.shift=0"],
    ["{cfg}", "run_dir={run}", "sampling.guidance=0.5"],
    ["{cfg}", "run_dir={run}", "sampling.guidance=.nan"],
    ["{cfg}", "run_dir={run}", "sampling.noise_level=-1"],
    ["{cfg}", "run_dir={run}", "sampling.schedule=cosine"],
    ["{cfg}", "run_dir={run}", "sampling.ode_solver=heun"],
    ["{cfg}", "run_dir={run}", "sampling.ode_stride=0"],
    ["{cfg}", "run_dir={run}", "sampling.ode_stride=1.5"],
    ["{cfg}", "run_dir={run}", "algorithm.name=mix_grpo", "algorithm.post_compress_ratio=0.4", "sampling.ode_stride=2"],
    ["{cfg}", "run_dir={run}", "algorithm.name=mix_grpo", "algorithm.post_compress_ratio=0"],
    ["{cfg}", "run_dir={run}", "algorithm.name=mix_grpo", "algorithm.post_compress_ratio=1.5"],
    ["{cfg}", "run_dir={run}", "algorithm.name=mix_grpo", "algorithm.shift=-1"],
    ["{cfg}", "run_dir={run}", "algorithm.name=branch_grpo", "algorithm.split_noise_scale=0"],
    ["{cfg}", "run_dir={run}", "algorithm.name=branch_grpo", "algorithm.split_noise_scale=.nan"],
    ["{cfg}", "run_dir={run}", "algorithm.name=branch_grpo", "algorithm.score=pixels"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_micro_batch=0"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_micro_batch=100000"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_chunks=0"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_chunks=3"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_chunks=1.5"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_chunks=8", "algorithm.initial_noise=shared"],
    ["{cfg}", "run_dir={run}", "sampling.rollout_chunks=4", "algorithm.name=branch_grpo"],
    ["{cfg}", "run_dir={run}", "model.vae_batch=0"],
    ["{cfg}", "run_dir={run}", "model.vae_dtype=fp16"],
    ["{cfg}", "run_dir={run}", "algorithm.name=dance_grpo", "algorithm.rewards={toy_motion: 1.0}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_nope: 1.0}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: -1}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: .nan}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: .inf}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: 0, toy_still: 0}"],
    ["{cfg}", "run_dir={run}", "reward.name={}"],
    ["{cfg}", "run_dir={run}", "reward.name={weighted: 1}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: true}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: 1}", "reward.options={hpsv3: {}}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: 1}", "reward.options={toy_motion: {x: 1}}"],
    ["{cfg}", "run_dir={run}", "reward.name={toy_motion: 1}", "reward.aggregate=mean"],
    [
        "{cfg}",
        "run_dir={run}",
        "reward.name={toy_motion: 1, toy_still: 1}",
        "reward.aggregate=losses",
        "algorithm.name=awm",
    ],
    [
        "{cfg}",
        "run_dir={run}",
        "reward.name={hpsv3: 1, toy_still: 1}",
        "reward.options={hpsv3: {url: 'http://127.0.0.1:9'}}",
    ],
    ["{cfg}", "run_dir={run}", "algorithm.name=g2rpo", "data.group_size=4", "algorithm.granularities=[1, 2, 3]"],
    ["{cfg}", "run_dir={run}", "algorithm.name=g2rpo", "algorithm.granularities=[2]"],
    ["{cfg}", "run_dir={run}", "algorithm.name=diffusion_nft", "algorithm.old_decay_max=1.0"],
    ["{cfg}", "run_dir={run}", "algorithm.name=diffusion_nft", "algorithm.old_decay_rate=nan"],
    ["{cfg}", "run_dir={run}", "algorithm.name=diffusion_nft", "algorithm.old_decay_flat=-5"],
    ["{cfg}", "run_dir={run}", "algorithm.name=diffusion_nft", "algorithm.old_decay_flat=2.5"],
    ["{cfg}", "run_dir={run}", "algorithm.name=diffusion_nft", "engine.zero_stage=3"],
    ["{cfg}", "run_dir={run}", "algorithm.name=awm", "engine.zero_stage=3"],
    ["{cfg}", "run_dir={run}", "budget.steps=0"],
    ["{cfg}", "run_dir={run}", "budget.device_hours=-1"],
    ["{cfg}", "run_dir={run}", "budget.flops=.nan"],
    ["{cfg}", "run_dir={run}", "budget.steps=null"],
    ["{cfg}", "run_dir={run}", "checkpoint_every=0"],
    ["{cfg}", "run_dir={run}", "seed=-3"],
    ["{cfg}", "run_dir={run}", "model.lora_rank=-1"],
    ["{cfg}", "run_dir={run}", "model.lora_alpha=0"],
    ["{cfg}", "run_dir={run}", "model.path={missing}"],
    ["{cfg}", "run_dir={run}", "engine.zero_stage=7"],
    ["{cfg}", "run_dir={run}", "model.attention_backend=flash"],  # attention kernels: grpo_zoo/models/accel.py
    ["{cfg}", "run_dir={run}", "model.attention_backend=cudnn"],  # the toy
    ["{cfg}", "run_dir={run}", "model.compile_blocks=true"],
    ["{cfg}", "run_dir={run}", "model.compile_blocks=maybe"],
    [
        "{cfg}",
        "run_dir={run}",
        "model.backend=wan",
        "model.path={dir}",
        "model.attention_backend=cudnn",
        "engine.device=cpu",
    ],
    [
        "{cfg}",
        "run_dir={run}",
        "model.backend=wan",
        "model.path={dir}",
        "model.attention_backend=flash_3_hub",
        "engine.device=cpu",
    ],
    [
        "{cfg}",
        "run_dir={run}",
        "model.backend=wan",
        "model.path={dir}",
        "model.attention_backend=cudnn",
        "engine.precision=fp32",
    ],
    ["{cfg}", "run_dir={run}", "reward.options={{url: x}}"],
    ["{cfg}", "run_dir={run}", "reward.name=hps"],
    ["{cfg}", "run_dir={run}", "reward.name=hpsv3", "reward.options={{request_mb: 0}}"],
    ["{cfg}", "run_dir={run}", "reward.name=hpsv3", "reward.options={{request_mb: 100000}}"],
    ["{cfg}", "run_dir={run}", "reward.name=hpsv3", "reward.options={{request_frames: 0}}"],
    ["{cfg}", "run_dir={run}", "reward.name=hpsv3", "reward.options={{jpeg_quality: 100}}"],
    ["{cfg}", "run_dir={run}", "reward.name=hpsv3", "reward.options={{encode_threads: 0}}"],
    ["{cfg}", "run_dir={run}", "algorithm.name=ppo"],
    ["{cfg}", "run_dir={run}", "algorithm.k_range=[0,99]"],
    ["{cfg}", "run_dir={run}", "optim.lrr=1e-4"],
    ["{cfg}", "run_dir={run}", "optim"],
    ["{cfg}", "run_dir={run}", "optim..lr=1"],
    ["{cfg}", "run_dir={run}", "optim.lr.x=1"],
    ["{cfg}", "run_dir={file}"],
    ["{cfg}", "run_dir={file}/sub"],
    ["{cfg}", "run_dir={ro}"],
    ["{cfg}", "run_dir={ro}/run"],
    ["{cfg}", "run_dir={missing}/run", "model.backend=wan", "model.height=1", "model.width=1"],
    ["{cfg}", "run_dir={run}", "model.frames=0"],
    ["{cfg}", "run_dir={run}", "data.prompts={binary}"],
    ["{cfg}", "run_dir={run}", "data.prompts={dir}"],
    ["{cfg}", "run_dir={run}", "data.prompts={fifo}"],
    ["{cfg}", "run_dir={run}", "data.prompts={empty_file}"],
    ["{cfg}", "run_dir={missing}/run", "model.lora_targets=[nope]"],
    ["{cfg}", "run_dir={missing}/run", "model.lora_targets=[]"],
    ["{cfg}", "run_dir={missing}/run", "model.backend=wan", "model.path={empty_model}"],
    ["{cfg}", "run_dir={missing}/run", "model.backend=wan", "model.path={dir}"],
    ["{cfg}", "run_dir={missing}/run", "optim.lr=1e-4", "optim.lr=1e-3"],
    ["{fifo}", "run_dir={run}"],
]

SWEEP_EXPS = [k for k in EXPERIMENTS if not k.startswith("tune_") and k != "ok"]
SWEEP = [[f"{{exp:{k}}}", "--runs-dir", "{runs}", "--dry-run"] for k in SWEEP_EXPS] + [
    ["{missing}/exp.yaml", "--runs-dir", "{runs}"],
    ["{dir}", "--runs-dir", "{runs}"],
    ["{yaml_bad}", "--runs-dir", "{runs}"],
    ["{binary}", "--runs-dir", "{runs}"],
    ["{yaml_list}", "--runs-dir", "{runs}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--max-parallel", "0"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--max-parallel", "-1"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--max-parallel", "many"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--threads", "0"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--threads", "1.5"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--executor", "kubernetes"],
    ["{exp:ok}", "--runs-dir", "{file}"],
    ["{exp:ok}", "--runs-dir", "{file}/sub"],
    ["{exp:ok}", "--runs-dir", "{ro}"],
    ["{exp:ok}", "--runs-dir", "{ro}/runs"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--cluster", "{missing}/c.yaml"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--cluster", "{yaml_bad}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--cluster", "{binary}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--cluster", "{dir}"],
    *[["{exp:ok}", "--runs-dir", "{runs}", "--cluster", f"{{cluster:{k}}}"] for k in CLUSTERS if k != "ok"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--bogus"],
    ["{exp:ok}", "{exp:ok}", "--runs-dir", "{runs}"],
    [],
    ["{exp:config_lr_nan}", "--runs-dir", "{runs}", "--status"],
    ["{exp:config_k_range}", "--runs-dir", "{runs}"],
    ["{anchor_loop}", "--runs-dir", "{runs}", "--dry-run"],
    ["{fifo}", "--runs-dir", "{runs}", "--dry-run"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--threads", "100000000000000000000"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--max-parallel", "100000000000000000000"],
]

TUNE_EXPS = [k for k in EXPERIMENTS if k.startswith("tune_")]
TUNE = [[f"{{exp:{k}}}", "--runs-dir", "{runs}", "--storage", "{store}"] for k in TUNE_EXPS] + [
    ["{exp:config_lr_nan}", "--runs-dir", "{runs}"],
    ["{exp:variant_name}", "--runs-dir", "{runs}"],
    ["{missing}/exp.yaml", "--runs-dir", "{runs}"],
    ["{yaml_bad}", "--runs-dir", "{runs}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--n-trials", "0"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--n-trials", "-2"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--workers", "0"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--workers", "two"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--threads", "0"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--executor", "debug"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "nodb"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "journal:{file}/x.log"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "sqlite:///{ro}/x.db"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "journal:{dir}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "sqlite:///{binary}", "--report-only"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--cluster", "{cluster:unknown}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--cluster", "{yaml_bad}"],
    ["{exp:ok}", "--runs-dir", "{file}"],
    ["{exp:ok}", "--runs-dir", "{ro}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--report-only", "--storage", "{store}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--report-only", "--storage", "sqlite:///{store}.db"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--report-only"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--report-only", "--storage", "{journal}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--replay", "0", "--storage", "{store}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--replay", "flash:0", "--storage", "{journal}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--replay", "nope:0", "--storage", "{journal}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--replay", "flash:x", "--storage", "{journal}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--replay", "0", "--report-only", "--storage", "{journal}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--bogus"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "journal:{loop}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--storage", "journal:{fifo}"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--n-trials", "100000000000000000000"],
    ["{exp:ok}", "--runs-dir", "{runs}", "--workers", "100000000000000000000"],
]

REPORT = [
    ["{missing}"],
    ["{file}"],
    ["{file}/sub"],
    ["{dir}"],
    ["{ro}/nothing"],
    [],
    ["{runs}", "{runs}"],
    ["{runs}", "--bogus"],
    ["{runs}", "--out"],
    ["{runs}", "--out", "{file}"],
    ["{runs}", "--out", "{file}/sub"],
    ["{runs}", "--out", "{ro}"],
    ["{runs}", "--out", "{ro}/report"],
    ["{runs}", "--out", "{binary}"],
    ["{runs}", "--target"],
    ["{runs}", "--target", "nan"],
    ["{runs}", "--target", "inf"],
    ["{runs}", "--target", "-inf"],
    ["{runs}", "--target", "high"],
    ["{runs}", "--target", "1e999"],
    ["{runs}", "--target", ""],
    ["{runs}", "--collapse-drop"],
    ["{runs}", "--collapse-drop", "0"],
    ["{runs}", "--collapse-drop", "1"],
    ["{runs}", "--collapse-drop", "1.5"],
    ["{runs}", "--collapse-drop", "-0.2"],
    ["{runs}", "--collapse-drop", "nan"],
    ["{runs}", "--collapse-drop", "inf"],
    ["{runs}", "--collapse-drop", "much"],
    ["{runs}", "--collapse-drop", ""],
    ["{missing}", "--out", "{file}"],
    ["{file}", "--target", "nan"],
    ["{dir}", "--collapse-drop", "2"],
    ["{runs}", "--out", "{file}", "--target", "0.5"],
    ["{runs}", "--out", "{ro}", "--collapse-drop", "0.5"],
    ["{runs}", "--target", "nan", "--collapse-drop", "0.5"],
    ["{runs}", "--target", "0.5", "--collapse-drop", "nan"],
    ["{runs}/nothing", "--out", "{runs}/report"],
    ["{run}/metrics.jsonl"],
    ["{runs}", "--out", "{dir}", "--target", "x"],
    ["{runs}", "--baseline"],
    ["{runs}", "--baseline", "nope"],
    ["{runs}", "--baseline", "flas"],  # matched exactly
    ["{runs}", "--baseline", "flash_seed0"],  # a run, not a variant
    ["{runs}", "--baseline", ""],
    ["{runs}/bad", "--baseline", "FLASH"],
]

ESTIMATE_WAN = str(ROOT / "experiments" / "wan2.1" / "1.3b.yaml")
ESTIMATE = [
    [ESTIMATE_WAN],
    [ESTIMATE_WAN, "--gpus", "0"],
    [ESTIMATE_WAN, "--gpus", "-8"],
    [ESTIMATE_WAN, "--gpus", "eight"],
    [ESTIMATE_WAN, "--gpus", "3"],
    [ESTIMATE_WAN, "--gpus", "8", "--mfu", "0"],
    [ESTIMATE_WAN, "--gpus", "8", "--mfu", "1.5"],
    [ESTIMATE_WAN, "--gpus", "8", "--mfu", "nan"],
    [ESTIMATE_WAN, "--gpus", "8", "--mfu", "-0.4"],
    [ESTIMATE_WAN, "--gpus", "8", "--budget-gpu-hours", "0"],
    [ESTIMATE_WAN, "--gpus", "8", "--budget-gpu-hours", "-350"],
    [ESTIMATE_WAN, "--gpus", "8", "--budget-gpu-hours", "nan"],
    [ESTIMATE_WAN, "--gpus", "8", "--budget-gpu-hours", "inf"],
    [ESTIMATE_WAN, "--gpus", "8", "--plans", "0"],
    [ESTIMATE_WAN, "--gpus", "8", "--plans", "x"],
    [ESTIMATE_WAN, "--gpus", "8", "--gpu", "v100"],
    [ESTIMATE_WAN, "--gpus", "8", "--format", "csv"],
    [ESTIMATE_WAN, "--gpus", "8", "--bogus"],
    [ESTIMATE_WAN, "--gpus", "8", "--plans", "1000000000000"],
    [ESTIMATE_WAN, "--gpus", "8", "--mfu", "1e-300"],
    [ESTIMATE_WAN, "--gpus", "100000000000000000000"],
    [ESTIMATE_WAN, "--gpus", "8", "--budget-gpu-hours", "1e300"],
    ["{fifo}", "--gpus", "8"],
    ["--gpus", "8"],
    ["{missing}/c.yaml", "--gpus", "8"],
    ["{dir}", "--gpus", "8"],
    ["{yaml_bad}", "--gpus", "8"],
    ["{binary}", "--gpus", "8"],
    ["{yaml_list}", "--gpus", "8"],
    ["{cfg}", "--gpus", "8"],
    ["{exp:config_lr_nan}", "--gpus", "8"],
    ["{exp:variant_name}", "--gpus", "8"],
    ["{exp:seeds_empty}", "--gpus", "8"],
    ["{exp:ok}", "--gpus", "8"],
]

SCHEDULE = [
    ["--steps", "0"],
    ["--steps", "-1"],
    ["--steps", "ten"],
    ["--steps", "1.5"],
    ["--steps", "1000000"],
    ["--steps", ""],
    ["--shift", "0"],
    ["--shift", "-3"],
    ["--shift", "nan"],
    ["--shift", "inf"],
    ["--shift", "big"],
    ["--noise-level", "-1"],
    ["--noise-level", "nan"],
    ["--noise-level", "inf"],
    ["--noise-level", "x"],
    ["--schedule", "cosine"],
    ["--noise", "gaussian"],
    ["--format", "csv"],
    ["--bogus"],
    ["extra"],
    ["--steps"],
    ["--shift"],
    ["--shift", "1e308"],
    ["--shift", "1e-308"],
    ["--noise-level", "1e308"],
    ["--steps", "1000000000000000000000000000000"],
]

EVALUATE = [
    ["--seed", "1000000000000000000000000000000"],
    ["--seed", "4294967296"],
    ["--steps", "1000000000000000000000000000000"],
    ["--n", "30000000"],
    ["--n", "100000000000000000000"],
    ["--model", "{truncated_model}"],
    ["--model", "{fifo}"],
    ["--model", "{missing}"],
    ["--model", "{file}"],
    ["--model", "{dir}"],
    ["--model", "{run}"],
    ["--model", "{run}/checkpoints/step-1"],
    ["--model", "toy-bse"],
    ["--n", "0"],
    ["--n", "-4"],
    ["--n", "many"],
    ["--n", "2.5"],
    ["--seed", "-1"],
    ["--seed", "x"],
    ["--steps", "0"],
    ["--steps", "-20"],
    ["--shift", "0"],
    ["--shift", "nan"],
    ["--shift", "-inf"],
    ["--guidance", "0.5"],
    ["--guidance", "nan"],
    ["--guidance", "inf"],
    ["--guidance", "-1"],
    ["--schedule", "cosine"],
    ["--prompts", "val"],
    ["--format", "csv"],
    ["--model", "noise", "--save", "{file}"],
    ["--model", "noise", "--save", "{file}/sub"],
    ["--model", "noise", "--save", "{ro}"],
    ["--model", "noise", "--save", "{ro}/out"],
    ["--bogus"],
    ["extra"],
]

PRETRAIN = [
    ["{missing}/p.yaml"],
    ["{yaml_bad}"],
    ["{yaml_list}"],
    ["steps=0"],
    ["steps=-5"],
    ["batch_size=0"],
    ["lr=nan"],
    ["lr=.inf"],
    ["weight_decay=.nan"],
    ["label_noise=2"],
    ["label_noise=-0.1"],
    ["static_prob=1.5"],
    ["cfg_dropout=.nan"],
    ["ema=1"],
    ["ema=-0.5"],
    ["timestep_shift=.inf"],
    ["stpes=10"],
    ["steps=many"],
    ["out"],
    ["init={missing}", "steps=0"],
]

BENCHMARKS = [
    ["--out", "{dir}"],
    ["--out", "{file}/x.json"],
    ["--out", "{ro}/x.json"],
    ["--out", "{ro}/sub/x.json"],
    ["--only", "time_to_target", "--runs-dir", "{file}"],
    ["--only", "time_to_target", "--runs-dir", "{file}/sub"],
    ["--only", "time_to_target", "--runs-dir", "{ro}"],
    ["--runs-dir", "{ro}/runs"],
    ["--only", "nothing"],
    ["--format", "csv"],
    ["--bogus"],
    ["extra"],
    ["--quick", "--out", "{dir}"],
]


def _mains():
    from benchmarks.__main__ import main as benchmarks
    from benchmarks.gpu import main as gpu_check
    from benchmarks.ode_solver import main as ode_solver
    from grpo_zoo.estimate import main as estimate
    from grpo_zoo.launch.sweep import main as sweep
    from grpo_zoo.launch.tune import main as tune
    from grpo_zoo.report import main as report
    from grpo_zoo.schedule import main as schedule
    from grpo_zoo.toy.evaluate import main as evaluate
    from grpo_zoo.toy.pretrain import main as pretrain
    from grpo_zoo.train import main as train

    return {
        "train": train,
        "sweep": sweep,
        "tune": tune,
        "report": report,
        "estimate": estimate,
        "schedule": schedule,
        "toy.evaluate": evaluate,
        "toy.pretrain": pretrain,
        "benchmarks": benchmarks,
        "benchmarks.ode_solver": ode_solver,
        "benchmarks.gpu": gpu_check,
    }


TABLE = {
    "train": TRAIN,
    "sweep": SWEEP,
    "tune": TUNE,
    "report": REPORT,
    "estimate": ESTIMATE,
    "schedule": SCHEDULE,
    "toy.evaluate": EVALUATE,
    "toy.pretrain": PRETRAIN,
    "benchmarks": BENCHMARKS,
    "benchmarks.ode_solver": [["--n", "1"], ["--n", "0"], ["--n", "-3"], ["--n", "two"], ["--bogus"], ["extra"]],
    "benchmarks.gpu": [
        ["--out", "{dir}"],
        ["--out", "{file}/x.json"],
        ["--out", "{ro}/x.json"],
        ["--workdir", "{file}"],
        ["--frames", "10"],
        ["--steps", "5"],
        ["--group", "1"],
        ["--iterations", "0"],
        ["--reps", "0"],
        ["--algorithms", "ppo"],
        ["--width", "huge"],
    ],
}
CASES = [(cli, argv) for cli, rows in TABLE.items() for argv in rows]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict:
    """The files the cases name, and a run directory that must not change."""
    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build, to_dict

    root = tmp_path_factory.mktemp("bad-input")
    runs = root / "runs"
    run = runs / "bad" / "flash_seed0"
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    config = to_dict(build(RunConfig, {**TINY, "algorithm": {"name": "flash_grpo"}, "run_dir": str(run)}))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {"step": 0, "kind": "eval", "eval/reward": 0.5, "compute/device_seconds": 0.0},
        {"step": 1, "kind": "train", "reward/mean": 0.4, "compute/device_seconds": 1.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(json.dumps({"status": "running", "step": 1}))
    (run / "meta.json").write_text(json.dumps({"resumes": []}))
    (run / "checkpoints" / "latest").write_text("step-1")
    (runs / "bad" / "sweep.json").write_text(json.dumps({"flash_seed0": {"job_id": "1", "executor": "debug"}}))
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "base": BASE, "algorithm": {"name": "flash_grpo"}}))
    afile = root / "a-file.txt"
    afile.write_text("not a directory\n")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("a: [1, 2\nb: {\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "dup.yaml").write_text("seed: 1\nseed: 2\n")
    (root / "base_int.yaml").write_text("base: 5\n")
    (root / "base_list.yaml").write_text("base: [a.yaml]\n")
    (root / "loop_a.yaml").symlink_to(root / "loop_b.yaml")
    (root / "loop_b.yaml").symlink_to(root / "loop_a.yaml")
    fifo = root / "a-fifo"
    os.mkfifo(fifo)  # nothing may block on it
    (root / "empty.txt").write_text("")
    (root / "anchor_loop.yaml").write_text(
        yaml.safe_dump({k: v for k, v in experiment().items() if k != "variants"})
        + "variants:\n  a: &x\n    optim: *x\n"
    )
    (root / "empty-model" / "transformer").mkdir(parents=True)
    for part in ("vae", "text_encoder", "tokenizer"):  # all but a transformer config
        (root / "empty-model" / part).mkdir()
    truncated = damaged_checkpoint(root / "truncated-model")
    paths = {
        "cfg": str(cfg),
        "run": str(run),
        "runs": str(runs),
        "file": str(afile),
        "dir": str(root / "empty"),
        "missing": str(root / "missing" / "deeper"),
        "ro": NOT_WRITABLE,
        "yaml_bad": str(root / "bad.yaml"),
        "binary": str(root / "binary.yaml"),
        "yaml_list": str(root / "list.yaml"),
        "dup_yaml": str(root / "dup.yaml"),
        "base_int": str(root / "base_int.yaml"),
        "base_list": str(root / "base_list.yaml"),
        "loop": str(root / "loop_a.yaml"),
        "store": str(root / "no-storage.log"),
        "fifo": str(fifo),
        "empty_file": str(root / "empty.txt"),
        "anchor_loop": str(root / "anchor_loop.yaml"),
        "empty_model": str(root / "empty-model"),
        "truncated_model": str(truncated),
    }
    for name, exp in EXPERIMENTS.items():
        path = root / "exps" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(exp))
        paths[f"exp:{name}"] = str(path)
    for name, cluster in CLUSTERS.items():
        path = root / "clusters" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(cluster))
        paths[f"cluster:{name}"] = str(path)
    import optuna

    journal = root / "journal.log"
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.create_study(study_name="another.study", storage=JournalStorage(JournalFileBackend(str(journal))))
    paths["journal"] = f"journal:{journal}"
    return {"paths": paths, "root": root, "runs": runs}


def fill(argv: list[str], paths: dict) -> list[str]:
    out = []
    for arg in argv:
        for key, value in paths.items():
            arg = arg.replace(f"{{{key}}}", value)
        out.append(arg.replace("{{", "{").replace("}}", "}"))
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (directories too: nothing may appear)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):  # a link (a loop among them) is its target's name
                out[os.path.relpath(p, root)] = "link -> " + os.readlink(p)
                continue
            if stat.S_ISFIFO(os.stat(p).st_mode):  # never opened: reading it would block
                out[os.path.relpath(p, root)] = "fifo"
                continue
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def run_cli(cli: str, argv: list[str], capsys) -> tuple[int, str]:
    main = _mains()[cli]
    capsys.readouterr()
    code = None
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_at_least_forty_per_main_cli():
    counts = Counter(cli for cli, _ in CASES)
    for cli in ("train", "sweep", "tune", "report"):
        assert counts[cli] >= 40, (cli, counts[cli])
    assert len(CASES) >= 300, len(CASES)


@pytest.mark.parametrize(("cli", "argv"), CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2(cli, argv, place, capsys, monkeypatch):
    monkeypatch.chdir(place["root"])  # nothing a CLI might create by default lands in the repository
    monkeypatch.setenv("TQDM_DISABLE", "1")
    paths = place["paths"]
    before = tree_digest(place["root"])
    code, err = run_cli(cli, fill(argv, paths), capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert tree_digest(place["root"]) == before, "a bad input changed the files"
    assert not Path(paths["store"]).exists() and not Path(paths["store"] + ".db").exists()


def test_the_run_directory_is_unchanged_by_all_of_them(place):
    # the per-case check compares the tree before and after each case; this one pins its content
    run = Path(place["paths"]["run"])
    assert json.loads((run / "status.json").read_text()) == {"status": "running", "step": 1}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert stat.S_ISDIR((run / "checkpoints" / "step-1").stat().st_mode)


@pytest.mark.slow
def test_evaluate_scores_a_run_directory_and_its_checkpoint_as_the_run_did(tmp_path, capsys):
    from grpo_zoo.toy.evaluate import main as evaluate

    from .helpers import run_module

    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in {"data.eval_samples": 4, "sampling.eval_steps": 4, "budget.steps": 1}.items()]
    out = run_module(
        "grpo_zoo.train",
        str(ROOT / "experiments" / "toy" / "flash_grpo.yaml"),
        f"run_dir={run}",
        "data.prompts_per_step=2",
        "data.group_size=4",
        "data.eval_every=0",
        "sampling.steps=6",
        "save_eval_videos=false",
        *overrides,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    final = json.loads((run / "status.json").read_text())["eval/reward"]
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    for model in (run, latest):  # the run's evaluation: its eval seed, steps and samples
        assert evaluate(["--model", str(model), "--n", "4", "--steps", "4", "--seed", "1234"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert abs(scores["toy_hps"] - final) < 1e-4, (model, scores, final)


# experiment files and cluster profiles are built by config.build, as run configs are
SCHEMA = [
    ({"seed": [0]}, None, "seed: unknown field (did you mean 'seeds'?)"),
    ({"resources": {"gpu": 1}}, None, "resources.gpu: unknown field (did you mean 'gpus'?)"),
    (
        {"resources": {"cpus_per_tasks": 2}},
        None,
        "resources.cpus_per_tasks: unknown field (did you mean 'cpus_per_task'?)",
    ),
    ({"report": {"baselin": "flash"}}, None, "report.baselin: unknown field (did you mean 'baseline'?)"),
    (
        {"report": {"metric": "toy_stil"}},
        None,
        "report.metric: run flash_seed0's reward gives no entry 'toy_stil' "
        "(it gives toy_hps, toy_motion, toy_aesthetic, toy_prompt, toy_still)",
    ),
    ({"resources": {"gpus": -1}}, None, "resources.gpus: must be >= 0, got -1"),
    ({"resources": {"gpus": 1.5}}, None, "resources.gpus: expected an integer, got 1.5"),
    ({"resources": {"gpus": True}}, None, "resources.gpus: expected an integer, got True"),
    ({"resources": {"nodes": 0}}, None, "resources.nodes: must be >= 1, got 0"),
    ({"resources": {"tasks": 0}}, None, "resources.tasks: must be >= 1, got 0"),
    ({"seeds": [0, -1]}, None, "seeds[1]: must be >= 0, got -1"),
    ({}, {"partiton": "debug"}, "partiton: unknown field (did you mean 'partition'?)"),
    ({}, {"gpus_per_nod": 8}, "gpus_per_nod: unknown field (did you mean 'gpus_per_node'?)"),
    ({}, {"gpus_per_node": -8}, "gpus_per_node: must be >= 0, got -8"),
    ({}, {"nodes": 0}, "nodes: must be >= 1, got 0"),
    ({}, {"mem_gb": 1.5}, "mem_gb: expected an integer, got 1.5"),
]


@pytest.mark.parametrize(("changes", "cluster", "needle"), SCHEMA, ids=[s[2].split(":")[0] for s in SCHEMA])
def test_experiment_and_cluster_schema_errors_name_the_field(tmp_path, capsys, changes, cluster, needle):
    from grpo_zoo.launch.sweep import main as sweep

    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment(**changes)))
    argv = [str(exp), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    where = f"{exp}: "
    if cluster is not None:
        profile = tmp_path / "cluster.yaml"
        profile.write_text(yaml.safe_dump(cluster))
        argv += ["--cluster", str(profile)]
        where = f"--cluster: {profile}: "
    with pytest.raises(SystemExit) as exit_:
        sweep(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and lines == [f"error: {where}{needle}"], lines
    assert not (tmp_path / "runs" / "bad").exists()  # before anything is written


def test_experiment_sections_are_typed():
    from grpo_zoo.config.cluster import ClusterProfile
    from grpo_zoo.config.experiment import ExperimentFile, Resources
    from grpo_zoo.config.schema import build

    spec = build(ExperimentFile, {"resources": {"gpus": 8, "nodes": 2}, "report": {"baseline": "a"}})
    assert spec.resources == Resources(gpus=8, nodes=2) and spec.report.baseline == "a" and spec.seeds == [0]
    assert build(ClusterProfile, {"gpus_per_node": 8, "setup": ["x"]}).setup == ["x"]
