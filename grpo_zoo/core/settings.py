"""The settings a method's reference fixes, declared by its algorithm and applied as defaults.

An algorithm lists them in `settings`: dotted config keys (`optim.clip_range`,
`sampling.noise`, `algorithm.timestep_fraction`, ...) to a `Setting`, the reference's value
with its file and line in the algorithm's `repository`, and the toolkit's default where it
must differ (the toy's T, G or model) with why. A run config takes them under its own
values: schema defaults < the algorithm's settings < the experiment's files < the command
line, and the run's config.yaml records what they resolved to. `algorithm.*` settings
document the algorithm config's own defaults (a test keeps the two equal). The README's
settings tables are generated from these (`python -m grpo_zoo.docs`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

_SAME = object()


@dataclass(frozen=True)
class Setting:
    value: Any
    """The reference's value (what it hard-codes or its launch script passes)."""
    source: str
    """Where: `file:line` in the algorithm's reference repository (`Algorithm.repository`)."""
    toolkit: Any = _SAME
    """The toolkit's default where it differs from the reference's value."""
    why: str = ""
    """Why it differs (or how the toolkit's value follows the reference's rule)."""

    @property
    def default(self) -> Any:
        return self.value if self.toolkit is _SAME else self.toolkit

    @property
    def differs(self) -> bool:
        return self.toolkit is not _SAME


COUPLED = {"sampling.noise_level": "sampling.noise"}
"""A default for the key applies only where the config leaves the other key to the algorithm
too (or sets it to the algorithm's value): a noise level belongs to its noise kind."""


def _get(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _SAME
        node = node[part]
    return node


def apply(settings: dict[str, Setting], data: dict) -> dict:
    """`data` (a nested run config) with the settings' defaults under it: a key the data sets
    keeps its value. Sections other than `algorithm` only (its defaults are its config's)."""
    out = copy.deepcopy(data)
    for key, setting in settings.items():
        section, _, field = key.partition(".")
        if section == "algorithm" or _get(data, key) is not _SAME:
            continue
        anchor = COUPLED.get(key)
        if anchor is not None and anchor in settings and _get(data, anchor) not in (_SAME, settings[anchor].default):
            continue
        node = out.setdefault(section, {})
        if not isinstance(node, dict):
            continue  # a malformed section: the schema says so in one line
        node[field] = copy.deepcopy(setting.default)
    return out


def rows(settings: dict[str, Setting]) -> list[dict[str, str]]:
    """The settings table: setting, reference value, source, toolkit default, why it differs."""
    return [
        {
            "setting": f"`{key}`",
            "reference": _show(s.value),
            "source": s.source,
            "toolkit": _show(s.default) if s.differs else "same",
            "why": s.why,
        }
        for key, s in settings.items()
    ]


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
