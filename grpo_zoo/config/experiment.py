"""Experiment files: declare an ablation once, expand it into runs.

    # python -m grpo_zoo.sweep experiments/quickstart.yaml
    name: quickstart                 # runs land in RUNS_DIR/<name>/<run>
    base: toy/base.yaml              # run config every run starts from (relative to this file)
    config:                          # overrides for every run (nested or dotted keys)
      budget: {steps: null, device_hours: 0.0167}
    seeds: [0, 1, 2]
    variants:                        # named variants, each a set of overrides
      flow_grpo: {algorithm.name: flow_grpo}
      flash_grpo: {algorithm.name: flash_grpo}
    grid:                            # optional: every combination, on top of every variant
      algorithm.rectify: [true, false]
    resources: {gpus: 1}             # per run; the cluster profile says what a node has
    tune: {...}                      # search spaces for python -m grpo_zoo.tune
    report: {baseline: flow_grpo}    # optional: speed-ups against this variant (default: the first)

Runs = variants x grid x seeds, named `<variant>[_<key>-<value>...]_seed<s>`; the report's
variants are those names without `_seed<s>`, and `report.baseline` names one of them exactly.
Each run's config is resolved and checked here, before anything is submitted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import apply_overrides, build, deep_merge, load_config_file, load_yaml, num, to_dict
from grpo_zoo.errors import ConfigError, readable_file
from grpo_zoo.runs import run_identity


@dataclass
class Resources:
    """What one run needs (`resources:`); the cluster profile (cluster.py) says what a node has."""

    gpus: int | None = num(None, ge=0)
    """GPUs per run, one task each; null: one on a profile with gpus_per_node, else none."""
    nodes: int | None = num(None, ge=1)
    """Nodes a run spans; null: as few as the profile's nodes hold (one for a CPU run)."""
    tasks: int | None = num(None, ge=1)
    """Processes of a CPU run (gpus: 0); null: one."""
    time_min: int | None = num(None, ge=1)
    """Time limit of a run's job in minutes; null: the profile's (else a day)."""
    cpus_per_task: int | None = num(None, ge=1)
    """CPUs per task; null: the profile's (else one)."""


@dataclass
class ReportSection:
    """What the experiment tells its report (`report:`)."""

    baseline: str | None = None
    """The variant speed-ups are measured against, named exactly; null: the first variant."""
    target: float | None = num(None, ge=-1e6, le=1e6)
    """The common target eval reward of the efficiency and leaderboard tables, declared before the
    runs; null: the report's rule (halfway from the base to the best variant, at least the base plus
    the design's minimum detectable difference)."""
    metric: str | None = None
    """The eval entry the report ranks by (eval/<metric>, e.g. a reward the runs do not train on);
    null: the training reward (eval/reward). Every run's reward must give it."""


@dataclass
class ExperimentFile:
    """An experiment file as written (the module docstring shows one); `load_experiment` expands it."""

    name: str | None = None
    """Folder of its runs under RUNS_DIR; null: the file's name without .yaml."""
    base: str | None = None
    """Run config every run starts from, relative to this file; null: the defaults."""
    config: dict | None = None
    """Overrides for every run (nested or dotted keys)."""
    seeds: list[int] = num(default_factory=lambda: [0], ge=0)
    """Seeds every variant runs with."""
    variants: dict | None = None
    """Named variants, each a mapping of overrides; null: one variant, `default`."""
    grid: dict | None = None
    """dotted.key -> non-empty list of values: every combination, on top of every variant."""
    resources: Resources = field(default_factory=Resources)
    """What one run needs (per run)."""
    tune: dict | None = None
    """Search spaces for python -m grpo_zoo.tune (checked by grpo_zoo/launch/tuning/space.py)."""
    report: ReportSection = field(default_factory=ReportSection)
    """What the report is told."""

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: expected a non-empty list of integers")
        if not all(isinstance(v, list) and v for v in (self.grid or {}).values()):
            raise ConfigError("grid: expected a mapping of dotted.key -> non-empty list of values")
        for vname in self.variants or {}:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(vname)):
                raise ConfigError(f"variants: name {vname!r} must be letters, digits, '_', '-', '.'")


