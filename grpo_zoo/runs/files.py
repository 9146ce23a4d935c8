"""Writes that a crash or a kill cannot leave half done, and one-line messages about a run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpo_zoo.runs.signals import critical


def say(text: str) -> None:
    """One line about the run directory, to stderr."""
    print(text, file=sys.stderr, flush=True)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with critical():
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


# -- metrics files --------------------------------------------------------------------------
