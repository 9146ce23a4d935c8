"""The package's shape: no import circle anywhere in grpo_zoo (function-local imports
included), the trainer file stays readable, and a method's objective lives in its own file."""

import ast
import sys
from pathlib import Path

from .helpers import ROOT


def internal_imports() -> dict[str, set[str]]:
    """module -> the grpo_zoo modules it imports, at any depth of its code."""
    mods = {}
    for base, pkg in ((ROOT / "grpo_zoo", "grpo_zoo"), (ROOT / "algorithms", "grpo_zoo.algorithms")):
        for f in base.rglob("*.py"):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.startswith("grpo_zoo") else ""
                if target and target != mod and not mod.startswith(target + "."):  # a package's own __init__ aside
                    edges[mod].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(10000)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_the_package():
    edges = internal_imports()
    assert len(edges) > 50 and edges["grpo_zoo.training.trainer"]  # the graph is really read
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_shared_objective_module_holds_only_what_every_method_shares():
    from grpo_zoo.core import algorithm, objective

    shared = Path(objective.__file__).read_text()
    assert "getattr(self.alg_cfg" not in shared
    for name in algorithm.names(plugins=False):
        cls = algorithm.get(name)
        obj = objective.get(cls.objective)
        if obj.__module__ != "grpo_zoo.core.objective":  # a method's own loss lives in its own file
            assert obj.__module__ == cls.__module__, (name, obj.__module__)


def test_the_trainer_file_stays_readable():
    assert len((ROOT / "grpo_zoo/training/trainer.py").read_text().splitlines()) <= 250
