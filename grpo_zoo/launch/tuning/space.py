"""The `tune:` section of an experiment file: search spaces and how a study runs.

    tune:
      variants: [flash_grpo, flow_grpo]   # which variants get a study (default: all)
      n_trials: 16                        # per study (python -m grpo_zoo.tune --n-trials)
      budget: {flops: 4.0e11}             # every trial's fixed compute (default: the runs' budget)
      rungs: 4                            # evaluations at 1/4, 2/4, 3/4 of the budget feed the pruner
      pruner: {name: median, n_startup_trials: 2}   # median | successive_halving | none
      sampler: {name: tpe, seed: 0}       # tpe | random
      collapse_drop: 0.3                  # prune a trial whose eval reward falls 30% below its best
      seed: 0                             # training seed of every trial (default: the first seed)
      space:                              # every study: dotted config key -> distribution
        optim.lr: {low: 1.0e-5, high: 1.0e-3, log: true}
        optim.clip_range: [0.05, 0.1, 0.2]          # a list: categorical
        data.group_size: {low: 4, high: 16, step: 4, type: int}
        optim.clip_range: {times: [0.25, 4], log: true}   # relative: the variant's own value x 1/4 .. 4
      spaces:                             # per variant, on top of `space`
        flash_grpo: {algorithm.k_range: [[0, 5], [1, 8]]}
      enqueue: [{optim.lr: 3.0e-4, optim.clip_range: reference}]   # trials every study runs first

A relative space (`times`) is one rule for every study: the range around each variant's own
resolved value of the key (its algorithm's reference setting, or what the experiment sets), so
methods with different trust regions are searched alike; `reference` in an enqueued trial is that
value.

The objective is the final eval reward (maximised) at the budget. Each parameter is one
dotted override on the run config, so a trial is an ordinary run with a few fields set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from grpo_zoo.config.run import RunConfig
from grpo_zoo.config.schema import apply_overrides, build, deep_merge
from grpo_zoo.errors import UNIT, ConfigError

TUNE_KEYS = {
    "variants",
    "n_trials",
    "budget",
    "rungs",
    "pruner",
    "sampler",
    "collapse_drop",
    "seed",
    "space",
    "spaces",
    "enqueue",
}
PRUNERS = ("median", "successive_halving", "none")
SAMPLERS = ("tpe", "random")


@dataclass
class Param:
    key: str
    kind: str
    """float | int | categorical"""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    times: tuple[float, float] | None = None
    """A relative range: low and high are these factors times the variant's own value (`resolve`)."""

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return decode(trial.suggest_categorical(self.key, [encode(c) for c in self.choices]))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def example(self) -> Any:
        return self.choices[0] if self.kind == "categorical" else (int(self.low) if self.kind == "int" else self.low)


def encode(value: Any) -> Any:
    """Optuna stores None/bool/int/float/str choices; lists and mappings travel as JSON."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 2**63 if isinstance(value, int) else math.isfinite(value)


def _integer(raw: dict, key: str, default: int, low: int, high: int, where: str) -> int:
    """raw[key], an integer in [low, high] (true/false and fractions refused)."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}.{key}: an integer in [{low}, {high}], got {str(value)[:40]}")
    return value


