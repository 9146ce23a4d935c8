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

from grpo_zoo.config import apply_overrides, build, deep_merge, load_config_file, load_yaml, to_dict
from grpo_zoo.errors import ConfigError
from grpo_zoo.run_config import RunConfig

KNOWN_KEYS = {"name", "base", "config", "seeds", "variants", "grid", "resources", "tune", "report"}
RESOURCES = {"gpus": 0, "nodes": 1, "tasks": 1, "time_min": 1, "cpus_per_task": 1}
"""What `resources:` may say per run, each an integer at least this."""
REPORT = {"baseline": "the variant speed-ups are measured against (default: the first variant)"}
"""What `report:` may say."""


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
        """Identity of the run: a hash of its resolved config without run_dir."""
        body = {k: v for k, v in self.config.items() if k != "run_dir"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Experiment:
    name: str
    path: Path
    runs: list[RunSpec]
    resources: dict
    tune: dict
    raw: dict
    report: dict = field(default_factory=dict)
    """The `report:` section, checked: `baseline` names one of `variants` exactly."""

    @property
    def variants(self) -> list[str]:
        """The report's variants (run names without the seed), in the experiment's order."""
        return list(dict.fromkeys(r.label for r in self.runs))

    @property
    def baseline(self) -> str:
        """The variant speed-ups are measured against: the declared one, else the first."""
        return self.report.get("baseline") or self.variants[0]

    def record(self) -> dict:
        """What the sweep leaves beside the runs (runs.EXPERIMENT) for the report to read."""
        return {"experiment": str(self.path), "variants": self.variants, "baseline": self.report.get("baseline")}


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


def load_experiment(path: str | Path, runs_dir: str | Path = "runs") -> Experiment:
    """Read, expand and check an experiment file (ConfigError on any problem)."""
    path = Path(path)
    raw = load_yaml(path)
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    name = str(raw.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '_', '-', '.' (it names a folder)")
    if raw.get("base") is not None and not isinstance(raw["base"], str):
        raise ConfigError(f"{path}: base: expected the path of a run config, got {raw['base']!r}")
    base = load_config_file(path.parent / raw["base"]) if raw.get("base") else {}
    common = deep_merge(base, _overrides(raw.get("config"), f"{path}: config"))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds: expected a list of integers")
    variants = raw.get("variants") or {"default": {}}
    if not isinstance(variants, dict):
        raise ConfigError(f"{path}: variants: expected a mapping of name -> overrides")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid: expected a mapping of dotted.key -> non-empty list of values")
    keys = list(grid)
    runs = []
    for vname, vover in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(vname)):
            raise ConfigError(f"{path}: variants: name {vname!r} must be letters, digits, '_', '-', '.'")
        for combo in itertools.product(*(grid[k] for k in keys)):
            for seed in seeds:
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
    tune = raw.get("tune") or {}
    if not isinstance(tune, dict):
        raise ConfigError(f"{path}: tune: expected a mapping (see grpo_zoo/tuning/space.py)")
    exp = Experiment(name, path, runs, check_resources(raw.get("resources"), path), dict(tune), raw)
    exp.report = check_report(raw.get("report"), path, exp.variants)
    return exp


def check_resources(data: Any, path: Path) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: resources: expected a mapping of {', '.join(RESOURCES)}")
    for key, value in data.items():
        if key not in RESOURCES:
            raise ConfigError(f"{path}: resources.{key}: unknown (known: {', '.join(RESOURCES)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < RESOURCES[key]:
            raise ConfigError(f"{path}: resources.{key}: expected an integer >= {RESOURCES[key]}, got {value!r}")
    return dict(data)


def check_report(data: Any, path: Path, variants: list[str]) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: report: expected a mapping of {', '.join(REPORT)}")
    for key in data:
        if key not in REPORT:
            raise ConfigError(f"{path}: report.{key}: unknown (known: {', '.join(REPORT)})")
    baseline = data.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or baseline not in variants):
        raise ConfigError(f"{path}: report.baseline: no variant {baseline!r} (variants: {', '.join(variants)})")
    return dict(data)


def check_runs(exp: Experiment) -> None:
    """Run every trainer check (algorithm vs schedule, reward, prompts, model path) per run."""
    from grpo_zoo.preflight import check

    for run in exp.runs:
        try:
            check(build(RunConfig, run.config))
        except ConfigError as err:
            raise ConfigError(f"{exp.path}: run {run.name}: {err}") from None
