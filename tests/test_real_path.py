"""The real-scale path on tiny random models: Wan2.1 configs, early checks, cost estimates, VBench."""

import json
import re

import pytest
import yaml

from grpo_zoo import rewards
from grpo_zoo.config.experiment import load_experiment
from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import build
from grpo_zoo.cost.counts import iteration_counts
from grpo_zoo.cost.flops import flops_per_nfe
from grpo_zoo.errors import ConfigError
from grpo_zoo.runs import RunDir
from grpo_zoo.training.preflight import check

from .helpers import ROOT, TINY_WAN_ARGS, run_module

WAN = ROOT / "experiments" / "wan2.1"


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    from grpo_zoo.models.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan")


def test_wan21_configs_load_validate_and_fail_early(tmp_path, monkeypatch):
    exps = [load_experiment(p, tmp_path) for p in sorted(WAN.glob("paper_*.yaml"))]
    assert len(exps) == 3 and all(
        {r.variant for r in e.runs} == {"flow_grpo", "flow_grpo_fast1", "flash_grpo"} for e in exps
    )
    for exp in exps:
        for run in exp.runs:
            cfg = build(RunConfig, run.config)
            m, s, o = cfg.model, cfg.sampling, cfg.optim
            assert (m.height, m.width, m.frames, m.lora_rank, m.lora_alpha) == (480, 832, 81, 16, 32)
            assert m.gradient_checkpointing and m.lora_targets == ["to_q", "to_k", "to_v", "to_out.0"]
            assert (s.steps, s.eval_steps, s.guidance) == (20, 50, 4.5)
            assert (o.lr, o.clip_range, cfg.data.group_size, o.ema_decay > 0) == (1e-4, 1e-3, 8, True)
            assert (cfg.engine.precision, cfg.engine.zero_stage) == ("bf16", 3 if "14b" in exp.name else 2)
            assert cfg.reward.name == "hpsv3" and cfg.reward.options["top_fraction"] == 0.3
            rewards.get(cfg.reward.name, **cfg.reward.options)  # every option is one the client knows
            with pytest.raises(ConfigError, match="model.path"):  # no weights here: said before any compute
                check(cfg)
    prompts = (WAN / "prompts" / "train.txt").read_text().splitlines()
    assert sum(1 for p in prompts if p and not p.startswith("#")) >= 40
    # each failure is one line and exit status 2
    out = run_module("grpo_zoo.train", str(WAN / "14b.yaml"), "model.path=/nonexistent/Wan2.1")
    assert out.returncode == 2 and "model.path" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_module("grpo_zoo.train", str(WAN / "1.3b.yaml"), env={"WORLD_SIZE": "3"})
    assert out.returncode == 2 and "prompts_per_step" in out.stderr and "3 ranks" in out.stderr


