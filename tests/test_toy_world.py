"""The toy world: prompts, rendering, rewards, the shipped base model and its CLIs."""

import json
import subprocess
import sys

import pytest
import torch

from grpo_zoo import rewards
from grpo_zoo.rewards.toy import all_rewards, eval_metrics
from grpo_zoo.toy import world

REWARDS = ("toy_motion", "toy_aesthetic", "toy_prompt", "toy_hps")
METRICS = ("aesthetic_quality", "imaging_quality", "subject_consistency", "object_class")


def test_prompt_grammar_and_splits():
    train, test = world.prompts("train"), world.prompts("test")
    assert len(train) + len(test) == 96 and len(test) == 16
    assert not set(train) & set(test)
    # every held-out combination is new as a whole, but its words all appear in training
    for p in test:
        assert any(q.color == p.color for q in train) and any(q.shape == p.shape for q in train)
        assert world.Prompt.parse(p.text) == p
    with pytest.raises(ValueError):
        world.Prompt.parse("a purple circle moving left")


def test_render_moves_the_shape_in_the_prompted_direction():
    gen = torch.Generator().manual_seed(0)
    ps = [world.Prompt(0, s, d) for s in range(4) for d in range(4)]
    v = world.render(ps, gen)
    assert v.shape == (16, 3, world.FRAMES, world.SIZE, world.SIZE) and v.min() >= -1 and v.max() <= 1
    from grpo_zoo.rewards.toy import Detections

    det = Detections(v)
    travel = det.travel / det.travel.norm(dim=1, keepdim=True)
    expected = world.DIR_VECTORS[torch.tensor([p.direction for p in ps])]
    assert ((travel * expected).sum(1) > 0.99).all()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    ps = [world.prompts("test")[i % 16] for i in range(48)]
    return ps, [p.text for p in ps], world.render(ps, gen)


def test_ground_truth_scores_near_the_top_and_noise_near_the_bottom(batch):
    _, texts, gt = batch
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    good = {**all_rewards(gt, texts), **eval_metrics(gt, texts)}
    bad = {**all_rewards(noise, texts), **eval_metrics(noise, texts)}
    for name in REWARDS + METRICS:
        assert good[name].mean() > 0.75, name
        assert bad[name].mean() < 0.05, name
        for values in (good[name], bad[name]):
            assert values.min() >= 0 and values.max() <= 1


def test_rewards_see_each_axis(batch):
    ps, texts, gt = batch
    gen = torch.Generator().manual_seed(3)
    static = world.render(ps, gen, speed=torch.zeros(len(ps)))
    wrong = world.render([world.Prompt((p.color + 1) % 6, (p.shape + 1) % 4, (p.direction + 1) % 4) for p in ps], gen)
    noisy = (gt + 0.3 * torch.randn(gt.shape, generator=gen)).clamp(-1, 1)
    base = all_rewards(gt, texts)
    assert all_rewards(static, texts)["toy_motion"].mean() < 0.05
    assert all_rewards(wrong, texts)["toy_prompt"].mean() < 0.3 * base["toy_prompt"].mean()
    assert all_rewards(noisy, texts)["toy_aesthetic"].mean() < 0.7 * base["toy_aesthetic"].mean()
    assert eval_metrics(noisy, texts)["imaging_quality"].mean() < 0.2


def test_rewards_are_deterministic_and_batched(batch):
    _, texts, gt = batch
    full = all_rewards(gt, texts)
    again = all_rewards(gt.clone(), list(texts))
    singles = [all_rewards(gt[i : i + 1], texts[i : i + 1]) for i in range(0, 48, 7)]
    for name in REWARDS:
        assert torch.equal(full[name], again[name])
        torch.testing.assert_close(torch.cat([s[name] for s in singles]), full[name][::7], rtol=1e-5, atol=1e-6)


def test_reward_registry():
    assert set(REWARDS) <= set(rewards.names())
    from grpo_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'toy_hps'"):
        rewards.get("toy_hsp")


def test_shipped_checkpoint_loads_and_generates():
    from grpo_zoo.flow import make_sigmas, step_table
    from grpo_zoo.models.toy import ToyPolicy
    from grpo_zoo.training.rollout import generate_ode

    policy = ToyPolicy.from_checkpoint("toy-base")
    policy.net.eval()
    assert sum(p.numel() for p in policy.net.parameters()) < 1_000_000
    table = step_table(make_sigmas("wan", 5, 3.0), "flow_sde")
    videos, nfe = generate_ode(policy, ["a red circle moving left"] * 2, table, 1.0, seed=0)
    assert videos.shape == (2, 3, world.FRAMES, world.SIZE, world.SIZE) and nfe == 10
    assert torch.isfinite(videos).all()
    again, _ = generate_ode(policy, ["a red circle moving left"] * 2, table, 1.0, seed=0)
    assert torch.equal(videos, again)


