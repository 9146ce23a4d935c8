"""The resolved config of one training run: every field documented, checked before compute.

`python -m grpo_zoo.train --help` prints this tree. YAML files under experiments/ set
some fields; `dotted.key=value` arguments override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grpo_zoo.algorithm import AlgorithmConfig
from grpo_zoo.errors import ConfigError


@dataclass
class ModelConfig:
    backend: Literal["toy", "wan"] = "toy"
    """Policy backend: toy (the toy world's tiny Wan DiT) or wan (diffusers Wan2.1 directory)."""
    path: str = "toy-base"
    """toy: a shipped checkpoint name or a directory; wan: a local diffusers Wan2.1 directory."""
    arch: str | None = None
    """wan: the architecture (wan2.1-t2v-1.3b, wan2.1-t2v-14b), for estimates without the weights."""
    lora_rank: int = 0
    """LoRA rank through peft; 0 trains every weight (the reference is then a frozen copy)."""
    lora_alpha: float = 32.0
    """LoRA alpha."""
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """Module names that get LoRA adapters (the attention projections)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (memory for compute)."""
    height: int = 480
    """wan: video height in pixels (the toy world's size is fixed)."""
    width: int = 832
    """wan: video width in pixels."""
    frames: int = 81
    """wan: number of frames."""
    max_tokens: int = 512
    """wan: prompt length the text encoder pads to (WanPipeline's max_sequence_length)."""

    def validate(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank: must be >= 0, got {self.lora_rank}")


@dataclass
class SamplingConfig:
    schedule: Literal["wan", "flow_match"] = "wan"
    """Sigma schedule (matches diffusers: wan = UniPC flow sigmas, flow_match = FlowMatchEuler)."""
    steps: int = 10
    """T: sampling steps of a training rollout."""
    shift: float = 3.0
    """Timestep shift s (Wan 480p uses 3)."""
    noise: Literal["flow_sde", "wan_linear", "cps"] = "flow_sde"
    """Noise kind of the stochastic steps."""
    noise_level: float | None = None
    """a of flow_sde / cps, scale of wan_linear; null takes the kind's default (0.7, 1, 0.7)."""
    guidance: float = 1.0
    """Classifier-free guidance scale for rollouts and evaluation (1 = off; CFG doubles the NFE)."""
    eval_steps: int = 20
    """ODE steps of evaluation sampling."""

    def validate(self) -> None:
        if self.steps < 1 or self.eval_steps < 1:
            raise ConfigError("steps: must be a positive integer")
        if self.shift <= 0:
            raise ConfigError(f"shift: must be positive, got {self.shift}")
        if self.guidance < 1:
            raise ConfigError(f"guidance: must be >= 1 (1 turns CFG off), got {self.guidance}")


@dataclass
class RewardConfig:
    name: str = "toy_hps"
    """Training reward by name (toy_hps, toy_prompt, toy_motion, toy_aesthetic, hpsv3)."""
    options: dict = field(default_factory=dict)
    """Keyword options of the reward (e.g. the hpsv3 server URL)."""


@dataclass
class DataConfig:
    prompts: str = "toy:train"
    """Training prompts: toy:train, toy:test, or a text file with one prompt per line."""
    eval_prompts: str = "toy:test"
    """Held-out evaluation prompts (same forms)."""
    prompts_per_step: int = 4
    """P: prompt groups per iteration (over all ranks; each rank takes P / world size)."""
    group_size: int = 8
    """G: rollouts per prompt."""
    eval_every: int = 5
    """Evaluate every this many iterations (0: only at the start and the end)."""
    eval_samples: int = 32
    """Evaluation videos (the eval prompts cycle), sampled by ODE at fixed seeds."""
    eval_seed: int = 1234
    """Seed of the evaluation noise (the same for every run, so evals compare)."""

    def validate(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"group_size: GRPO needs groups of at least 2 rollouts, got {self.group_size}")
        if self.prompts_per_step < 1:
            raise ConfigError(f"prompts_per_step: must be at least 1, got {self.prompts_per_step}")
        for name in ("prompts", "eval_prompts"):
            value = getattr(self, name)
            if not value.startswith("toy:") and not Path(value).is_file():
                raise ConfigError(f"{name}: no prompt file {value!r} (give toy:train, toy:test or a text file)")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global norm)."""
    clip_range: float = 1e-3
    """PPO clip epsilon of the ratio."""
    beta: float = 0.0
    """Weight of the KL to the reference policy (0 skips the reference forward)."""
    adv_clip: float = 5.0
    """Advantages are clipped to +-adv_clip."""
    global_std: bool = False
    """Normalise advantages by the batch's reward std instead of each group's."""
    minibatches: int = 1
    """Optimizer steps per rollout batch (the trained transitions are split)."""
    inner_epochs: int = 1
    """Passes over the rollout batch."""
    micro_batch: int = 32
    """Transitions per forward/backward (gradient accumulation inside a minibatch)."""
    ema_decay: float = 0.0
    """EMA of the trainable weights for evaluation; 0 turns it off."""

    def validate(self) -> None:
        if self.lr <= 0 or self.clip_range <= 0:
            raise ConfigError("lr and clip_range: must be positive")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay: must lie in [0, 1), got {self.ema_decay}")
        if self.minibatches < 1 or self.inner_epochs < 1 or self.micro_batch < 1:
            raise ConfigError("minibatches, inner_epochs, micro_batch: must be positive")


@dataclass
class EngineConfig:
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision (the log-prob is always float32)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: auto picks nccl on GPUs, gloo on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available."""
    threads: int | None = None
    """torch intra-op threads on CPU (null: torch's default). Part of the config because CPU
    kernels reduce in a thread-dependent order: a fixed count makes reruns bit-identical."""

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"engine.threads: must be at least 1 (or null), got {self.threads}")