def test_unreachable_reward_service_fails_before_compute(tiny_wan, tmp_path):
    out = run_module(
        "grpo_zoo.train",
        str(WAN / "1.3b.yaml"),
        f"model.path={tiny_wan}",
        "reward.options.url=http://127.0.0.1:9",
        f"run_dir={tmp_path / 'run'}",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "unreachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_estimate_equals_the_meter_on_a_tiny_wan(tiny_wan, tmp_path, train):
    run = tmp_path / "run"
    out = train(
        str(ROOT / "experiments/toy/base.yaml"),
        f"run_dir={run}",
        f"model.path={tiny_wan}",
        *TINY_WAN_ARGS,
        "model.gradient_checkpointing=true",
        "sampling.guidance=2.0",
        "optim.beta=0.01",
        "algorithm.name=flash_grpo",
        "algorithm.initial_noise=shared",
        "budget.steps=3",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = build(RunConfig, RunDir(run).config())
    fwd, bwd = flops_per_nfe(cfg.model)
    rows = [r for r in RunDir(run).rows() if r["kind"] == "train"]
    expected = 0.0
    nfe = 0
    for step in range(3):
        c = iteration_counts(cfg, step)
        expected += (c["rollout_nfe"] + c["update_nfe"]) * fwd + c["backward"] * bwd
        nfe += c["rollout_nfe"] + c["update_nfe"]
    assert rows[-1]["compute/nfe"] == nfe
    assert rows[-1]["compute/flops"] == pytest.approx(expected, rel=1e-12)


def test_estimate_cli_on_the_paper_configs():
    out = run_module(
        "grpo_zoo.estimate",
        *(str(p) for p in sorted(WAN.glob("paper_*b.yaml"))),  # no --gpus: both declare resources.gpus 8
        "--format",
        "json",
        "--no-memory",  # memory has its own test (tests/test_real_scale.py)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["config"]: r for r in json.loads(out.stdout)}
    assert len(rows) == 6
    for size in ("1.3b", "14b"):
        flow, flash = rows[f"wan2.1-{size}/flow_grpo"], rows[f"wan2.1-{size}/flash_grpo"]
        assert flash["gpu_hours_per_iteration"] < flow["gpu_hours_per_iteration"]
        assert flash["rollout_nfe"] == flow["rollout_nfe"] == 8 * 8 * 20 * 2  # P x G x T x CFG
    assert rows["wan2.1-14b/flash_grpo"]["fwd_flops_per_nfe"] > 5 * rows["wan2.1-1.3b/flash_grpo"]["fwd_flops_per_nfe"]
    bad = run_module("grpo_zoo.estimate", str(WAN / "1.3b.yaml"), "--gpus", "3")
    assert bad.returncode == 2 and "does not split over 3 GPUs" in bad.stderr


@pytest.mark.slow
def test_vbench_export_and_ingest_reach_table1(tmp_path, train):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        out = train(
            str(ROOT / "experiments/toy/flash_grpo.yaml"),
            f"run_dir={runs / f'flash_grpo_seed{seed}'}",
            f"seed={seed}",
            "budget.steps=1",
            "data.eval_samples=8",
            "sampling.eval_steps=3",
            "data.eval_every=0",
        )
        assert out.returncode == 0, out.stderr[-3000:]
    videos = sorted((runs / "flash_grpo_seed0" / "eval" / "videos").glob("*.mp4"))
    assert len(videos) == 8 and all(re.search(r"-0\.mp4$", v.name) for v in videos)  # 8 of 16 prompts, once each
    assert not any(" " in v.name for v in videos)  # the run's own names: no spaces
    out = run_module("grpo_zoo.vbench", "export", str(runs), "--out", str(tmp_path / "vb"))
    assert out.returncode == 0, out.stderr
    assert "--mode=custom_input" in out.stdout and len(list((tmp_path / "vb" / "flash_grpo_seed1").glob("*.mp4"))) == 8
    mapping = json.loads((tmp_path / "vb" / "flash_grpo_seed0" / "prompts.json").read_text())
    from grpo_zoo.toy.world import prompts as toy_prompts

    # VBench's names (the prompt, spaces and all, then the index), each naming its prompt exactly
    assert set(mapping) == {p.name for p in (tmp_path / "vb" / "flash_grpo_seed0").glob("*.mp4")}
    assert all(name == f"{prompt}-0.mp4" for name, prompt in mapping.items())
    assert set(mapping.values()) <= {p.text for p in toy_prompts("test")}
    # VBench's result files, in the layout its evaluate.py writes (VBench itself needs its models)
    for seed, score in ((0, 0.61), (1, 0.63)):
        res = tmp_path / "vb" / "results" / f"flash_grpo_seed{seed}"
        res.mkdir(parents=True)
        body = {
            dim: [score + i / 100, [{"video_path": str(videos[0]), "video_results": score}]]
            for i, dim in enumerate(("aesthetic_quality", "imaging_quality", "subject_consistency"))
        }
        (res / "results_eval_results.json").write_text(json.dumps(body))
    out = run_module("grpo_zoo.vbench", "ingest", str(tmp_path / "vb" / "results"), "--runs", str(runs))
    assert out.returncode == 0, out.stderr
    assert json.loads((runs / "flash_grpo_seed1" / "vbench.json").read_text())["aesthetic_quality"] == 0.63
    from grpo_zoo.analysis import load_runs
    from grpo_zoo.analysis.tables import table1

    t = table1(load_runs(runs))
    assert t.loc[0, "Aesthetic Quality (VBench)"].startswith("0.620")  # the mean of 0.61 and 0.63
    assert "Object Class" in t.columns and "Device hours" in t.columns
    assert yaml.safe_load((runs / "flash_grpo_seed0" / "config.yaml").read_text())["save_eval_videos"] is True


# -- FLOPs from shapes: counted once per shape, never by a real pass ---------------------------------
def _model(path, **extra):
    from grpo_zoo.config.run import ModelConfig

    shape = {"height": 16, "width": 16, "frames": 9, "max_tokens": 8, "lora_rank": 4, "gradient_checkpointing": True}
    return ModelConfig(backend="wan", path=str(path), **{**shape, **extra})


def test_flops_from_shapes_equal_torchs_count_of_a_real_pass(tiny_wan, tmp_path):
    """The meta-device count equals torch's FlopCounterMode on a real forward and backward of the
    loaded policy (LoRA and gradient checkpointing as trained); a deeper model's count, extended
    from one and two blocks, equals its direct count."""
    from grpo_zoo.cost.flops import meta_flops_per_nfe, policy_flops
    from grpo_zoo.models import load_policy

    for extra in ({}, {"lora_rank": 0, "gradient_checkpointing": False}):
        model = _model(tiny_wan, **extra)
        assert flops_per_nfe(model) == policy_flops(load_policy(model), "a red circle moving left")
    deep = tmp_path / "deep"  # six blocks: a count from shapes reads only the configs
    for part in ("transformer", "vae"):
        conf = json.loads((tiny_wan / part / "config.json").read_text())
        conf["num_layers"] = 6 if part == "transformer" else conf.get("num_layers")
        (deep / part).mkdir(parents=True)
        (deep / part / "config.json").write_text(json.dumps(conf))
    assert meta_flops_per_nfe(_model(deep)) == meta_flops_per_nfe(_model(deep), layers=6)
    assert meta_flops_per_nfe(_model(deep))[1] > flops_per_nfe(_model(tiny_wan))[1]


def test_flops_are_counted_once_per_distinct_shape(tmp_path):
    """A sweep's variants share one count; what changes the count changes the key."""
    from dataclasses import replace

    from grpo_zoo.cost.flops import shape_key

    for path in ("paper_1.3b.yaml", "paper_14b.yaml"):
        models = [build(RunConfig, r.config).model for r in load_experiment(WAN / path, tmp_path).runs]
        assert len({shape_key(m) for m in models}) == 1
        m = models[0]
        changed = [
            replace(m, frames=49),
            replace(m, max_tokens=256),
            replace(m, lora_rank=32),
            replace(m, lora_targets=["to_q"]),
            replace(m, gradient_checkpointing=False),
        ]
        assert len({shape_key(c) for c in [m, *changed]}) == 6
        assert shape_key(replace(m, lora_alpha=1.0)) == shape_key(m)  # a scale: no matmul
        assert flops_per_nfe(m) is flops_per_nfe(models[-1])  # counted once, then shared


def _transformer_calls():
    """A global forward hook recording the device of each Wan transformer call's latents."""
    import torch
    from diffusers import WanTransformer3DModel

    devices = []

    def seen(module, args):
        if isinstance(module, WanTransformer3DModel):
            devices.append(args[0].device.type if args else "called by keyword")

    return devices, torch.nn.modules.module.register_module_forward_pre_hook(seen)


def test_the_trainers_flop_count_at_the_14b_paper_shape_touches_only_meta_tensors(tmp_path):
    """What the trainer multiplies its passes by, at Wan2.1-14B, 81 x 480 x 832 (no weights here):
    the transformer runs only on the meta device, and the count is the estimate's."""
    from grpo_zoo.cost import flops
    from grpo_zoo.cost.flops import run_flops

    cfg = build(RunConfig, load_experiment(WAN / "paper_14b.yaml", tmp_path).runs[0].config)
    flops._COUNTED.pop(flops.shape_key(cfg.model), None)  # counted afresh here, not from an earlier test's cache
    devices, hook = _transformer_calls()
    try:
        fwd, bwd = run_flops(cfg.model, None, "a prompt")  # the policy is not needed for a wan model
    finally:
        hook.remove()
    assert devices and set(devices) == {"meta"}
    assert (fwd, bwd) == flops_per_nfe(cfg.model) and 1e15 < fwd < bwd  # ~1.7 PFLOP per 81-frame sample


def test_a_wan_trainer_runs_no_transformer_pass_before_its_first_rollout(tiny_wan, tmp_path):
    """Building a Trainer (bf16, LoRA, checkpointing, CFG, as the paper trains) loads the transformer
    in bf16 and calls it on no real tensor (on meta tensors at most, counting FLOPs); the first
    iteration's rollout is its first real pass, and the meter multiplies by the count from shapes."""
    import torch

    from grpo_zoo.config.schema import apply_overrides, load_config_file
    from grpo_zoo.models.wan import WanPolicy
    from grpo_zoo.training.trainer import Trainer

    over = [*TINY_WAN_ARGS, f"model.path={tiny_wan}", "model.gradient_checkpointing=true", "engine.precision=bf16"]
    over += ["sampling.guidance=4.5", "algorithm.name=flash_grpo", f"run_dir={tmp_path / 'run'}", "budget.steps=1"]
    cfg = build(RunConfig, apply_overrides(load_config_file(ROOT / "experiments/toy/base.yaml"), over))
    loaded = WanPolicy.load(cfg.model, torch.bfloat16)
    keep = tuple(loaded.net.base_model.model._keep_in_fp32_modules)  # diffusers keeps these in float32
    dtypes = {p.dtype for n, p in loaded.net.named_parameters() if "lora_" not in n and not any(k in n for k in keep)}
    assert dtypes == {torch.bfloat16}  # read straight into bf16: no float32 copy of the weights
    devices, hook = _transformer_calls()
    try:
        trainer = Trainer(cfg, progress=False)
        built = list(devices)
        trainer.iteration()
    finally:
        hook.remove()
    trainer.engine.close = lambda: None  # the module's other trainers reuse the process group
    assert set(built) <= {"meta"}  # at most the count from shapes (cached if an earlier test made it)
    assert devices[len(built) :] and set(devices[len(built) :]) == {"cpu"}  # the rollout's real passes
    assert (trainer.meter.fwd_flops, trainer.meter.bwd_flops) == flops_per_nfe(cfg.model)


def test_video_file_names_have_no_spaces_and_read_back_to_their_prompt():
    from grpo_zoo.vbench import file_name, prompt_of, video_name

    for prompt in ("a red circle moving left", 'snake_case 100% / back\\slash "q"', "ünïcödé prompt", "a-1"):
        name = file_name(prompt, 3)
        assert " " not in name and "/" not in name and name.endswith("-3.mp4") and prompt_of(name) == prompt
    assert prompt_of(video_name("a red circle moving left", 0)) == "a red circle moving left"  # earlier runs' names
    # long prompts: a bounded name, kept apart by a hash of the whole prompt
    a, b = "猫" * 30, "猫" * 27 + "狗" * 3
    assert file_name(a, 0) != file_name(b, 0) and max(len(file_name(a, 0)), len(file_name("x" * 999, 0))) < 220
    assert prompt_of(file_name("x" * 999, 0)) == "x" * 190