@dataclass
class RunSpec:
    name: str
    """Directory name of the run inside the experiment's folder."""
    variant: str
    seed: int
    config: dict
    """The resolved run config (every field), run_dir included."""
    overrides: dict = field(default_factory=dict)
    """What this run sets on top of the experiment's base and config."""

    @property
    def label(self) -> str:
        """The name every seed of this run shares (variant and grid values): a variant of the report."""
        return self.name.removesuffix(f"_seed{self.seed}")

    @property
    def key(self) -> str:
        """Identity of the run: a hash of its resolved config without runs.ADDRESS (budget included)."""
        body = run_identity(self.config)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Experiment:
    name: str
    path: Path
    runs: list[RunSpec]
    resources: Resources
    tune: dict
    raw: dict
    report: ReportSection = field(default_factory=ReportSection)
    """The `report:` section, checked: `baseline` names one of `variants` exactly."""

    @property
    def variants(self) -> list[str]:
        """The report's variants (run names without the seed), in the experiment's order."""
        return list(dict.fromkeys(r.label for r in self.runs))

    @property
    def baseline(self) -> str:
        """The variant speed-ups are measured against: the declared one, else the first."""
        return self.report.baseline or self.variants[0]

    def record(self) -> dict:
        """What the sweep leaves beside the runs (runs.EXPERIMENT) for the report to read."""
        return {
            "experiment": str(self.path),
            "variants": self.variants,
            "baseline": self.report.baseline,
            "target": self.report.target,
            "metric": self.report.metric,
        }


def _overrides(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config overrides")
    nested: dict = {}
    return apply_overrides(nested, {str(k): v for k, v in _flatten(data).items()})


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("options",):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.]+", "", text.replace(",", "."))


def _refuse_twins(path: Path, runs: list[RunSpec]) -> None:
    """Two runs of one seed whose configs are equal but for their folder are one run under two
    names (variants that override nothing, or the same thing): refused, naming both."""
    seen: dict[str, str] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k != "run_dir"}, sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(
                f"{path}: runs {seen[key]} and {run.name} have the same config (their variants override nothing "
                "that differs); remove one or make them differ"
            )
        seen[key] = run.name


def load_experiment(path: str | Path, runs_dir: str | Path = "runs") -> Experiment:
    """Read, expand and check an experiment file (ConfigError on any problem)."""
    path = Path(path)
    raw = load_yaml(path)
    try:
        spec = build(ExperimentFile, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if spec.name is not None and not spec.name.strip():
        raise ConfigError(f"{path}: name: an empty name (give the folder name of its runs, or leave name out)")
    name = spec.name or path.stem
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '_', '-', '.' (it names a folder)")
    base = load_config_file(readable_file(path.parent / spec.base, f"{path}: base")) if spec.base else {}
    common = deep_merge(base, _overrides(spec.config, f"{path}: config"))
    variants = spec.variants or {"default": {}}
    grid = spec.grid or {}
    keys = list(grid)
    runs = []
    for vname, vover in variants.items():
        for combo in itertools.product(*(grid[k] for k in keys)):
            for seed in spec.seeds:
                parts = [str(vname)] + [f"{k.split('.')[-1]}-{_slug(v)}" for k, v in zip(keys, combo)] + [f"seed{seed}"]
                run_name = "_".join(parts)
                over = deep_merge(
                    _overrides(vover, f"{path}: variants.{vname}"), apply_overrides({}, dict(zip(keys, combo)))
                )
                over = deep_merge(over, {"seed": seed, "run_dir": str(Path(runs_dir) / name / run_name)})
                data = deep_merge(common, over)
                try:
                    cfg = build(RunConfig, data)
                except ConfigError as err:
                    raise ConfigError(f"{path}: run {run_name}: {err}") from None
                runs.append(RunSpec(run_name, str(vname), seed, to_dict(cfg), over))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two runs share a name; make variant names and grid values distinct")
    _refuse_twins(path, runs)
    exp = Experiment(name, path, runs, spec.resources, dict(spec.tune or {}), raw, spec.report)
    baseline = spec.report.baseline
    if baseline is not None and baseline not in exp.variants:
        raise ConfigError(f"{path}: report.baseline: no variant {baseline!r} (variants: {', '.join(exp.variants)})")
    if spec.report.metric is not None:
        check_metric(path, spec.report.metric, runs)
    return exp


def check_metric(path, metric: str, runs) -> None:
    """report.metric is an entry every run's reward gives (checked before any run starts)."""
    from grpo_zoo.analysis.load import reward_info
    from grpo_zoo.analysis.stats import reward_entries

    for run in runs:
        info = reward_info((run.config.get("reward") or {}).get("name"))
        known = reward_entries(info["reward"], info.get("reward_weights"))
        if known is not None and metric not in known:
            raise ConfigError(
                f"{path}: report.metric: run {run.name}'s reward gives no entry {metric!r} (it gives {', '.join(known)})"
            )


def check_runs(exp: Experiment) -> None:
    """Run every trainer check (algorithm vs schedule, reward, prompts, model path) per run."""
    from grpo_zoo.training.preflight import check

    for run in exp.runs:
        try:
            check(build(RunConfig, run.config))
        except ConfigError as err:
            raise ConfigError(f"{exp.path}: run {run.name}: {err}") from None