@dataclass
class BudgetConfig:
    steps: int | None = 20
    """Stop after this many iterations (null: no limit)."""
    device_hours: float | None = None
    """Stop once this many device-hours (wall time x devices) are spent."""
    flops: float | None = None
    """Stop once this many training FLOPs (rollout + update) are spent."""

    def validate(self) -> None:
        if self.steps is None and self.device_hours is None and self.flops is None:
            raise ConfigError("steps: set at least one budget (steps, device_hours or flops)")
        for name in ("steps", "device_hours", "flops"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{name}: must be positive, got {v}")


@dataclass
class LoggingConfig:
    backends: list[str] = field(default_factory=lambda: ["jsonl"])
    """Where metric rows go: jsonl (metrics.jsonl, always), tensorboard, wandb (see grpo_zoo/tracking.py)."""
    project: str = "grpo-zoo"
    """wandb project (runs are named after their directory, grouped by experiment)."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """wandb: offline writes RUN/wandb/ with no network (`wandb sync` uploads it); online streams."""

    def validate(self) -> None:
        from grpo_zoo.tracking import BACKENDS, missing_package

        for name in self.backends:
            if name not in BACKENDS:
                raise ConfigError(f"backends: unknown backend {name!r} (known: {', '.join(BACKENDS)})")
            if missing_package(name):
                raise ConfigError(f"backends: {name} needs its package: pip install {missing_package(name)}")


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    """The run directory (config, metrics, checkpoints, eval videos)."""
    seed: int = 0
    """Seed of everything random in the run."""
    algorithm: AlgorithmConfig = field(default_factory=lambda: AlgorithmConfig.resolve_type({})())
    """The algorithm and its own fields (algorithm.name picks it)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Schedule, noise and guidance."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The training reward."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts, group size, evaluation."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and the shared loss."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """When to stop."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Experiment tracking: metrics.jsonl, plus TensorBoard and W&B mirrors."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many iterations (and at the end)."""
    save_eval_videos: bool = True
    """Write the last evaluation's videos (grid.png) into the run directory."""

    def validate(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every: must be at least 1, got {self.checkpoint_every}")
