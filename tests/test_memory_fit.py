"""What makes Wan2.1-14B fit an 80 GB card, on the tiny Wan and the toy: a micro-batched rollout
is the one-shot rollout, the prompts are encoded once and the text encoder freed, a LoRA
checkpoint holds only the trainable weights and still resumes exactly."""

import json

import pytest
import torch

from grpo_zoo.config.run import ModelConfig

from .helpers import run_config, train


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from grpo_zoo.models.tiny_wan import write_tiny_wan
    from grpo_zoo.models.wan import WanPolicy

    path = write_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan")
    cfg = ModelConfig(backend="wan", path=str(path), height=16, width=16, frames=9, max_tokens=8, lora_rank=4)
    return WanPolicy.load(cfg)


@pytest.mark.parametrize("initial_noise", ["independent", "shared"])
def test_micro_batched_rollout_is_the_one_shot_rollout(tiny_policy, initial_noise):
    from grpo_zoo.core import algorithm as algorithms
    from grpo_zoo.core.algorithm import PlanContext
    from grpo_zoo.flow import make_sigmas, step_table
    from grpo_zoo.training.rollout import rollout

    table = step_table(make_sigmas("wan", 6, 3.0), "wan_linear", 1.0)
    alg = algorithms.build(algorithms.AlgorithmConfig.resolve_type({"name": "flash_grpo"})(initial_noise=initial_noise))
    plan = alg.plan(PlanContext.of(2, 4, table, torch.Generator().manual_seed(0)))
    emb = tiny_policy.encode(["a red circle moves left", "a blue square"]).repeat_interleave(4, 0)
    null = tiny_policy.encode([""])
    runs = {
        m: rollout(tiny_policy, emb, null, plan, table, 4.5, torch.Generator().manual_seed(1), micro_batch=m)
        for m in (None, 3, 1)
    }
    one = runs[None]
    for m in (3, 1):
        ro = runs[m]
        assert ro.nfe == one.nfe
        torch.testing.assert_close(ro.latents, one.latents, rtol=0, atol=1e-5)
        torch.testing.assert_close(ro.transitions.logp_old, one.transitions.logp_old, rtol=0, atol=1e-4)
        assert torch.equal(ro.transitions.traj, one.transitions.traj)


def test_prompts_are_encoded_once_and_the_text_encoder_freed(tiny_policy):
    import copy

    policy = copy.deepcopy(tiny_policy)
    prompts = ["a red circle moves left", "a blue square", ""]
    direct = policy.encode(prompts)
    policy.fix_prompts(prompts + ["a blue square"])
    assert policy.text_encoder is None
    assert not any("text_encoder" in n for n, _ in policy.named_parameters())
    torch.testing.assert_close(policy.encode(prompts[::-1]), direct.flip(0), rtol=0, atol=1e-6)
    with pytest.raises(KeyError, match="not among the run's prompts"):
        policy.encode(["a green star"])


def test_lora_checkpoint_holds_only_trainable_weights_and_resumes_exactly(tmp_path):
    from grpo_zoo.training.hooks import Hook

    def config(name):
        cfg = run_config(tmp_path, name, {"name": "flow_grpo", "model.lora_rank": 8}, 3)
        cfg.checkpoint_every = 1
        return cfg

    ref_cfg = config("ref")
    ref = train(ref_cfg)
    states = torch.load(
        tmp_path / "ref" / "checkpoints" / "step-3" / "engine" / "mp_rank_00_model_states.pt", weights_only=False
    )
    assert states["module"] and all("lora_" in k for k in states["module"])  # no frozen base weight

    class Crash(Hook):
        def after_iteration(self, trainer):
            if trainer.step == 2:  # after the step-1 checkpoint, before step 2's
                raise RuntimeError("killed")

    from grpo_zoo.training.trainer import Trainer

    cfg = config("run")
    crashed = Trainer(cfg, progress=False, hooks=[Crash()])
    crashed.engine.close = lambda: None
    with pytest.raises(RuntimeError, match="killed"):
        crashed.train()
    assert train(cfg) == ref
    resumes = json.loads((tmp_path / "run" / "meta.json").read_text())["resumes"]
    assert len(resumes) == 1, resumes  # it resumed from the step-1 checkpoint, not from the start


@pytest.mark.parametrize("checkpointing", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_a_deep_transformer_is_priced_from_two_and_three_blocks_exactly(tmp_path, train, checkpointing):
    """The memory model extends 2- and 3-block peaks to the model's depth: the same bytes as
    tracing all of its blocks (fake tensors: no compute), with and without a graph."""
    import json as _json

    from grpo_zoo.config.run import RunConfig
    from grpo_zoo.config.schema import build
    from grpo_zoo.cost import phases
    from grpo_zoo.models.tiny_wan import write_tiny_wan

    path = write_tiny_wan(tmp_path / "tiny-wan")
    conf = path / "transformer" / "config.json"
    data = _json.loads(conf.read_text())
    data["num_layers"] = 7
    conf.write_text(_json.dumps(data))
    model = {"backend": "wan", "path": str(path), "height": 32, "width": 32, "frames": 9, "max_tokens": 8}
    model |= {"lora_rank": 4, "gradient_checkpointing": checkpointing}
    cfg = build(RunConfig, {"model": model, "engine": {"precision": "bf16"}})
    extended = phases._transformer_run(cfg, 2, train)
    traced = phases._transformer_peak(cfg, 2, train, 7)
    assert extended == traced > 0