def parse_param(key: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}.{key}: an empty list of choices")
        return Param(key, "categorical", choices=list(spec))
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}.{key}: expected a list of choices or {{low, high[, log, step, type]}}")
    if "choices" in spec:
        return parse_param(key, spec["choices"], where)
    if "times" in spec:
        return _relative(key, spec, where)
    unknown = set(spec) - {"low", "high", "log", "step", "type"}
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}.{key}: expected {{low, high[, log, step, type]}}, got {sorted(spec)}")
    kind = spec.get("type") or ("int" if isinstance(spec["low"], int) and isinstance(spec["high"], int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}.{key}.type: int or float, got {kind!r}")
    bounds = (spec["low"], spec["high"], spec.get("step") or 1)
    if not all(_finite(b) for b in bounds):
        raise ConfigError(f"{where}.{key}: low, high and step must be finite numbers within 64 bits, got {bounds}")
    if spec.get("step") is not None and spec["step"] <= 0:
        raise ConfigError(f"{where}.{key}.step: must be > 0, got {spec['step']}")
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        raise ConfigError(f"{where}.{key}: an int space needs whole low, high and step, got {bounds}")
    if not isinstance(spec.get("log", False), bool):
        raise ConfigError(f"{where}.{key}.log: true or false, got {spec['log']!r}")
    low, high = float(spec["low"]), float(spec["high"])
    if not low < high or (spec.get("log") and low <= 0):
        raise ConfigError(f"{where}.{key}: need low < high (and low > 0 with log), got {low}, {high}")
    return Param(key, kind, low, high, bool(spec.get("log", False)), spec.get("step"))


def _relative(key: str, spec: dict, where: str) -> Param:
    """{times: [a, b], log: bool}: the range a x .. b x the variant's own value (set by `resolve`)."""
    unknown = set(spec) - {"times", "log"}
    if unknown:
        raise ConfigError(
            f"{where}.{key}: a relative space is {{times: [low factor, high factor], log}}, got {sorted(spec)}"
        )
    times = spec["times"]
    if (
        not isinstance(times, list)
        or len(times) != 2
        or not all(_finite(t) for t in times)
        or not 0 < times[0] < times[1]
    ):
        raise ConfigError(f"{where}.{key}.times: two finite factors 0 < low < high, got {str(times)[:60]}")
    if not isinstance(spec.get("log", False), bool):
        raise ConfigError(f"{where}.{key}.log: true or false, got {spec['log']!r}")
    return Param(key, "float", log=bool(spec.get("log", False)), times=(float(times[0]), float(times[1])))


@dataclass
class TuneSpec:
    variants: list[str]
    n_trials: int
    budget: dict
    rungs: int
    pruner: dict
    sampler: dict
    collapse_drop: float
    seed: int
    spaces: dict[str, dict[str, Param]]
    enqueue: list[dict]
    references: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per variant: its own value of each key a relative space searches around (`resolve`)."""

    def enqueued(self, variant: str) -> list[dict]:
        """The trials `variant`'s study runs first, `reference` read as the variant's own value."""
        refs = self.references.get(variant, {})
        return [{k: refs.get(k, v) if v == REFERENCE else v for k, v in entry.items()} for entry in self.enqueue]


REFERENCE = "reference"
"""In an enqueued trial: the variant's own value of a relatively searched key."""


def resolve(spec: TuneSpec, bases: dict[str, dict], where: str) -> None:
    """Fix every relative space to its variant: low and high are its factors times the variant's
    resolved value of the key (its algorithm's reference setting unless the experiment sets it),
    which must be a finite number > 0; `reference` may only be enqueued for a relative key."""
    for v, space in spec.spaces.items():
        cfg = None
        for key, param in space.items():
            if param.times is None:
                continue
            if cfg is None:
                cfg = build(RunConfig, trial_config(bases[v], spec, {}, "/tmp/grpo-zoo-tune-check"))
            node: Any = cfg
            for part in key.split("."):
                node = getattr(node, part, None)
            if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node) or node <= 0:
                raise ConfigError(
                    f"{where}.space.{key}: a relative space needs the variant's own value to be a number > 0; "
                    f"{v} has {node!r} (give it an absolute space under spaces.{v})"
                )
            param.low, param.high = param.times[0] * node, param.times[1] * node
            spec.references.setdefault(v, {})[key] = float(node)
        for entry in spec.enqueue:
            for key, value in entry.items():
                if value == REFERENCE and key not in spec.references.get(v, {}):
                    raise ConfigError(f"{where}.enqueue: {key}: reference is only for a key searched with times")


