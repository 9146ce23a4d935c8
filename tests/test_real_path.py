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
            assert (cfg.engine.precision, cfg.engine.zero_stage) == ("bf16", 2)
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
        *(str(p) for p in sorted(WAN.glob("paper_*b.yaml"))),
        "--gpus",
        "8",
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
    out = run_module("grpo_zoo.vbench", "export", str(runs), "--out", str(tmp_path / "vb"))
    assert out.returncode == 0, out.stderr
    assert "--mode=custom_input" in out.stdout and len(list((tmp_path / "vb" / "flash_grpo_seed1").glob("*.mp4"))) == 8
    mapping = json.loads((tmp_path / "vb" / "flash_grpo_seed0" / "prompts.json").read_text())
    assert set(mapping.values()) <= {p.name[:-6] for p in videos}
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
