"""The real scale before the first GPU: paper settings, WanPipeline parity, memory, the GPU check."""

import pytest
import torch

from benchmarks.gpu import transient_peak
from grpo_zoo import rewards
from grpo_zoo.config.experiment import load_experiment
from grpo_zoo.config.run import ModelConfig, RunConfig
from grpo_zoo.config.schema import build
from grpo_zoo.core.algorithm import PlanContext

from .helpers import ROOT

WAN = ROOT / "experiments" / "wan2.1"


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    from grpo_zoo.models.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan")


# -- 1. the paper's settings (experiments/wan2.1/README.md) ------------------------------------
def test_paper_sweeps_follow_the_settings_table(tmp_path):
    runs = [
        (path.stem, build(RunConfig, r.config))
        for path in sorted(WAN.glob("paper_*.yaml"))
        for r in load_experiment(path, tmp_path).runs
    ]
    assert len(runs) == 9
    for name, cfg in runs:
        m, s, d, o, a = cfg.model, cfg.sampling, cfg.data, cfg.optim, cfg.algorithm
        assert m.arch == ("wan2.1-t2v-1.3b" if "1.3b" in name else "wan2.1-t2v-14b")
        assert (m.height, m.width, m.frames, m.max_tokens) == (480, 832, 81, 512)
        assert (s.schedule, s.shift, s.steps, s.eval_steps, s.guidance) == ("wan", 3.0, 20, 50, 4.5)
        assert (s.noise, s.noise_level) == ("wan_linear", 1.0)
        assert (m.lora_rank, m.lora_alpha, m.lora_targets) == (16, 32, ["to_q", "to_k", "to_v", "to_out.0"])
        assert m.gradient_checkpointing
        assert d.group_size == 8 and d.prompts_per_step == (32 if "96gpus" in name else 8)
        assert (d.eval_every, d.eval_samples) == (20, 16)
        assert (o.lr, o.weight_decay, o.max_grad_norm, o.clip_range, o.beta, o.adv_clip) == (
            1e-4,
            1e-4,
            1.0,
            1e-3,
            0.0,
            5.0,
        )
        assert (o.global_std, o.minibatches, o.micro_batch, o.inner_epochs, o.ema_decay) == (True, 2, 1, 1, 0.9)
        assert (o.ema_every, o.adv_std, o.adv_eps, s.rollout_chunks) == (8, "population", 1e-4, 4)
        assert (cfg.engine.precision, cfg.engine.zero_stage) == ("bf16", 3 if "14b" in name else 2)
        assert cfg.budget.device_hours == 350
        opts = cfg.reward.options
        assert cfg.reward.name == "hpsv3"
        assert (opts["frames"], opts["aggregate"], opts["top_fraction"]) == ("all", "top_fraction", 0.3)
        rewards.get(cfg.reward.name, **opts)  # the client takes every option
        if a.name == "flash_grpo":
            assert (a.k_range, a.grouping, a.rectify) == ([0, 9], "iso_temporal", True)
        elif a.name == "flow_grpo_fast":
            assert (a.window, a.window_start_range) == (1, [0, 9])
        else:
            assert a.name == "flow_grpo" and a.timestep_fraction == 0.51
    # the plans: Flash-GRPO's k is one of steps 0..9, the same for a prompt's whole group
    from grpo_zoo.core import algorithm as algorithms
    from grpo_zoo.flow import make_sigmas, step_table
    from grpo_zoo.training.seeding import generator

    flash = next(c for _, c in runs if c.algorithm.name == "flash_grpo")
    flow = next(c for _, c in runs if c.algorithm.name == "flow_grpo")
    table = step_table(make_sigmas("wan", 20, 3.0), "wan_linear", 1.0)
    seen = set()
    for step in range(50):
        plan = algorithms.build(flash.algorithm).plan(PlanContext.of(8, 8, table, generator(0, step, 0, "plan")))
        k = plan.train.float().argmax(1).view(8, 8)
        assert (plan.train.sum(1) == 1).all() and (k == k[:, :1]).all()
        seen |= set(k[:, 0].tolist())
    assert seen == set(range(10))
    plan = algorithms.build(flow.algorithm).plan(PlanContext.of(1, 8, table, generator(0, 0, 0, "plan")))
    assert plan.train[0].nonzero().flatten().tolist() == list(range(10)) and plan.sde[0].all()