def test_sample_prediction_is_served_as_the_velocity_of_its_clean_estimate():
    """A `sample` checkpoint's transformer outputs x0_hat; the policy serves v = (x_t - x0_hat) / sigma,
    so one Euler step from sigma to 0 lands on x0_hat, and a `velocity` one is passed through."""
    from grpo_zoo.models.toy import ToyPolicy
    from grpo_zoo.toy.model import PromptEncoder

    x0 = torch.rand(3, 3, world.FRAMES, world.SIZE, world.SIZE) * 2 - 1

    class Clean(torch.nn.Module):  # a perfect clean-sample predictor for these x0
        def forward(self, x, t, emb, return_dict=False):
            return (x0.clone(),)

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.tensor([0.9, 0.3, 0.02])
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    emb = torch.zeros(3, 8, 32)
    v = ToyPolicy(Clean(), PromptEncoder(), "sample").raw_velocity(xt, sigma, emb)
    torch.testing.assert_close(v, noise - x0, rtol=1e-4, atol=1e-4)  # the flow's true velocity
    torch.testing.assert_close(xt - s * v, x0, rtol=1e-5, atol=1e-5)
    assert torch.equal(ToyPolicy(Clean(), PromptEncoder(), "velocity").raw_velocity(xt, sigma, emb), x0)


def test_pretrained_sample_model_learns_the_velocity_objective(tmp_path):
    """Pretraining a `sample` model lowers the velocity loss of the policy it serves."""
    from grpo_zoo.models.toy import ToyPolicy
    from grpo_zoo.toy import pretrain

    def velocity_loss(policy):
        gen = torch.Generator().manual_seed(1)
        ps = list(world.prompts("train"))[:16]
        x0 = world.render(ps, gen)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.linspace(0.1, 0.9, 16)
        s = sigma.view(-1, 1, 1, 1, 1)
        with torch.no_grad():
            v = policy.raw_velocity((1 - s) * x0 + s * noise, sigma, policy.encode([p.text for p in ps]))
        return float((v - (noise - x0)).pow(2).mean())

    cfg = pretrain.build(pretrain.PretrainConfig, {"out": str(tmp_path / "ck"), "steps": 1, "batch_size": 4})
    before = velocity_loss(ToyPolicy.from_checkpoint(str(pretrain.pretrain(cfg))))
    cfg = pretrain.build(
        pretrain.PretrainConfig,
        {"out": str(tmp_path / "ck"), "steps": 150, "batch_size": 16, "warmup": 10, "overwrite": True},
    )
    out = pretrain.pretrain(cfg)
    assert json.loads((out / "meta.json").read_text())["prediction"] == "sample"
    after = velocity_loss(ToyPolicy.from_checkpoint(str(out)))
    assert after < 0.5 * before, (before, after)


