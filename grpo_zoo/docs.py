"""Documentation generated from the code, so that it cannot go stale.

    python -m grpo_zoo.docs            # print the algorithm table
    python -m grpo_zoo.docs --write    # rewrite it in README.md (between the markers)

The table lists every registered algorithm: its name, paper, reference repository, what
its plan and objective are (the first sentence of its module docstring; the objective's
name), and its own config fields. tests/test_docs.py fails when README.md differs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

START, END = "<!-- algorithms:start (python -m grpo_zoo.docs --write) -->", "<!-- algorithms:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    head = text.split(". ")[0].rstrip(".")
    return head.replace("|", "\\|")


def algorithm_table() -> str:
    from grpo_zoo.core import algorithm
    from grpo_zoo.core.algorithm import AlgorithmConfig

    base = {f.name for f in dataclasses.fields(AlgorithmConfig)} - {"initial_noise"}
    lines = [
        "| algorithm | paper | reference | plan | objective | config fields (default) |",
        "|---|---|---|---|---|---|",
    ]
    for name in algorithm.names(plugins=False):
        cls = algorithm.get(name)
        module = sys.modules[cls.__module__]
        fields = [f for f in dataclasses.fields(cls.Config) if f.name not in base]
        cfg = cls.Config()
        shown = ", ".join(f"`{f.name}` ({getattr(cfg, f.name)!r})" for f in fields)
        ref = f"`{cls.reference}`" if cls.reference else "-"
        plan = _first_sentence(module.__doc__)
        lines.append(f"| `{name}` | {cls.paper or '-'} | {ref} | {plan} | `{cls.objective}` | {shown} |")
    return "\n".join(lines)


def readme_with_table(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {START!r} ... {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{algorithm_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        README.write_text(readme_with_table(README.read_text()))
        print(f"wrote the algorithm table to {README}")
        return 0
    if argv:
        print("usage: python -m grpo_zoo.docs [--write]", file=sys.stderr)
        return 2
    print(algorithm_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
