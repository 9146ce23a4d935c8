"""One clear line and exit status 2 for bad input, before any compute."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path


class NonFiniteError(RuntimeError):
    """A reward or loss was NaN or inf: reported, never trained on."""


class ConfigError(ValueError):
    """Bad input: an unknown name, an impossible value, a missing file.

    The message is one line that names the field and says how to fix it.
    """


def cli(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Wrap a CLI entry point: a ConfigError prints one line and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ConfigError as err:
            text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line, always
            print(f"error: {text}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception as err:  # a full disk, however a library below words it: one line too
            where = full_disk(err)
            if where is None:
                raise
            print(f"error: {where}: no space left on its file system; free some space and rerun", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


FULL_DISK = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def full_disk(err: BaseException) -> str | None:
    """Where a failed write ran out of space (its file, or "a write"), if that is why it failed."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (28, 122):  # ENOSPC, EDQUOT
            return str(seen.filename or "a write")
        if any(text in str(seen) for text in FULL_DISK):
            return "a write"
        seen = seen.__cause__ or seen.__context__
    return None


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2 (through `cli`)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message)


# -- declared ranges -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a number: finite, and within [low, high] (open ends where said)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        lo = _show(self.low) if self.low is not None else ""
        hi = _show(self.high) if self.high is not None else ""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {lo}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {hi}"
        return "finite"

    def problem(self, value: float) -> str | None:
        """None when `value` is valid, else what is wrong with it (for one error line)."""
        if isinstance(value, float) and not math.isfinite(value):
            where = "" if self.describe() == "finite" else f" {self.describe()}"
            return f"must be a finite number{where}, got {value}"
        lo, hi = self.low, self.high
        if (lo is not None and (value <= lo if self.low_open else value < lo)) or (
            hi is not None and (value >= hi if self.high_open else value > hi)
        ):
            return f"must be {self.describe()}, got {_show(value)}"
        return None


def _show(x: float | None) -> str:
    """A bound or a value in an error line: an integer whole (4294967295), a float short (1e-05)."""
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) < 10**12:
        return str(x)
    return f"{x:g}"


FINITE = Range()
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
UNIT = Range(0, 1)
"""[0, 1]: a probability or a fraction."""
SHIFT = Range(1e-3, 1e3)
"""A timestep shift: beyond these the shifted sigmas round to all 0 or all 1 (or overflow)."""
NOISE_LEVEL = Range(0, 100)
"""A noise level (a, or wan_linear's scale): beyond it the SDE's variance overflows."""
SEED = Range(0, 2**32 - 1)
"""A random seed: what numpy and torch generators accept."""
STEPS = Range(1, 1000)
"""Sampling steps: at most the scheduler's 1000 training timesteps."""


def number(kind: type = float, valid: Range = FINITE) -> Callable[[str], float]:
    """An argparse `type=` that parses an int or a finite float and checks its declared range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is int and not -(2**63) <= value < 2**63:  # what torch, numpy and C below can hold
            raise argparse.ArgumentTypeError(f"{text[:20]}... does not fit a 64-bit integer")
        problem = valid.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


# -- path arguments --------------------------------------------------------------------------


def given_path(path: str | os.PathLike, name: str, what: str) -> Path:
    """`path` as a Path; an empty one (which would silently mean the current directory) or a
    symlink that leads nowhere (broken, or a loop) is a ConfigError naming `name`."""
    if not str(path).strip():
        raise ConfigError(f"{name}: an empty path (give a {what} path)")
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise ConfigError(f"{name}: {str(p)!r} is a broken symlink or a symlink loop")
    return p


def writable_dir(path: str | os.PathLike, name: str) -> Path:
    """A directory we may write into: an existing writable one, or one that can be created
    (its nearest existing ancestor is a writable directory). ConfigError otherwise."""
    p = given_path(path, name, "directory")
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise ConfigError(f"{name}: {str(p)!r} is a file, not a directory (give a directory path)")
        if not _can_write_in(p):
            raise ConfigError(f"{name}: directory {str(p)!r} is not writable (give a directory you can write to)")
        return p
    ancestor = p.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{name}: cannot create {str(p)!r}: {str(ancestor)!r} is a file, not a directory")
    if not _can_write_in(ancestor):
        raise ConfigError(f"{name}: cannot create {str(p)!r}: {str(ancestor)!r} is not writable")
    return p


def _can_write_in(directory: Path) -> bool:
    """Whether a file can be created in `directory` (tried: permission bits do not bind root)."""
    import tempfile

    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".grpo-zoo-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def writable_file(path: str | os.PathLike, name: str) -> Path:
    """A file we may (over)write: not a directory, in a directory that exists or can be created."""
    p = given_path(path, name, "file")
    if p.is_dir():
        raise ConfigError(f"{name}: {str(p)!r} is a directory, not a file (give a file path)")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{name}: file {str(p)!r} is not writable")
    writable_dir(p.absolute().parent, name)
    return p


def readable_file(path: str | os.PathLike, name: str) -> Path:
    """An existing file we may read."""
    p = given_path(path, name, "file")
    if not p.exists():
        raise ConfigError(f"{name}: no file {str(p)!r}")
    if not p.is_file():
        raise ConfigError(f"{name}: {str(p)!r} is not a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{name}: file {str(p)!r} is not readable")
    return p


def readable_dir(path: str | os.PathLike, name: str) -> Path:
    """An existing directory we may read."""
    p = given_path(path, name, "directory")
    if not p.exists():
        raise ConfigError(f"{name}: no directory {str(p)!r}")
    if not p.is_dir():
        raise ConfigError(f"{name}: {str(p)!r} is a file, not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ConfigError(f"{name}: directory {str(p)!r} is not readable")
    return p
