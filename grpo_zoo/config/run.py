"""The resolved config of one training run: every field documented, checked before compute.

`python -m grpo_zoo.train --help` prints this tree. YAML files under experiments/ set
some fields; `dotted.key=value` arguments override them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Literal

from grpo_zoo.config.schema import num, path
from grpo_zoo.core.algorithm import AlgorithmConfig
from grpo_zoo.errors import NOISE_LEVEL, SHIFT, ConfigError, readable_file


@dataclass
class ModelConfig:
    backend: Literal["toy", "wan", "wan2.2-ti2v", "wan2.2-a14b"] = "toy"
    """Policy backend: toy (the toy world's tiny Wan DiT), wan (a diffusers Wan2.1 T2V directory),
    wan2.2-ti2v (Wan2.2-TI2V-5B: its own 16x VAE, per-token timesteps) or wan2.2-a14b (Wan2.2-T2V-A14B:
    two experts switched at the boundary timestep). grpo_zoo/models/."""
    path: str = "toy-base"
    """toy: a shipped checkpoint name or a directory; the others: a local diffusers directory."""
    arch: str | None = None
    """wan: the architecture (wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-ti2v-5b, wan2.2-t2v-a14b), for
    estimates without the weights."""
    lora_rank: int = num(0, ge=0, le=4096)
    """LoRA rank through peft; 0 trains every weight (the reference is then a frozen copy)."""
    lora_alpha: float = num(32.0, gt=0)
    """LoRA alpha."""
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """Module names that get LoRA adapters (the attention projections)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (memory for compute)."""
    height: int = num(480, ge=1, le=8192)
    """wan: video height in pixels (the toy world's size is fixed)."""
    width: int = num(832, ge=1, le=8192)
    """wan: video width in pixels."""
    frames: int = num(81, ge=1, le=4097)
    """wan: number of frames."""
    max_tokens: int = num(512, ge=1)
    """wan: prompt length the text encoder pads to (WanPipeline's max_sequence_length)."""
    vae_dtype: Literal["fp32", "bf16"] = "bf16"
    """wan: dtype of the VAE decode (bf16: measured on the tiny Wan VAE, its pixel error against
    fp32 is far below the reward's seed-to-seed noise: benchmarks/vae_decode.py)."""
    vae_batch: int = num(2, ge=1, le=4096)
    """wan: videos the VAE decodes at once (its activations grow with the batch: about 4 GB per
    81-frame 480x832 video in bf16, grpo_zoo/cost/memory.py)."""
    attention_backend: Literal["native", "cudnn", "flash_3_hub"] = "native"
    """wan: attention kernel through diffusers' attention dispatch: native (torch SDPA picks it), cudnn
    (cuDNN attention; CUDA, bf16) or flash_3_hub (FlashAttention 3 from the Hub; sm90, bf16, `kernels`).
    grpo_zoo/models/accel.py; measure them with python -m benchmarks.gpu."""
    compile_blocks: bool = False
    """wan: torch.compile each transformer block (diffusers' compile_repeated_blocks; compiles at the first
    forward of each shape)."""
    experts: list[str] = field(default_factory=lambda: ["high", "low"])
    """wan2.2-a14b: the experts that train (high: the high-noise transformer, low: transformer_2); a
    transition trains the expert its sigma selects, so a step only the frozen expert serves does not train."""
    boundary: float | None = num(None, gt=0, lt=1)
    """wan2.2-a14b: the boundary ratio in (0, 1): the high-noise expert serves timesteps >= boundary x 1000
    (WanPipeline's rule); null: the directory's model_index.json (0.875 in the release)."""
    low_noise_guidance: float | None = num(None, ge=1)
    """wan2.2-a14b: the CFG scale of the low-noise expert (WanPipeline's guidance_scale_2; 3.0 against
    4.0 in the release); null: sampling.guidance."""

    WAN_ONLY: ClassVar[tuple[str, ...]] = (
        "arch", "height", "width", "frames", "max_tokens", "vae_dtype", "vae_batch", "attention_backend", "compile_blocks",
    )  # fmt: skip
    """The fields only the wan backends read (their docs start with "wan:")."""
    EXPERTS_ONLY: ClassVar[tuple[str, ...]] = ("experts", "boundary", "low_noise_guidance")
    """The fields only the two-expert backend reads (their docs start with "wan2.2-a14b:")."""
    EXPERT_NAMES: ClassVar[tuple[str, ...]] = ("high", "low")

    @property
    def is_wan(self) -> bool:
        """A diffusers Wan backend (2.1 or 2.2): the real path's loading, shapes and memory model."""
        return self.backend.startswith("wan")

    def unused_fields(self) -> tuple[str, ...]:
        """The fields its backend does not read: left out of the resolved config (config.yaml)."""
        unused = () if self.is_wan else self.WAN_ONLY
        return unused + (() if self.backend == "wan2.2-a14b" else self.EXPERTS_ONLY)

    def validate(self) -> None:
        for f in fields(self):
            if f.name in self.unused_fields():
                default = f.default if f.default is not MISSING else f.default_factory()
                if getattr(self, f.name) != default:
                    if f.name in self.EXPERTS_ONLY:
                        raise ConfigError(
                            f"model.{f.name}: a setting of the two-expert wan2.2-a14b backend, which model.backend "
                            f"{self.backend} does not read; remove it"
                        )
                    raise ConfigError(
                        f"model.{f.name}: a wan setting, which model.backend {self.backend} does not read "
                        f"(the toy world's size and kernels are fixed); remove it, or set model.backend: wan"
                    )
        for name in self.experts:
            if name not in self.EXPERT_NAMES:
                raise ConfigError(f"model.experts: unknown expert {name!r} (the experts are high and low)")
        if not self.experts or len(set(self.experts)) != len(self.experts):
            raise ConfigError(f"model.experts: name each expert that trains once (high, low), got {self.experts}")
        if self.backend == "wan2.2-ti2v" and (self.height % 32 or self.width % 32 or (self.frames - 1) % 4):
            raise ConfigError(
                f"frames, height, width: {self.frames} x {self.height} x {self.width} is not a Wan2.2-TI2V video; "
                "frames must be 4k + 1, height and width multiples of 32 (its VAE's 16x downsampling and 2x2 patches)"
            )
        if self.is_wan and (self.height % 16 or self.width % 16 or (self.frames - 1) % 4):
            raise ConfigError(
                f"frames, height, width: {self.frames} x {self.height} x {self.width} is not a Wan video; frames "
                "must be 4k + 1 (the VAE's 4x time compression), height and width multiples of 16 (its 8x "
                "downsampling and the transformer's 2x2 patches)"
            )


@dataclass
class SamplingConfig:
    schedule: Literal["wan", "flow_match"] = "wan"
    """Sigma schedule (matches diffusers: wan = UniPC flow sigmas, flow_match = FlowMatchEuler)."""
    steps: int = num(10, ge=1, le=1000)
    """T: sampling steps of a training rollout."""
    shift: float = num(3.0, ge=SHIFT.low, le=SHIFT.high)
    """Timestep shift s (Wan 480p uses 3)."""
    noise: Literal["flow_sde", "wan_linear", "cps", "constant"] = "flow_sde"
    """Noise kind of the stochastic steps."""
    noise_level: float | None = num(None, ge=NOISE_LEVEL.low, le=NOISE_LEVEL.high)
    """a of flow_sde / cps / constant, scale of wan_linear; null takes the kind's default (0.7, 1, 0.7, 0.3)."""
    guidance: float = num(1.0, ge=1)
    """Classifier-free guidance scale for rollouts and evaluation (1 = off; CFG doubles the NFE)."""
    eval_steps: int = num(20, ge=1, le=1000)
    """ODE steps of evaluation sampling (always Euler on every step: one yardstick for every run)."""
    ode_solver: Literal["euler", "dpm2"] = "euler"
    """Solver of a rollout's ODE steps: euler, or dpm2 (second-order multistep DPM-Solver++(2M), as
    MixGRPO-Flash uses; grpo_zoo/flow/multistep.py). SDE steps are the noise kind's, whatever this is."""
    ode_stride: int = num(1, ge=1)
    """After its last SDE step a rollout runs the model only every ode_stride-th step (fewer NFE: the
    ODE on a coarser grid of the same sigmas, as MixGRPO-Flash compresses the steps after its window)."""
    rollout_micro_batch: int | None = num(None, ge=1, le=65536)
    """Trajectories per transformer forward in a rollout and an evaluation (CFG doubles the rows); the
    same samples whatever it is. null: the whole batch, except a wan run on a GPU, which takes the
    largest that fits the card by the memory model (grpo_zoo/cost/memory.py)."""
    rollout_chunks: int = num(1, ge=1, le=65536)
    """A rank's trajectories roll out in this many consecutive chunks, and a remote reward (hpsv3)
    scores each chunk while the next one samples, as both references score each sampling batch on
    a thread pool. It must divide the rank's trajectories (prompts_per_step / world x group_size)
    and keep every shared prefix in one chunk. Each chunk draws from its own seed, so the number is
    part of what a run samples (1: one rollout, what every earlier run drew)."""


@dataclass
class RewardConfig:
    name: str | dict[str, float] = "toy_hps"
    """Training reward by name (toy_hps, toy_prompt, toy_motion, toy_aesthetic, toy_still, hpsv3, ...), or
    several weighted: {entry: weight >= 0, ...} (each entry a reward's name or one it declares;
    the training entry is `weighted` = sum of weight x entry, grpo_zoo/rewards/weighted.py)."""
    options: dict = field(default_factory=dict)
    """Keyword options of the reward (e.g. the hpsv3 server URL); with several, {reward name: its options}."""
    aggregate: Literal["sum", "advantages", "losses"] = "sum"
    """How several weighted rewards train: sum (one advantage of the weighted sum, Flow-GRPO's
    multi_score), advantages (each entry's group advantage, weights normalised to sum 1, summed,
    clipped once: MixGRPO's advantage_aggr) or losses (one clipped loss per entry, times its
    weight, summed: DanceGRPO). An algorithm's settings name its reference's rule."""

    @property
    def weights(self) -> dict[str, float] | None:
        """{entry: weight} of several rewards, or None for one reward by name."""
        return self.name if isinstance(self.name, dict) else None

    @property
    def entry(self) -> str:
        """The training entry among what the reward returns: its name, or `weighted`."""
        from grpo_zoo.rewards.weighted import WEIGHTED

        return WEIGHTED if isinstance(self.name, dict) else self.name

    def validate(self) -> None:
        from grpo_zoo import rewards
        from grpo_zoo.rewards.weighted import check_weights, resolve

        if not isinstance(self.name, dict):
            rewards.check_options(self.name, self.options, "reward.options")
            return
        self.name = check_weights(self.name, "reward.name")
        used = resolve(self.name)
        for key, options in self.options.items():
            if key not in used:
                raise ConfigError(
                    f"reward.options.{key}: with several rewards, options are keyed by reward name "
                    f"(this run's: {', '.join(used)})"
                )
            rewards.check_options(key, options, f"reward.options.{key}")


@dataclass
class DataConfig:
    prompts: str = "toy:train"
    """Training prompts: toy:train, toy:test, or a text file with one prompt per line."""
    eval_prompts: str = "toy:test"
    """Held-out evaluation prompts (same forms)."""
    prompts_per_step: int = num(4, ge=1, le=65536)
    """P: prompt groups per iteration (over all ranks; each rank takes P / world size)."""
    group_size: int = num(8, ge=2, le=4096)
    """G: rollouts per prompt."""
    eval_every: int = num(5, ge=0)
    """Evaluate every this many iterations (0: only at the start and the end)."""
    eval_samples: int = num(32, ge=1, le=1_000_000)
    """Evaluation videos (the eval prompts cycle), sampled by ODE at fixed seeds."""
    eval_seed: int = num(1234, ge=0, le=2**32 - 1)
    """Seed of the evaluation noise (the same for every run, so evals compare)."""

    def validate(self) -> None:
        for name in ("prompts", "eval_prompts"):
            value = getattr(self, name)
            if not value.startswith("toy:") and not Path(value).is_file():
                raise ConfigError(f"{name}: no prompt file {value!r} (give toy:train, toy:test or a text file)")
            if not value.startswith("toy:"):
                readable_file(value, name)


@dataclass
class OptimConfig:
    lr: float = num(1e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = num(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = num(1.0, gt=0)
    """Gradient clipping (global norm)."""
    clip_range: float = num(1e-3, gt=0)
    """PPO clip epsilon of the ratio."""
    beta: float = num(0.0, ge=0)
    """Weight of the KL to the reference policy (0 skips the reference forward)."""
    adv_clip: float = num(5.0, gt=0)
    """Advantages are clipped to +-adv_clip."""
    global_std: bool = False
    """Normalise advantages by the batch's reward std instead of each group's."""
    adv_std: Literal["population", "unbiased"] = "population"
    """The std advantages divide by: population (n; Flow-GRPO's np.std and its descendants) or
    unbiased (n - 1; torch's .std(), as DanceGRPO, MixGRPO, BranchGRPO and G2RPO take it)."""
    adv_eps: float = num(1e-4, gt=0, le=1)
    """Added to the std before dividing (Flow-GRPO's family 1e-4, DanceGRPO's family 1e-8)."""
    minibatches: int = num(1, ge=1)
    """Optimizer steps per rollout batch (the trained transitions are split)."""
    inner_epochs: int = num(1, ge=1)
    """Passes over the rollout batch."""
    micro_batch: int = num(32, ge=1, le=65536)
    """Transitions per forward/backward (gradient accumulation inside a minibatch)."""
    ema_decay: float = num(0.0, ge=0, lt=1)
    """EMA of the trainable weights, evaluated instead of them; 0 turns it off. Its decay at
    optimizer step s is min((1 + s) / (10 + s), ema_decay), the warm-up of the references' EMA
    (Flow-GRPO's and Flash-GRPO's flow_grpo/ema.py)."""
    ema_every: int = num(1, ge=1, le=1_000_000)
    """The EMA takes the weights at every ema_every-th optimizer step (Flash-GRPO and Flow-GRPO: 8)."""


@dataclass
class EngineConfig:
    zero_stage: int = num(0, ge=0, le=3)
    """DeepSpeed ZeRO stage 0-3."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision (the log-prob is always float32)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: auto picks nccl on GPUs, gloo on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available."""
    threads: int | None = num(None, ge=1, le=1024)
    """torch intra-op threads on CPU (null: torch's default). Part of the config because CPU
    kernels reduce in a thread-dependent order: a fixed count makes reruns bit-identical."""


@dataclass
class BudgetConfig:
    steps: int | None = num(20, ge=1)
    """Stop after this many iterations (null: no limit)."""
    device_hours: float | None = num(None, gt=0)
    """Stop once this many device-hours (wall time x devices) are spent."""
    flops: float | None = num(None, gt=0)
    """Stop once this many training FLOPs (rollout + update) are spent."""

    def validate(self) -> None:
        if self.steps is None and self.device_hours is None and self.flops is None:
            raise ConfigError("steps: set at least one budget (steps, device_hours or flops)")


@dataclass
class LoggingConfig:
    backends: list[str] = field(default_factory=lambda: ["jsonl"])
    """Where metric rows go: jsonl (metrics.jsonl, always), tensorboard, wandb (see grpo_zoo/runs/tracking.py)."""
    project: str = "grpo-zoo"
    """wandb project (runs are named after their directory, grouped by experiment)."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """wandb: offline writes RUN/wandb/ with no network (`wandb sync` uploads it); online streams."""
    progress_every: float = num(30.0, ge=0, le=86400)
    """Seconds between two progress lines on stderr (a job's log; a terminal shows a bar instead)."""

    def validate(self) -> None:
        from grpo_zoo.runs.tracking import BACKENDS, missing_package

        for name in self.backends:
            if name not in BACKENDS:
                raise ConfigError(f"backends: unknown backend {name!r} (known: {', '.join(BACKENDS)})")
            if missing_package(name):
                raise ConfigError(f"backends: {name} needs its package: pip install {missing_package(name)}")


@dataclass
class RunConfig:
    run_dir: str = path("runs/default", "dir")
    """The run directory (config, metrics, checkpoints, eval videos)."""
    seed: int = num(0, ge=0, le=2**32 - 1)
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
    checkpoint_every: int = num(10, ge=1)
    """Save a resumable checkpoint every this many iterations (and at the end)."""
    save_eval_videos: bool = True
    """Write the last evaluation's videos (grid.png) into the run directory."""

    @classmethod
    def with_defaults(cls, data: dict) -> dict:
        """`data` with its algorithm's reference settings under it (grpo_zoo/core/settings.py)."""
        from grpo_zoo.core import algorithm as algorithms
        from grpo_zoo.core.settings import apply

        alg = data.get("algorithm")
        name = alg.get("name", AlgorithmConfig.name) if isinstance(alg, dict) else AlgorithmConfig.name
        try:
            settings = algorithms.get(str(name)).settings
        except ConfigError:
            return data  # an unknown algorithm: building the config says so, with the choices
        return apply(settings, data)
