"""The Wan2.2 backends on tiny random directories written as WanPipeline.save_pretrained writes
them: loading, sampling equal to diffusers' WanPipeline (expand_timesteps; two experts with
their own guidance), training flash_grpo, the experts that train, and bad input."""

import pytest
import torch

from grpo_zoo.config.run import ModelConfig, RunConfig
from grpo_zoo.config.schema import build
from grpo_zoo.errors import ConfigError

from .helpers import ROOT, TINY_WAN_ARGS, merged, run_module

SIZE = {"wan2.2-ti2v": (32, 32, 9), "wan2.2-a14b": (16, 16, 9)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from grpo_zoo.models.tiny_wan import write_tiny_wan

    root = tmp_path_factory.mktemp("wan22")
    return {v: write_tiny_wan(root / v, variant=v) for v in SIZE}


def model_cfg(variant, path, **extra) -> ModelConfig:
    h, w, f = SIZE[variant]
    fields = dict(backend=variant, path=str(path), height=h, width=w, frames=f, max_tokens=8, lora_rank=0)
    return build(ModelConfig, {**fields, "vae_dtype": "fp32", **extra}, "model")


def pipeline_for(policy, variant, guidance_2=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    parts = dict(tokenizer=policy.tokenizer, text_encoder=policy.text_encoder, vae=policy.vae)
    if variant == "wan2.2-ti2v":
        parts.update(transformer=policy.net, expand_timesteps=True)
    else:
        parts.update(transformer=policy.net.high, transformer_2=policy.net.low, boundary_ratio=0.875)
    pipe = WanPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("variant", list(SIZE))
def test_rollout_is_wanpipeline_sampling_in_float32(tiny, variant):
    """Our ODE rollout against WanPipeline's own sampling of the same directory's components: the
    TI2V's per-token timesteps, the A14B's switch at the boundary with each expert's guidance."""
    from grpo_zoo.flow import make_sigmas, step_table
    from grpo_zoo.models import load_policy
    from grpo_zoo.training.rollout import generate_ode

    extra = {"low_noise_guidance": 3.0} if variant == "wan2.2-a14b" else {}
    policy = load_policy(model_cfg(variant, tiny[variant], **extra))
    pipe = pipeline_for(policy, variant)
    prompts, steps, guidance, seed = ["a red circle moves left", "a blue square"], 8, 4.0, 3
    table = step_table(make_sigmas("flow_match", steps, 3.0), "flow_sde")
    if variant == "wan2.2-a14b":  # the switch falls inside the rollout: both experts serve
        assert (table.sigma[:-1] * 1000 >= 875).any() and (table.sigma[:-1] * 1000 < 875).any()
    ours, _ = generate_ode(policy, prompts, table, guidance, seed, dtype=torch.float32)
    latents = torch.stack(
        [
            torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
            for i in range(len(prompts))
        ]
    )
    h, w, f = SIZE[variant]
    kw = {"guidance_scale_2": 3.0} if variant == "wan2.2-a14b" else {}
    with torch.no_grad():
        theirs = pipe(
            prompt_embeds=policy.encode(prompts),
            negative_prompt_embeds=policy.encode([""]).expand(len(prompts), -1, -1),
            num_frames=f, height=h, width=w, num_inference_steps=steps, guidance_scale=guidance,
            latents=latents, output_type="pt", **kw,
        ).frames  # fmt: skip
    theirs = theirs.permute(0, 2, 1, 3, 4).float() * 2 - 1
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    assert err < 1e-4, err
    if variant == "wan2.2-a14b":  # one guidance for both experts is another sampler: the test can tell
        policy.low_guidance = None
        other, _ = generate_ode(policy, prompts, table, guidance, seed, dtype=torch.float32)
        assert (other - theirs).abs().max().item() > 100 * err


def test_the_experts_route_by_sigma_and_only_the_chosen_ones_train(tiny):
    from grpo_zoo.models import load_policy

    policy = load_policy(model_cfg("wan2.2-a14b", tiny["wan2.2-a14b"], lora_rank=4, experts=["low"]))
    high, low = policy.net.high, policy.net.low
    assert not any(p.requires_grad for p in high.parameters())
    assert any(p.requires_grad for p in low.parameters())
    sigma = torch.tensor([0.95, 0.875, 0.874, 0.2])
    assert policy.trains_at(sigma).tolist() == [False, False, True, True]
    calls = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: calls.append((n, len(a[0]))))
        for n, m in (("high", high), ("low", low))
    ]
    x = torch.randn(4, *policy.latent_shape)
    emb = policy.encode(["a"] * 4)
    v = policy.raw_velocity(x, sigma, emb)
    for h in hooks:
        h.remove()
    assert sorted(calls) == [("high", 2), ("low", 2)]
    # row by row: the mixed batch equals each row through its own expert
    for i in range(4):
        alone = policy.raw_velocity(x[i : i + 1], sigma[i : i + 1], emb[i : i + 1])
        torch.testing.assert_close(v[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    with policy.reference():  # the KL reference: both experts without adapters
        assert policy.raw_velocity(x, sigma, emb).shape == v.shape


@pytest.mark.parametrize("variant", list(SIZE))
def test_flash_grpo_trains_two_iterations_on_each_tiny_wan22(tiny, variant, tmp_path, train):
    h, w, f = SIZE[variant]
    run = tmp_path / "run"
    extra = ["model.experts=[high]"] if variant == "wan2.2-a14b" else []
    out = train(
        str(ROOT / "experiments/toy/base.yaml"), f"run_dir={run}", f"model.path={tiny[variant]}", *TINY_WAN_ARGS,
        f"model.backend={variant}", f"model.height={h}", f"model.width={w}", f"model.frames={f}",
        "algorithm.name=flash_grpo", "budget.steps=2", "sampling.guidance=2.0", *extra,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    from grpo_zoo.runs import RunDir

    rows = [r for r in RunDir(run).rows() if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["stats/transitions"] > 0 for r in rows)
    # the estimate counts what the run ran, the transitions a frozen expert serves left out
    from grpo_zoo.cost.counts import iteration_counts

    cfg = build(RunConfig, RunDir(run).config())
    counts = [iteration_counts(cfg, step) for step in range(2)]
    assert rows[-1]["compute/nfe"] == sum(c["rollout_nfe"] + c["update_nfe"] for c in counts)
    assert rows[-1]["compute/backward"] == sum(c["backward"] for c in counts)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"experts": ["middle"]}, "model.experts: unknown expert 'middle'"),
        ({"experts": []}, "model.experts: name each expert"),
        ({"experts": ["high", "high"]}, "model.experts: name each expert"),
        ({"boundary": 1.0}, "model.boundary"),
        ({"boundary": 0.0}, "model.boundary"),
        ({"boundary": float("nan")}, "model.boundary"),
        ({"low_noise_guidance": 0.5}, "model.low_noise_guidance"),
    ],
)
def test_bad_expert_settings_are_one_line(changes, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        model_cfg("wan2.2-a14b", tmp_path, **changes)


def test_expert_settings_on_another_backend_and_a_boundary_outside_the_index(tiny, tmp_path):
    with pytest.raises(ConfigError, match="two-expert wan2.2-a14b backend"):
        model_cfg("wan2.2-ti2v", tmp_path, experts=["high"])
    with pytest.raises(ConfigError, match="not a Wan2.2-TI2V video"):
        build(ModelConfig, {"backend": "wan2.2-ti2v", "height": 48, "width": 32, "frames": 9}, "model")
    from grpo_zoo.models import load_policy

    broken = tmp_path / "a14b"
    import shutil

    shutil.copytree(tiny["wan2.2-a14b"], broken)
    (broken / "model_index.json").write_text((broken / "model_index.json").read_text().replace("0.875", "1.5"))
    with pytest.raises(ConfigError, match=r"model.boundary: a boundary ratio in \(0, 1\)"):
        load_policy(model_cfg("wan2.2-a14b", broken))
    shutil.rmtree(broken / "transformer_2")
    out = run_module(
        "grpo_zoo.train",
        *merged(
            str(ROOT / "experiments/toy/base.yaml"), *TINY_WAN_ARGS, "model.backend=wan2.2-a14b",
            f"model.path={broken}", f"run_dir={tmp_path / 'run'}",
        ),
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "transformer_2" in out.stderr and not (tmp_path / "run").exists()


def test_run_config_reads_the_expert_fields_only_for_a14b():
    cfg = build(RunConfig, {"model": {"backend": "wan2.2-a14b", "path": "/x", "boundary": 0.9}})
    assert cfg.model.boundary == 0.9 and cfg.model.experts == ["high", "low"]


def test_estimate_prices_each_new_model_and_each_expert(capsys):
    from grpo_zoo.estimate import main

    configs = [str(ROOT / "experiments/wan2.2" / f) for f in ("ti2v_5b.yaml", "a14b.yaml")]
    assert main([*configs, "--gpus", "8", "--gpu", "h100", "--format", "json"]) == 0
    import json

    ti2v, a14b = json.loads(capsys.readouterr().out)
    assert ti2v["fwd_flops_per_nfe"] < a14b["fwd_flops_per_nfe"]
    assert a14b["rollout_nfe_high"] + (a14b["rollout_nfe"] - a14b["rollout_nfe_high"]) == a14b["rollout_nfe"]
    # Flash-GRPO's k on the first 10 of 20 steps at shift 12: all of them at sigma >= 0.875
    assert a14b["trained_high"] > 0 and a14b["trained_low"] == 0
    assert ti2v["memory"]["fits"] and a14b["memory"]["fits"]
    held = a14b["memory"]["memory_gb"]["transformer weights"]
    assert main([configs[1], "--gpus", "8", "--format", "json"]) == 0  # the same, for the held weights below
    capsys.readouterr()
    from grpo_zoo.config.schema import apply_overrides, load_config_file
    from grpo_zoo.cost.memory import held_bytes

    data = load_config_file(configs[1])
    single = {**data, "model": {k: v for k, v in data["model"].items() if k not in ModelConfig.EXPERTS_ONLY}}
    one = build(RunConfig, apply_overrides(single, ["model.backend=wan", "model.arch=wan2.1-t2v-14b"]))
    two = build(RunConfig, data)
    assert held_bytes(two, 8)["transformer weights"] == pytest.approx(2 * held_bytes(one, 8)["transformer weights"])
    assert held == pytest.approx(held_bytes(two, 8)["transformer weights"] / 1e9, rel=1e-3)
    only_high = build(RunConfig, apply_overrides(data, ["model.experts=[high]"]))
    assert held_bytes(only_high, 8)["optimizer states"] == pytest.approx(held_bytes(two, 8)["optimizer states"] / 2)
    assert main([configs[1], "--gpus", "8", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "high: trains; serves 1664 rollout NFE and 64.0 trained transitions" in out
    assert "low: trains; serves 896 rollout NFE and 0.0 trained transitions" in out


def test_experts_that_no_trained_step_reaches_are_refused_before_compute(tiny, tmp_path):
    """Flash-GRPO's k on step 0 (sigma 1, the high-noise expert's) with only the low-noise expert
    training: nothing would ever train, said in one line before any compute."""
    h, w, f = SIZE["wan2.2-a14b"]
    out = run_module(
        "grpo_zoo.train",
        *merged(
            str(ROOT / "experiments/toy/base.yaml"), *TINY_WAN_ARGS, "model.backend=wan2.2-a14b",
            f"model.path={tiny['wan2.2-a14b']}", f"model.height={h}", f"model.width={w}", f"model.frames={f}",
            "model.experts=[low]", "algorithm.name=flash_grpo", "algorithm.k_range=[0, 0]", f"run_dir={tmp_path / 'run'}",
        ),
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "model.experts: flash_grpo trains steps 0..0" in out.stderr and "frozen high-noise expert" in out.stderr
    assert not (tmp_path / "run").exists()
