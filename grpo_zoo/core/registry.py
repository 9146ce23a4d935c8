"""Where methods come from: the in-tree algorithms/ folder and installed plugins.

An algorithm file (and any objective it defines) registers itself when imported;
`discover()` imports every in-tree file and every entry point of the group
"grpo_zoo.algorithms" once per process. The algorithm and objective registries call it
before a lookup, so a method and its objective are found wherever they live.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import entry_points
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

ENTRY_POINT_GROUP = "grpo_zoo.algorithms"
"""Distributions outside this repository register algorithms (and objectives) under this
entry-point group (`[project.entry-points."grpo_zoo.algorithms"] my_algo = "my_package.my_algo"`):
the module (or a class in it) is imported, and its `@register` runs."""

IN_TREE = "grpo_zoo.algorithms"
"""The package name of the in-tree algorithms."""

_discovered = False


def _in_tree_package():
    """`grpo_zoo.algorithms`: in a source checkout, the algorithms/ folder beside this grpo_zoo
    package (so a worktree runs its own files); in an installed wheel, the installed package
    (pyproject's package-dir puts algorithms/ there under that name)."""
    if IN_TREE in sys.modules:
        return sys.modules[IN_TREE]
    folder = Path(__file__).resolve().parents[2] / "algorithms"
    if not (folder / "__init__.py").is_file():
        return importlib.import_module(IN_TREE)
    spec = spec_from_file_location(IN_TREE, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = module_from_spec(spec)
    sys.modules[IN_TREE] = module
    spec.loader.exec_module(module)
    return module


def discover() -> None:
    """Import every in-tree algorithm file and every entry-point plugin (once per process)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = _in_tree_package()
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{IN_TREE}.{mod.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin is named, not fatal to every other algorithm
            print(
                f"warning: algorithm plugin {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}: {err}",
                file=sys.stderr,
                flush=True,
            )


def in_tree(cls: type) -> bool:
    """The class comes from this repository (not from an installed plugin)."""
    return (
        cls.__module__ == IN_TREE
        or cls.__module__.startswith(IN_TREE + ".")
        or cls.__module__.startswith("grpo_zoo.core.")
    )