def evaluate(*args):
    out = subprocess.run([sys.executable, "-m", "grpo_zoo.toy.evaluate", *args], capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def scores():
    res = {}
    for model in ("toy-base", "ground-truth", "noise"):
        out = evaluate("--model", model, "--prompts", "test", "--n", "32", "--seed", "0", "--format", "json")
        assert out.returncode == 0, out.stderr
        res[model] = json.loads(out.stdout)
    return res


def test_evaluate_prints_every_reward_and_metric(scores):
    for model in scores.values():
        assert set(REWARDS + METRICS) <= set(model)


def test_base_model_sits_between_noise_and_ground_truth(scores):
    base, gt, noise = scores["toy-base"], scores["ground-truth"], scores["noise"]
    for name in ("toy_prompt", "toy_motion"):
        assert base[name] > noise[name] + 0.1, name
        assert base[name] < gt[name] - 0.1, name


def test_shipped_base_renders_like_a_pretrained_model_and_leaves_rl_headroom():
    """On training prompts the base's rendering (aesthetic, imaging quality, subject consistency)
    is within 85% of the world's own; what RL should improve (prompt following, motion) is not."""
    res = {}
    for model in ("toy-base", "ground-truth"):
        out = evaluate("--model", model, "--prompts", "train", "--n", "48", "--seed", "0", "--format", "json")
        assert out.returncode == 0, out.stderr
        res[model] = json.loads(out.stdout)
    base, gt = res["toy-base"], res["ground-truth"]
    for name in ("toy_aesthetic", "imaging_quality", "subject_consistency"):
        assert base[name] >= 0.85 * gt[name], (name, base[name], gt[name])
    for name in ("toy_prompt", "toy_motion"):
        assert base[name] <= 0.6 * gt[name], (name, base[name], gt[name])


def test_evaluate_saves_grid_and_videos(tmp_path):
    out = evaluate("--model", "ground-truth", "--n", "4", "--save", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "grid.png").stat().st_size > 1000
    mp4s = sorted(tmp_path.glob("*.mp4"))
    assert len(mp4s) == 4 and all(m.stat().st_size > 500 for m in mp4s)
    import imageio.v2 as imageio

    with imageio.get_reader(mp4s[0]) as reader:
        assert sum(1 for _ in reader) == world.FRAMES


def test_evaluate_bad_model_is_one_line_exit_2():
    out = evaluate("--model", "/no/such/checkpoint")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--model" in out.stderr


def test_pretrain_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_zoo.toy.pretrain",
            "steps=3",
            "batch_size=4",
            "warmup=1",
            f"out={tmp_path / 'ck'}",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    ck = tmp_path / "ck"
    for name in ("transformer", "text_encoder.safetensors", "tokenizer.json", "pretrain.yaml", "loss.csv", "loss.png"):
        assert (ck / name).exists(), name
    assert len((ck / "loss.csv").read_text().splitlines()) == 4
    from grpo_zoo.toy.model import load_checkpoint
    from grpo_zoo.toy.pretrain import main as pretrain

    load_checkpoint(str(ck))
    for args, word in [
        (["label_noise=2"], "label_noise"),
        (["patch=[1,3,4]"], "patch"),
        (["patch=[1,4]"], "patch"),
        (["head_dim=2"], "head_dim"),
        (["head_dim=7"], "head_dim"),
        (["prediction=noise"], "prediction"),
        ([f"init={ck}", "prediction=velocity"], "prediction"),
        ([f"init={ck}", "heads=2"], "heads"),
    ]:
        with pytest.raises(SystemExit) as exited:  # the CLI's entry function, in this process
            pretrain([f"out={tmp_path / 'bad'}", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exited.value.code == 2 and len(err) == 1 and word in err[0], (args, err)
        assert not (tmp_path / "bad").exists()


def test_pretrain_never_writes_over_what_the_user_owns(tmp_path, capsys):
    """Without out= the command would replace the shipped base: refused before any compute, as
    is any existing checkpoint without overwrite=true, a folder that is not a checkpoint (even
    with overwrite=true: its files are the user's) and a file; nothing is touched."""
    import hashlib

    from grpo_zoo.toy.model import CHECKPOINT_DIR
    from grpo_zoo.toy.pretrain import main as pretrain

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    shipped = digest(CHECKPOINT_DIR / "toy-base")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["steps=1"], "already holds a checkpoint; pass overwrite=true"),
        ([f"out={mine}", "steps=1", "overwrite=true"], "is not a checkpoint (no meta.json)"),
        ([f"out={mine}", "steps=1"], "is not a checkpoint (no meta.json)"),
        ([f"out={tmp_path / 'a_file'}", "steps=1"], "out:"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as end:
            pretrain(argv)
        err = capsys.readouterr().err.strip()
        assert end.value.code == 2 and len(err.splitlines()) == 1 and message in err, (argv, err)
    assert digest(CHECKPOINT_DIR / "toy-base") == shipped
    assert (mine / "notes.txt").read_text() == "my notes" and len(list(mine.iterdir())) == 1


def test_toy_still_pulls_against_toy_motion(batch):
    """toy_still is maximised by a frozen object, the world's own moving videos score low on it:
    the pair can be weighed against each other, and training on one alone can hack the other."""
    ps, texts, gt = batch
    static = world.render(ps, torch.Generator().manual_seed(3), speed=torch.zeros(len(ps)))
    moving, frozen = all_rewards(gt, texts), all_rewards(static, texts)
    assert frozen["toy_still"].mean() > 0.85 and moving["toy_still"].mean() < 0.4
    assert moving["toy_motion"].mean() > 0.75 and frozen["toy_motion"].mean() < 0.05
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    assert all_rewards(noise, texts)["toy_still"].mean() < 0.05  # no object: no reward
    assert "toy_still" in rewards.entries("toy_hps") and "toy_still" in rewards.names()
    full = all_rewards(gt, texts)["toy_still"]
    torch.testing.assert_close(all_rewards(gt[:5], texts[:5])["toy_still"], full[:5], rtol=1e-5, atol=1e-6)
