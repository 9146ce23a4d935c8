"""Each method at its reference's settings: an algorithm's `settings` are the defaults of its runs,
under the experiment's own values; the advantage std conventions and the references' EMA."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import build, load_config_file, to_dict
from grpo_zoo.core import algorithm as algorithms
from grpo_zoo.core.advantages import group_advantages, normalize_within
from grpo_zoo.core.ema import EMA

from .helpers import ROOT, install_plugin

NAMES = algorithms.names(plugins=False)


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("name", NAMES)
def test_every_setting_is_a_config_field_with_a_source(name):
    cls = algorithms.get(name)
    assert cls.settings and cls.repository.count("@") == 1, name
    cfg = build(RunConfig, {"algorithm": {"name": name}})
    for key, setting in cls.settings.items():
        _get(cfg, key)  # a real field (AttributeError otherwise)
        assert setting.source.strip(), key
        assert not setting.differs or setting.why, f"{name} {key}: a toolkit value that differs says why"


@pytest.mark.parametrize("name", NAMES)
def test_a_run_of_the_algorithm_takes_its_settings_and_the_experiment_wins(name):
    cls = algorithms.get(name)
    cfg = build(RunConfig, {"algorithm": {"name": name}})
    for key, setting in cls.settings.items():
        assert _get(cfg, key) == setting.default, (name, key)
    own = build(RunConfig, {"algorithm": {"name": name}, "optim": {"clip_range": 0.5, "ema_decay": 0.0}})
    assert own.optim.clip_range == 0.5 and own.optim.ema_decay == 0.0
    written = to_dict(cfg)  # what config.yaml records
    for key, setting in cls.settings.items():
        section, field = key.split(".", 1)
        assert written[section][field] == setting.default


def test_a_noise_level_follows_its_noise_kind():
    assert build(RunConfig, {"algorithm": {"name": "dance_grpo"}}).sampling.noise_level == 0.3
    chosen = build(RunConfig, {"algorithm": {"name": "dance_grpo"}, "sampling": {"noise": "flow_sde"}})
    assert chosen.sampling.noise == "flow_sde" and chosen.sampling.noise_level is None  # flow_sde's own default
    same = build(RunConfig, {"algorithm": {"name": "dance_grpo"}, "sampling": {"noise": "constant"}})
    assert same.sampling.noise_level == 0.3


@pytest.mark.parametrize("name", NAMES)
def test_each_method_has_a_toy_file_at_its_references_settings(name):
    path = ROOT / "experiments" / "toy" / f"{'flow_grpo_fast1' if name == 'flow_grpo_fast' else name}.yaml"
    cfg = build(RunConfig, load_config_file(path))
    assert cfg.algorithm.name == name
    for key, setting in algorithms.get(name).settings.items():
        assert _get(cfg, key) == setting.default, (name, key)


def test_the_published_experiments_keep_the_settings_they_ran_with():
    """quickstart, paper/ and zoo/ start from bench_wide.yaml: one trust region, noise and schedule."""
    from grpo_zoo.config.experiment import load_experiment

    for path in ["quickstart.yaml", "zoo/leaderboard_bench_wide.yaml", "paper/efficiency.yaml", "paper/collapse.yaml"]:
        for run in load_experiment(ROOT / "experiments" / path, "/tmp/unused").runs:
            cfg = build(RunConfig, run.config)
            o, s = cfg.optim, cfg.sampling
            assert (o.clip_range, o.ema_decay, o.adv_std) == (0.2, 0.0, "population"), (path, run.config)
            if cfg.algorithm.name != "dance_grpo":
                assert (s.noise, s.noise_level) == ("flow_sde", None), (path, cfg.algorithm.name)


@pytest.mark.parametrize("name", NAMES)
def test_algorithm_settings_document_the_algorithm_configs_own_defaults(name):
    cls = algorithms.get(name)
    defaults = {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}
    for key, setting in cls.settings.items():
        if key.startswith("algorithm."):
            assert defaults[key.split(".", 1)[1]] == setting.default, (name, key)


def test_a_plugin_declares_settings_too(tmp_path):
    source = """
from dataclasses import dataclass
from grpo_zoo.core.algorithm import AlgorithmConfig, Setting, register
from algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig

@dataclass
class MineConfig(FlowGRPOConfig):
    name: str = "mine"

@register("mine")
class Mine(FlowGRPO):
    Config = MineConfig
    repository = "me/mine@abc1234"
    settings = {"optim.clip_range": Setting(3e-4, "train.py:1"), "sampling.noise": Setting("cps", "train.py:2")}