def parse_tune(raw: dict, variants: list[str], seeds: list[int], where: str) -> TuneSpec:
    """Read and check the `tune:` section (ConfigError with the field on any problem)."""
    if not raw:
        raise ConfigError(f"{where}: the experiment has no `tune:` section (see grpo_zoo/launch/tuning/space.py)")
    unknown = set(raw) - TUNE_KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(TUNE_KEYS))})")
    for name, section in (("pruner", raw.get("pruner")), ("sampler", raw.get("sampler"))):
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{where}.{name}: a mapping with name and options, got {section!r}")
    for name, kind in (("variants", list), ("space", dict), ("spaces", dict)):
        if raw.get(name) is not None and not isinstance(raw[name], kind):
            raise ConfigError(f"{where}.{name}: expected a {'list' if kind is list else 'mapping'}, got {raw[name]!r}")
    if raw.get("variants") == []:
        raise ConfigError(f"{where}.variants: an empty list (leave it out to tune every variant)")
    chosen = list(raw.get("variants") or variants)
    for v in chosen:
        if v not in variants:
            raise ConfigError(f"{where}.variants: no variant {v!r} in the experiment (have: {', '.join(variants)})")
    spaces_raw = raw.get("spaces") or {}
    for v in spaces_raw:
        if v not in variants:
            raise ConfigError(f"{where}.spaces: no variant {v!r} in the experiment (have: {', '.join(variants)})")
    common = raw.get("space") or {}
    spaces = {}
    for v in chosen:
        own = spaces_raw.get(v) or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{where}.spaces.{v}: expected a mapping of dotted.key -> space, got {own!r}")
        merged = {**common, **own}
        if not merged:
            raise ConfigError(f"{where}.space: nothing to tune for {v!r}")
        spaces[v] = {k: parse_param(k, s, f"{where}.space") for k, s in merged.items()}
    pruner = dict(raw.get("pruner") or {"name": "median"})
    if pruner.get("name") not in PRUNERS:
        raise ConfigError(f"{where}.pruner.name: one of {', '.join(PRUNERS)}, got {pruner.get('name')!r}")
    sampler = dict(raw.get("sampler") or {"name": "tpe", "seed": 0})
    if sampler.get("name") not in SAMPLERS:
        raise ConfigError(f"{where}.sampler.name: one of {', '.join(SAMPLERS)}, got {sampler.get('name')!r}")
    if "seed" in sampler:
        _integer(sampler, "seed", 0, 0, 2**32 - 1, f"{where}.sampler")
    rungs = _integer(raw, "rungs", 4, 1, 64, where)
    n_trials = _integer(raw, "n_trials", 16, 1, 100_000, where)
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"steps", "device_hours", "flops"}:
        raise ConfigError(f"{where}.budget: a mapping with steps, device_hours or flops")
    try:
        budget = {k: (None if v is None else float(v) if k != "steps" else int(v)) for k, v in budget.items()}
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}.budget: numbers expected, got {budget}") from None
    drop = raw.get("collapse_drop", 0.3)
    if isinstance(drop, bool) or not isinstance(drop, int | float) or UNIT.problem(drop):
        raise ConfigError(f"{where}.collapse_drop: a fraction in [0, 1], got {drop!r}")
    seed = _integer(raw, "seed", seeds[0], 0, 2**32 - 1, where)
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise ConfigError(f"{where}.enqueue: a list of {{dotted.key: value}} mappings")
    return TuneSpec(
        variants=chosen,
        n_trials=n_trials,
        budget=budget,
        rungs=rungs,
        pruner=pruner,
        sampler=sampler,
        collapse_drop=drop,
        seed=seed,
        spaces=spaces,
        enqueue=enqueue,
    )


def trial_config(base: dict, spec: TuneSpec, params: dict[str, Any], run_dir: str) -> dict:
    """A trial's complete run config: the variant's run, the tuning budget, the parameters."""
    data = deep_merge(base, {"seed": spec.seed, "run_dir": run_dir})
    if spec.budget:
        data = deep_merge(data, {"budget": {"steps": None, "device_hours": None, "flops": None, **spec.budget}})
    data = deep_merge(data, {"data": {"eval_every": 0}})  # the rungs decide when to evaluate
    data = apply_overrides(data, dict(params))
    from grpo_zoo.config.schema import to_dict

    return to_dict(build(RunConfig, data))


def check_spaces(spec: TuneSpec, bases: dict[str, dict], where: str) -> None:
    """Before the first trial: every value of every search space (each choice; low and high of a
    range), and every enqueued trial, gives a run config that passes the sweep's checks (the
    trainer's `check`: algorithm against schedule, reward, prompts, model path)."""
    from grpo_zoo.training.preflight import check

    def checked(v: str, params: dict) -> None:
        check(build(RunConfig, trial_config(bases[v], spec, params, "/tmp/grpo-zoo-tune-check")))

    for v, space in spec.spaces.items():
        try:
            checked(v, {})
        except ConfigError as err:
            raise ConfigError(f"{where} ({v}): {err}") from None
        for key, param in space.items():
            for value in param.choices if param.kind == "categorical" else [param.low, param.high]:
                try:
                    checked(v, {key: value if param.kind != "int" else int(value)})
                except ConfigError as err:
                    raise ConfigError(f"{where}.space.{key} = {value!r} ({v}): {err}") from None
        for entry in spec.enqueued(v):
            unknown = set(entry) - set(space)
            if unknown:
                raise ConfigError(f"{where}.enqueue: {sorted(unknown)[0]!r} is not in the search space of {v!r}")
            try:
                checked(v, dict(entry))
            except ConfigError as err:
                raise ConfigError(f"{where}.enqueue {entry} ({v}): {err}") from None
