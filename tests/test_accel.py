"""model.attention_backend and model.compile_blocks (grpo_zoo/models/accel.py) on a tiny diffusers Wan:
the wan policy loads with them applied, and FLOPs are counted eagerly with native attention, on the
CPU, whatever they are (the trainer counts before the policy moves to its GPU)."""

from __future__ import annotations

import pytest
import torch

from grpo_zoo.config.run import ModelConfig


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    from grpo_zoo.models.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("wan") / "model")


def _model(path, **fields) -> ModelConfig:
    return ModelConfig(backend="wan", path=str(path), height=16, width=16, frames=5, max_tokens=8, **fields)


def _forward(policy) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(2, *policy.latent_shape)
    emb = policy.encode(["a red circle", "a blue square"])
    with torch.no_grad():
        return policy.raw_velocity(x, torch.tensor([0.3, 0.8]), emb)


def test_cudnn_is_set_and_flops_are_counted_natively_on_the_cpu(tiny_wan):
    from grpo_zoo.cost.flops import policy_flops
    from grpo_zoo.models import load_policy
    from grpo_zoo.models.accel import eager

    native = load_policy(_model(tiny_wan))
    cudnn = load_policy(_model(tiny_wan, attention_backend="cudnn"))
    procs = [m.processor for m in cudnn.net.modules() if hasattr(getattr(m, "processor", None), "_attention_backend")]
    assert procs and all(p._attention_backend.value == "_native_cudnn" for p in procs)
    with pytest.raises(RuntimeError):  # cuDNN attention has no CPU kernel: the backend really is in use
        _forward(cudnn)
    with eager(cudnn):
        assert torch.equal(_forward(cudnn), _forward(native))
    assert all(p._attention_backend.value == "_native_cudnn" for p in procs)  # restored
    assert policy_flops(cudnn, "a red circle") == policy_flops(native, "a red circle")


def test_compiled_blocks_compile_after_the_flop_count_and_agree(tiny_wan):
    """Counting FLOPs first (under torch's FlopCounterMode) must not leave the blocks uncompiled."""
    from torch._dynamo.utils import counters

    from grpo_zoo.cost.flops import policy_flops
    from grpo_zoo.models import load_policy

    torch._dynamo.reset()
    counters.clear()
    plain = load_policy(_model(tiny_wan))
    compiled = load_policy(_model(tiny_wan, compile_blocks=True))
    blocks = [m for m in compiled.net.modules() if type(m).__name__ == "WanTransformerBlock"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert policy_flops(compiled, "a red circle") == policy_flops(plain, "a red circle")
    assert counters["frames"]["ok"] == 0  # nothing compiled while counting
    out = _forward(compiled)
    assert counters["frames"]["ok"] >= 1  # the blocks compiled at their first real forward
    torch.testing.assert_close(out, _forward(plain), rtol=1e-4, atol=1e-5)
