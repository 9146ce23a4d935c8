"""Documentation generated from the code, so that it cannot go stale.

    python -m grpo_zoo.docs            # print the algorithm table and the settings tables
    python -m grpo_zoo.docs --write    # rewrite them in README.md (between the markers)

The algorithm table lists every registered algorithm: its name, paper, reference repository,
what its plan and objective are (the first sentence of its module docstring; the objective's
name), and its own config fields. The settings tables give, per algorithm, every setting its
reference fixes (`Algorithm.settings`): the reference's value, its file and line, the
toolkit's default and why it differs. tests/test_docs.py fails when README.md differs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

START, END = "<!-- algorithms:start (python -m grpo_zoo.docs --write) -->", "<!-- algorithms:end -->"
SETTINGS_START = "<!-- settings:start (python -m grpo_zoo.docs --write) -->"
SETTINGS_END = "<!-- settings:end -->"
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


def settings_tables() -> str:
    """One table per algorithm with settings: setting, reference value, source, toolkit default, why."""
    from grpo_zoo.core import algorithm
    from grpo_zoo.core.settings import rows

    out = []
    for name in algorithm.names(plugins=False):
        cls = algorithm.get(name)
        if not cls.settings:
            continue
        out += [f"**`{name}`** ({cls.repository or cls.reference})", ""]
        out += ["| setting | reference | source | toolkit default | why it differs |", "|---|---|---|---|---|"]
        for r in rows(cls.settings):
            cells = [r[k].replace("|", "\\|") for k in ("setting", "reference", "source", "toolkit", "why")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def _replace(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"README.md lacks the markers {start!r} ... {end!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def readme_with_table(text: str) -> str:
    text = _replace(text, START, END, algorithm_table())
    return _replace(text, SETTINGS_START, SETTINGS_END, settings_tables())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        README.write_text(readme_with_table(README.read_text()))
        print(f"wrote the algorithm and settings tables to {README}")
        return 0
    if argv:
        print("usage: python -m grpo_zoo.docs [--write]", file=sys.stderr)
        return 2
    print(algorithm_table())
    print()
    print(settings_tables())
    return 0


if __name__ == "__main__":
    sys.exit(main())
