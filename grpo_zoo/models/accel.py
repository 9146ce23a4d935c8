"""Attention kernel and torch.compile of the wan transformer: `model.attention_backend`, `model.compile_blocks`.

Attention goes through diffusers' attention dispatch (diffusers/models/attention_dispatch.py):
`ModelMixin.set_attention_backend(name)` gives every attention processor of the transformer its
kernel, for self- and cross-attention alike.

| model.attention_backend | diffusers backend | needs |
|---|---|---|
| native | none set: diffusers' default, torch SDPA, which picks its kernel per call | nothing |
| cudnn | `_native_cudnn`: SDPA restricted to cuDNN attention | CUDA, cuDNN >= 9, bf16 |
| flash_3_hub | `_flash_3_hub`: FlashAttention 3 from the Hub through the `kernels` package | CUDA sm90, bf16, `kernels`, the kernel downloaded (or cached, HF_HUB_OFFLINE=1) |

Not a choice: `_flash_3` (a local FlashAttention 3 build, `flash_attn_interface`). diffusers 0.42
calls it through a torch custom op with no autograd formula (`_wrapped_flash_attn_3`), so an update
step cannot backpropagate through it; benchmarks.gpu times its forward where it is importable.

`compile_blocks` compiles each WanTransformerBlock with torch.compile (diffusers' regional
compilation, `ModelMixin.compile_repeated_blocks`: the 30 or 40 blocks share one compiled graph,
so it compiles in the time of one block). Compilation is lazy, at the first forward of each shape.

The toy backend runs on the CPU with native attention; both fields are refused for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from grpo_zoo.errors import ConfigError

BACKENDS = {"native": None, "cudnn": "_native_cudnn", "flash_3_hub": "_flash_3_hub"}
"""model.attention_backend -> diffusers' AttentionBackendName value (None: diffusers' default)."""


def _uses_cuda(engine) -> bool:
    return engine.device == "cuda" or (engine.device == "auto" and torch.cuda.is_available())


def check(model, engine) -> None:
    """The fields against the backend, the device, the precision and the installed packages (ConfigError)."""
    name = model.attention_backend
    if name == "native" and not model.compile_blocks:
        return
    if not model.is_wan:
        field = "attention_backend" if name != "native" else "compile_blocks"
        raise ConfigError(f"model.{field}: applies to model.backend=wan only (the toy runs native attention, eagerly)")
    cuda = _uses_cuda(engine)
    if name != "native":
        if not cuda:
            why = "engine.device=cpu" if engine.device == "cpu" else "this machine has no CUDA device"
            raise ConfigError(f"model.attention_backend: {name} runs on CUDA only ({why}); use native")
        if engine.precision != "bf16":
            raise ConfigError(
                f"model.attention_backend: {name} runs bf16 only; set engine.precision=bf16 or use native"
            )
        if name == "cudnn" and (torch.backends.cudnn.version() or 0) < 90000:
            raise ConfigError("model.attention_backend: cudnn attention needs cuDNN >= 9; use native")
        if name == "flash_3_hub" and torch.cuda.get_device_capability() < (9, 0):
            major, minor = torch.cuda.get_device_capability()
            raise ConfigError(
                f"model.attention_backend: FlashAttention 3 needs sm90 (Hopper), this GPU is sm{major}{minor}"
            )
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        try:
            _check_attention_backend_requirements(AttentionBackendName(BACKENDS[name]))
        except RuntimeError as err:
            raise ConfigError(f"model.attention_backend: {str(err).splitlines()[0]}") from None
    if model.compile_blocks and cuda:
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("model.compile_blocks: torch.compile on CUDA needs triton (pip install triton)")


def apply(transformer, model) -> None:
    """Set the attention kernel and mark the repeated blocks for torch.compile (checked by `check`)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    backend = BACKENDS[model.attention_backend]
    if backend is not None:
        default = _AttentionBackendRegistry._active_backend
        try:
            transformer.set_attention_backend(backend)
        except Exception as err:  # the Hub kernel could not be fetched: a setup problem, one line
            raise ConfigError(
                f"model.attention_backend: {model.attention_backend}: {str(err).splitlines()[0]}"
            ) from None
        finally:  # set_attention_backend also makes it every other model's default: this model's only
            _AttentionBackendRegistry.set_active_backend(default)
    if model.compile_blocks:
        transformer.compile_repeated_blocks()


@contextlib.contextmanager
def eager(module: torch.nn.Module) -> Iterator[None]:
    """Inside, `module` runs eagerly with native attention, on any device: for counting FLOPs with
    torch's FlopCounterMode, which counts the operators it sees dispatched (a compiled region hides
    them, and a block first called under such a mode is skipped by torch.compile for good), on the
    CPU where the policy is counted before it moves to its GPU (cuDNN and FlashAttention run on CUDA)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    saved: list[tuple[object, str, object]] = []
    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:  # nn.Module.compile's wrapper
            saved.append((m, "_compiled_call_impl", m._compiled_call_impl))
            m._compiled_call_impl = None
        proc = getattr(m, "processor", None)
        if hasattr(proc, "_attention_backend"):  # set_attention_backend also sets the global default: name it
            saved.append((proc, "_attention_backend", proc._attention_backend))
            proc._attention_backend = AttentionBackendName.NATIVE
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
