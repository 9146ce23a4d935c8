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
    return config_difference(strip(stored), strip(config))


def budget_shrinks(stored: dict, config: dict) -> str | None:
    """`budget.<field>: old -> new` for the first limit that `config` lowers (None: none does;
    a limit removed, null, is no lower)."""
    old, new = (stored or {}).get("budget") or {}, (config or {}).get("budget") or {}
    for key, was in old.items():
        now = new.get(key)
        if isinstance(was, (int, float)) and isinstance(now, (int, float)) and now < was:
            return f"budget.{key}: {was} -> {now}"
    return None