"""
    env = install_plugin(
        tmp_path, "mine", source.replace("from algorithms.flow_grpo", "from grpo_zoo.algorithms.flow_grpo")
    )
    code = (
        "from grpo_zoo.config.run import RunConfig\nfrom grpo_zoo.config.schema import build\n"
        "c = build(RunConfig, {'algorithm': {'name': 'mine'}, 'optim': {'beta': 0.1}})\n"
        "print(c.optim.clip_range, c.sampling.noise, c.optim.beta)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0.0003", "cps", "0.1"]


def test_advantages_take_the_std_convention_of_the_reference():
    r = torch.tensor([[1.0, 2.0, 4.0, 7.0], [0.0, 1.0, 0.0, 1.0]])
    pop = group_advantages(r, clip=100)
    unb = group_advantages(r, clip=100, unbiased=True, eps=1e-8)
    ref = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-8)  # DanceGRPO: torch .std() + 1e-8
    assert torch.allclose(unb, ref.float(), atol=1e-6)
    assert torch.allclose(unb / pop, torch.full_like(pop, (3 / 4) ** 0.5), atol=1e-3)  # sqrt((n - 1) / n)
    # a depth of two nodes (BranchGRPO's): +-0.71 under the sample std, +-1 under the population's
    two = normalize_within(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0, 0, 1]), unbiased=True, eps=1e-8)
    assert torch.allclose(two, torch.tensor([-(0.5**0.5), 0.5**0.5, 0.0]), atol=1e-6)
    assert torch.allclose(
        normalize_within(torch.tensor([0.0, 1.0]), torch.tensor([0, 0])), torch.tensor([-1.0, 1.0]), atol=1e-3
    )


def test_the_ema_is_the_references_with_its_warm_up_and_interval():
    """EMAModuleWrapper.step (flow_grpo/ema.py) re-stated on numbers: after optimizer step s (1-based),
    when (s + 1) % interval == 0, ema += (1 - min((1 + s) / (10 + s), decay)) * (p - ema)."""
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA(lambda: {"w": p}, decay=0.9, every=8)
    expected = torch.zeros(3)
    for s in range(1, 41):
        with torch.no_grad():
            p.add_(1.0)
        ema.update()
        if (s + 1) % 8 == 0:
            d = min((1 + s) / (10 + s), 0.9)
            expected = expected + (1 - d) * (p.detach() - expected)
        assert torch.allclose(ema.shadow["w"], expected), s
    state = ema.state_dict()
    again = EMA(lambda: {"w": p}, decay=0.9, every=8)
    again.load_state_dict(state)
    assert again.steps == 40 and torch.equal(again.shadow["w"], ema.shadow["w"])
    again.load_state_dict({"w": torch.ones(3)})  # a checkpoint written before the interval existed
    assert again.steps == 0 and torch.equal(again.shadow["w"], torch.ones(3))


def test_the_leaderboard_runs_every_method_at_its_references_settings():
    """experiments/zoo/leaderboard.yaml: every registered algorithm, each with its settings as its
    reference fixes them (nothing the experiment sets overrides them), the bench's optimizer scale."""
    from grpo_zoo.config.experiment import load_experiment

    base = build(RunConfig, load_config_file(ROOT / "experiments" / "toy" / "base.yaml"))
    runs = load_experiment(ROOT / "experiments" / "zoo" / "leaderboard.yaml", "/tmp/unused").runs
    assert {build(RunConfig, r.config).algorithm.name for r in runs} == set(NAMES)
    flash = {"algorithm.post_compress_ratio": 0.4, "algorithm.shift_every": 20, "sampling.ode_solver": "dpm2"}
    for run in runs:
        cfg = build(RunConfig, run.config)
        own = flash if run.name.startswith("mix_grpo_flash") else {}  # MixGRPO-Flash's own script
        for key, setting in algorithms.get(cfg.algorithm.name).settings.items():
            assert _get(cfg, key) == own.get(key, setting.default), (run.name, key)
        for key, value in own.items():
            assert _get(cfg, key) == value, (run.name, key)
        assert (cfg.optim.lr, cfg.model.lora_rank, cfg.data.eval_samples) == (
            base.optim.lr,
            base.model.lora_rank,
            base.data.eval_samples,
        )


def test_the_cross_reward_leaderboard_is_the_leaderboard_trained_on_toy_motion_and_ranked_on_toy_still():
    from grpo_zoo.config.experiment import load_experiment

    zoo = ROOT / "experiments" / "zoo"
    cross, board = (
        load_experiment(zoo / f, "/tmp/unused") for f in ("leaderboard_cross_reward.yaml", "leaderboard.yaml")
    )
    assert cross.report.metric == "toy_still" and cross.record()["metric"] == "toy_still"
    assert [r.name for r in cross.runs] == [r.name for r in board.runs]
    for a, b in zip(cross.runs, board.runs, strict=True):
        assert a.config["reward"]["name"] == "toy_motion"
        assert {**a.config, "reward": None, "run_dir": None} == {**b.config, "reward": None, "run_dir": None}
