"""When a directory holds the same run as a config: the one rule train, the trainer and the sweep use."""

from __future__ import annotations

from typing import Any


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_difference(old: dict, new: dict) -> str | None:
    """The first dotted key whose value differs, as `key: old -> new` (None if equal)."""
    a, b = _flat(old), _flat(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            return f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
    return None


ADDRESS = ("run_dir", "logging")
"""Config fields that say where a run lives and where it is mirrored, not what it computes."""


def run_identity(config: dict) -> dict:
    """The part of a resolved run config that makes it the run it is (every field but ADDRESS)."""
    return {k: v for k, v in (config or {}).items() if k not in ADDRESS}


def run_difference(stored: dict, config: dict) -> str | None:
    """The one "same run" rule: why `config` is not the run `stored` in a directory (None: it is).

    Used by RunDir.check_config (train, the trainer) and by the sweep's run_state. ADDRESS
    fields never count, and neither does the budget: it says where a run stops, not what it
    computes. An unfinished run resumes and stops at the new budget; a finished one given a
    larger budget continues from its last checkpoint (extended, the new budget recorded in
    its config.yaml); a smaller budget than a finished run had is refused (`budget_shrinks`):
    its rows are already past it.
    """
    strip = lambda d: {k: v for k, v in run_identity(d).items() if k != "budget"}  # noqa: E731
    old, new = read_fields(with_new_fields(strip(stored))), read_fields(strip(config))
    backend = config_difference(*({"model.backend": (c.get("model") or {}).get("backend")} for c in (old, new)))
    return backend or config_difference(old, new)  # another backend is named as such, not by its fields


def read_fields(config: dict) -> dict:
    """A config without the model fields its backend does not read (a toy run's stored wan sizes,
    written before they were left out, are not a difference)."""
    from grpo_zoo.config.run import ModelConfig

    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return config
    unused = ModelConfig(backend=model.get("backend", "toy")).unused_fields()  # the rule to_dict writes by
    return {**config, "model": {k: v for k, v in model.items() if k not in unused}}


def with_new_fields(stored: dict) -> dict:
    """A stored config with the fields added to the schema since it was written, at their
    schema defaults (a field is added with the default that keeps what runs computed before
    it): a run of an earlier version is still the same run. What the stored config holds wins."""
    from grpo_zoo.config.run import ModelConfig, RunConfig
    from grpo_zoo.config.schema import to_dict
    from grpo_zoo.core import algorithm as algorithms
    from grpo_zoo.errors import ConfigError

    defaults = run_identity(to_dict(RunConfig()))
    wan = to_dict(ModelConfig(backend="wan"))  # the wan-only fields too (read_fields drops them for toy)
    defaults["model"] = {**defaults["model"], **{k: wan[k] for k in ModelConfig.WAN_ONLY}}
    alg = stored.get("algorithm")
    try:
        name = alg.get("name") if isinstance(alg, dict) else None
        defaults["algorithm"] = to_dict(algorithms.get(str(name)).Config()) if name else {}
    except ConfigError:
        defaults["algorithm"] = {}
    a, b = _flat(defaults), _flat(stored)
    if any(isinstance(v, dict) and not v for v in b.values()):
        return stored
    out: dict = {}
    for key, value in {**{k: v for k, v in a.items() if _section_of(k, stored)}, **b}.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return stored
        node[last] = value
    return out


def _section_of(key: str, stored: dict) -> bool:
    """A default belongs in: its top-level section is in the stored config (a section the
    stored config lacks entirely is a difference, not a new field)."""
    return key.split(".", 1)[0] in stored


def budget_shrinks(stored: dict, config: dict) -> str | None:
    """`budget.<field>: old -> new` for the first limit that `config` lowers (None: none does;
    a limit removed, null, is no lower)."""
    old, new = (stored or {}).get("budget") or {}, (config or {}).get("budget") or {}
    for key, was in old.items():
        now = new.get(key)
        if isinstance(was, (int, float)) and isinstance(now, (int, float)) and now < was:
            return f"budget.{key}: {was} -> {now}"
    return None