def test_hpsv3_scores_every_frame_and_averages_the_best_30_percent():
    from grpo_zoo.errors import ConfigError
    from grpo_zoo.rewards.hpsv3 import HPSv3Reward, aggregate, sample_frames

    assert sample_frames(81, "all") == list(range(81)) and len(sample_frames(81, 16)) == 16
    scores = torch.arange(81, dtype=torch.float32)[None]
    assert aggregate(scores, "top_fraction", 0.3).item() == pytest.approx(sum(range(57, 81)) / 24)  # the best 24
    assert aggregate(torch.tensor([[1.0, 2.0]]), "top_fraction", 0.3).item() == 2.0  # never fewer than one
    with pytest.raises(ConfigError, match="frames"):
        HPSv3Reward(frames="some")


# -- 2. the timestep in float32: our ODE rollout is WanPipeline's sampling -------------------------
def _pipeline_and_policy(path, dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from grpo_zoo.models.wan import WanPolicy

    cfg = ModelConfig(
        backend="wan", path=str(path), height=16, width=16, frames=9, max_tokens=8, lora_rank=0, vae_dtype="fp32"
    )  # the pipeline decodes in float32
    policy = WanPolicy.load(cfg)
    policy.net.to(dtype)
    pipe = WanPipeline(
        tokenizer=policy.tokenizer,
        text_encoder=policy.text_encoder,
        vae=policy.vae,
        transformer=policy.net,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, policy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ode_rollout_is_wanpipeline_sampling(tiny_wan, dtype):
    from grpo_zoo.flow import make_sigmas, step_table
    from grpo_zoo.training.rollout import generate_ode

    pipe, policy = _pipeline_and_policy(tiny_wan, dtype)
    prompts, steps, guidance, seed = ["a red circle moves left", "a blue square"], 8, 4.5, 3
    seen = []
    hook = policy.net.register_forward_pre_hook(lambda _m, args: seen.append(args[1].dtype))
    ours, _ = generate_ode(
        policy, prompts, step_table(make_sigmas("flow_match", steps, 3.0), "flow_sde"), guidance, seed, dtype=dtype
    )
    hook.remove()
    assert seen and set(seen) == {torch.float32}  # the timestep, whatever the model's dtype
    latents = torch.stack(
        [
            torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
            for i in range(len(prompts))
        ]
    )
    with torch.no_grad():
        theirs = pipe(
            prompt_embeds=policy.encode(prompts),
            negative_prompt_embeds=policy.encode([""]).expand(len(prompts), -1, -1),
            num_frames=9,
            height=16,
            width=16,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=latents,
            output_type="pt",
        ).frames  # [B, F, 3, H, W] in [0, 1]
    theirs = theirs.permute(0, 2, 1, 3, 4).float() * 2 - 1
    err = (ours - theirs).abs().max().item()
    # float32: the same numbers up to the order of the CFG batch; bf16: WanPipeline also keeps its
    # latents in bf16 between steps (we keep float32), a rounding of 2^-9 per step (measured: 1.9e-6
    # in float32, 1.9e-2 in bf16).
    assert err < (1e-4 if dtype == torch.float32 else 0.05), err


# -- 3. memory before launch -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_check_model(tmp_path_factory):
    from benchmarks.gpu import register_reward, write_model

    register_reward()
    return write_model(tmp_path_factory.mktemp("gpu") / "model", "tiny", torch.device("cpu"))


@pytest.mark.parametrize("checkpointing", [True, False])
def test_memory_of_the_update_matches_the_profiled_peak(gpu_check_model, tmp_path, checkpointing):
    """The update phase as the memory model counts it on fake tensors, against torch's profiler
    on the same computation with real tensors (LoRA, bf16, CFG rows, forward and backward)."""
    from diffusers import WanTransformer3DModel

    from benchmarks.gpu import ALGORITHMS, run_config
    from grpo_zoo.cost.flops import model_shapes
    from grpo_zoo.cost.memory import estimate_memory
    from grpo_zoo.models.lora import apply_lora

    cfg = run_config(gpu_check_model, ALGORITHMS["flash_grpo"], "tiny", 17, 10, 4, tmp_path / "run")
    cfg.model.height = cfg.model.width = 128
    cfg.model.gradient_checkpointing = checkpointing
    cfg.optim.micro_batch = 2
    predicted = estimate_memory(cfg, 1).phases["update (forward + backward)"]

    net = WanTransformer3DModel.from_pretrained(gpu_check_model / "transformer")
    if checkpointing:
        net.enable_gradient_checkpointing()
    net = apply_lora(net, cfg.model).to(torch.bfloat16).train()
    _, latent, text_dim = model_shapes(cfg.model)
    rows = cfg.optim.micro_batch * 2  # CFG: conditional and unconditional rows in one forward

    def update():
        x = torch.zeros(rows, *latent, dtype=torch.bfloat16)
        emb = torch.zeros(rows, cfg.model.max_tokens, text_dim, dtype=torch.bfloat16)
        out = net(x, torch.ones(rows) * 500.0, emb, return_dict=False)[0]
        out.float().square().mean().backward()

    measured = transient_peak(update)  # the GPU check's own measure (the profiler's live total on a CPU)
    assert predicted == pytest.approx(measured, rel=0.15), (predicted, measured)


@pytest.mark.parametrize("micro, chunks", [(1, 1), (2, 1), (4, 1), (4, 2), (1, 4)])
def test_memory_of_the_rollout_matches_the_profiled_peak(gpu_check_model, tmp_path, micro, chunks):
    """The rollout phase at a micro-batch as the memory model counts it, against torch's profiler
    on the real rollout (bf16 transformer, CFG, every step of a Flash-GRPO plan), sampled in
    `chunks` chunks as the trainer samples them."""
    from benchmarks.gpu import ALGORITHMS, run_config
    from grpo_zoo.core import algorithm as algorithms
    from grpo_zoo.cost.memory import estimate_memory
    from grpo_zoo.models.wan import WanPolicy
    from grpo_zoo.training.preflight import sampling_tables
    from grpo_zoo.training.rollout import rollout

    cfg = run_config(gpu_check_model, ALGORITHMS["flash_grpo"], "tiny", 17, 10, 4, tmp_path / "run")
    cfg.model.height = cfg.model.width = 128
    cfg.sampling.rollout_micro_batch = micro
    cfg.sampling.rollout_chunks = chunks
    predicted = estimate_memory(cfg, 1).phases["rollout forward"]

    policy = WanPolicy.load(cfg.model)
    policy.net.to(torch.bfloat16)
    table, _ = sampling_tables(cfg.sampling)
    plan = algorithms.build(cfg.algorithm).plan(PlanContext.of(1, 4, table, torch.Generator().manual_seed(0)))
    emb, null = policy.encode(["a red circle"]).repeat_interleave(4, 0), policy.encode([""])

    def run():
        size = 4 // chunks
        for lo in range(0, 4, size):
            g = torch.Generator().manual_seed(lo)
            part = plan.rows(lo, lo + size)
            rollout(
                policy,
                emb[lo : lo + size],
                null,
                part,
                table,
                cfg.sampling.guidance,
                g,
                torch.bfloat16,
                micro_batch=micro,
            )

    measured = transient_peak(run)
    assert predicted == pytest.approx(measured, rel=0.15), (predicted, measured)


def test_estimate_prints_memory_and_a_verdict(tmp_path):
    import json

    from .helpers import run_module

    out = run_module("grpo_zoo.estimate", str(WAN / "1.3b.yaml"), "--gpus", "8", "--format", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    mem = json.loads(out.stdout)[0]["memory"]
    held = ("transformer weights", "optimizer states", "EMA", "VAE", "ZeRO gradient bucket")
    phases = ("rollout forward", "update (forward + backward)", "VAE decode", "prompt encoding (once, at the start)")
    assert all(k in mem["memory_gb"] for k in held + phases)
    assert mem["peak_gb"] == pytest.approx(
        sum(mem["memory_gb"][k] for k in mem["memory_gb"] if k not in phases and not k.startswith("loading"))
        + max(v for k, v in mem["memory_gb"].items() if k in phases or k.startswith("loading")),
        rel=1e-9,
    )
    assert mem["fits"] == (mem["peak_gb"] <= mem["usable_gb"]) and mem["usable_gb"] < 80
    assert 2.5 < mem["memory_gb"]["transformer weights"] < 3.0  # 1.42e9 parameters in bf16
    # UMT5-XXL's 5.7e9 in bf16 (11.4 GB) and one forward of 8 prompts, only at the start
    assert (
        11.4 < mem["memory_gb"]["prompt encoding (once, at the start)"] < 15 and "text encoder" not in mem["memory_gb"]
    )
    assert mem["memory_gb"]["ZeRO gradient bucket"] < 0.1  # sized to the LoRA weights, not 5e8 elements
    assert 1 <= mem["rollout_micro_batch"] <= mem["rollout_trajectories"] == 8


# -- 4. the prepared GPU check, on a CPU at tiny width -------------------------------------------------
@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_tiny_width(tmp_path):
    """benchmarks.gpu end to end on a CPU (about 50 s here): the JSON's parts, and numbers that can
    be true (MFU in (0, 1], bf16 VAE error finite and small, every memory phase measured)."""
    import json
    import math

    from .helpers import run_module

    out = tmp_path / "check" / "gpu.json"
    args = ("--width", "tiny", "--steps", "10", "--iterations", "1", "--reps", "2", "--out", str(out))
    done = run_module("benchmarks.gpu", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])  # one JSON object, on the last line ...
    assert json.loads(out.read_text()) == res  # ... and in --out
    assert (res["device"], res["backend"], res["width"]) == ("cpu", "gloo", "tiny")
    # the paper's rows per GPU: 16 (8 videos under CFG), sampled 2 videos (4 rows) a chunk; 2 a update step
    assert (res["shape"]["rollout_rows"], res["shape"]["update_rows"]) == (4, 2)
    assert res["peak_flops"] > 0 and res["peak_flops_source"].startswith("measured")  # no datasheet for a CPU

    def mfu(x):
        return 0 < x <= 1

    micro = res["microbenchmarks"]
    assert set(micro) == {"native", "cudnn", "flash_3", "flash_3_hub"}
    assert all(
        not micro[b]["available"] and micro[b]["why"] == "needs CUDA" for b in ("cudnn", "flash_3", "flash_3_hub")
    )
    native = micro["native"]
    assert set(native["forward"]) == {"4", "16"} and native["update"]["rows"] == 2
    for row in (*native["forward"].values(), native["update"]):
        assert row["seconds"] > 0 and row["first_call_seconds"] > 0 and mfu(row["mfu"])

    vae = res["vae_decode"]
    assert vae["fp32"]["seconds"] > 0 and vae["bf16"]["seconds"] > 0
    assert 0 < vae["bf16_mean_abs_error"] <= vae["bf16_max_abs_error"] < 0.1  # pixels in [-1, 1]; measured 0.018

    mem = res["memory"]
    phases = ("rollout forward", "update (forward + backward)", "VAE decode")
    assert set(mem["measured_gb"]) == set(phases) and all(p in mem["predicted_gb"] for p in (*phases, "peak"))
    for p in phases:  # a wide band: a CPU's allocations at this width are not a GPU's (0.5, 0.5, 3.1 measured)
        assert mem["measured_gb"][p] > 0 and 0.1 < mem["measured_over_predicted"][p] < 10, (p, mem)

    (alg,) = res["algorithms"].values()
    assert alg["timed_iterations"] == 1 and alg["warmup_seconds"] > 0
    assert alg["seconds_per_iteration"] > alg["update_seconds"] > 0 and alg["rollout_seconds"] > 0
    assert mfu(alg["rollout_mfu"]) and mfu(alg["update_mfu"])
    assert alg["logprobs_agree"] and alg["first_minibatch_ratio_max_dev"] < res["clip_range"]
    # ZeRO-2's 1 GB gradient bucket dominates at this width. On a CPU the measured peak has been 1.0, 2.0
    # and 3.0 GB (bucket-sized allocations the memory model does not explain yet): the prediction must
    # not exceed the measurement here; the 15% agreement is for a GPU run of the check.
    assert 0 < alg["predicted_peak_memory_gb"] <= alg["peak_memory_gb"] * 1.15
    assert alg["predicted_seconds_per_iteration"] is None  # estimate prices GPUs only
    assert all(math.isfinite(v) and v >= 0 for v in res["part_seconds"].values())
