"""Writes that a crash, a kill or a full disk cannot leave half done, reads of state files
that name what is wrong with them, and one-line messages about a run.

State files (a run's config.yaml, status.json, meta.json, COMPLETED, checkpoints/latest; a
sweep's sweep.json and experiment.json) are read through `read_state`: a path that is a
directory, a FIFO or anything but a regular file is never opened (a FIFO would block), and a
file that does not parse or holds the wrong kind of value is a `DamagedState` (a ConfigError:
one line naming the file and what is wrong, exit status 2). Nothing is repaired or rewritten
on the way: the file is left as it was for its owner to look at.

A write that fails for want of space (`ENOSPC`, `EDQUOT`) is a `NoSpace` naming the path and
the free space; `atomic_write` removes its temporary file, so the old content stays whole,
and `append_line` cuts a partly written line back off, so no row is left torn."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from grpo_zoo.errors import ConfigError
from grpo_zoo.runs.signals import critical


class DamagedState(ConfigError):
    """A run's or a sweep's state file that is not what it should be (left as it was)."""


class NoSpace(ConfigError):
    """A write that failed for want of space on its file system."""


def say(text: str) -> None:
    """One line about the run directory, to stderr."""
    print(text, file=sys.stderr, flush=True)


# -- full file systems ----------------------------------------------------------------------


def free_space(path: Path) -> str:
    """The free space of the file system holding `path` (its nearest existing ancestor)."""
    try:
        free = shutil.disk_usage(_existing(Path(path))).free
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def is_no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def out_of_space(err: BaseException, path: Path) -> bool:
    """Whether a failed write (however a library words it) ran out of space: ENOSPC anywhere
    in its chain of causes, or under 1 MiB left where it was writing."""
    seen: BaseException | None = err
    while seen is not None:
        if is_no_space(seen) or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(_existing(Path(path))).free < 2**20
    except OSError:
        return False


def _existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def no_space(path: Path | str, what: str = "") -> NoSpace:
    where = f"{what} " if what else ""
    return NoSpace(
        f"{where}{path}: no space left on its file system ({free_space(Path(path))} free); nothing already written "
        "was changed: free some space and run the same command again to go on"
    )


@contextlib.contextmanager
def space_checked(path: Path | str, what: str = "") -> Iterator[None]:
    """Turn a failed write for want of space inside the block into one `NoSpace` line."""
    try:
        yield
    except OSError as err:
        if is_no_space(err):
            raise no_space(path, what) from None
        raise


def atomic_write(path: Path, text: str | bytes) -> None:
    """Replace `path` with `text`: written to a temporary name, synced, renamed over it. A
    crash, a kill or a full disk leaves the old file whole (the temporary one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with critical(), space_checked(path):
        try:
            with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def check_new_dir(path: Path | str, name: str) -> Path:
    """A directory that `staged_dir` may make: it does not exist yet and its parent can be written
    (checked before any compute; a ConfigError otherwise)."""
    from grpo_zoo.errors import given_path, writable_dir

    path = given_path(path, name, "directory")  # empty (the current folder), or a broken symlink: refused
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{name}: {path} exists; choose a new directory (nothing is overwritten)")
    writable_dir(path.absolute().parent, name)
    return path


@contextlib.contextmanager
def staged_dir(path: Path | str, name: str) -> Iterator[Path]:
    """Make the new directory `path` whole or not at all: the block writes into a hidden staging
    directory beside it, renamed to `path` when the block ends; a failure, a kill or a full disk
    removes the staging directory and leaves nothing at `path`."""
    path = check_new_dir(path, name)
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with space_checked(path):
            staging.mkdir(parents=True)
            yield staging
            with critical():
                staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line and sync it. A write that fails part way (a full disk) is cut back off,
    so the file ends after its last whole line, as it did before."""
    with critical(), open(path, "ab") as f:
        size = f.tell()
        try:
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                f.truncate(size)
            if is_no_space(err):
                raise no_space(path) from None
            raise


# -- reading state files --------------------------------------------------------------------

_KINDS = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}


def regular_file(path: Path, what: str = "file") -> bool:
    """True if `path` is a regular file, False if there is nothing there; a directory, a FIFO,
    a device or a link that leads nowhere is a DamagedState (and is never opened)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise DamagedState(f"{path}: a broken symlink where its {what} belongs") from None
        return False
    except OSError as err:  # a symlink loop, a permission problem
        raise DamagedState(f"{path}: cannot be read ({err.strerror}); it was left as it was") from None
    if stat.S_ISREG(mode):
        return True
    kind = next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")
    raise DamagedState(f"{path}: {kind} where its {what} belongs; it was left as it was (remove or repair it)")


def read_text(path: Path, what: str = "file") -> str | None:
    """The text of a state file (None if there is none); DamagedState if it cannot be read."""
    if not regular_file(path, what):
        return None
    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise DamagedState(f"{path}: not a text file; it was left as it was (remove or repair it)") from None
    except OSError as err:
        raise DamagedState(f"{path}: cannot be read ({err.strerror}); it was left as it was") from None


def _type(value: Any) -> str:
    kinds = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
    }
    return {**kinds, type(None): "empty"}.get(type(value), f"a {type(value).__name__}")


def read_state(
    path: Path,
    kind: str = "json",
    expect: type = dict,
    default: Any = None,
    what: str = "file",
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A state file's value: `default` if there is none; DamagedState (one line, file left as
    it was) if it is not a regular file, does not parse, is not an `expect`, or `check(value)`
    names a problem."""
    text = read_text(path, what)
    if text is None:
        return default
    try:
        value = json.loads(text) if kind == "json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        line = getattr(err, "lineno", None) or getattr(getattr(err, "problem_mark", None), "line", -1) + 1
        at = f" (line {line})" if line else ""
        raise DamagedState(
            f"{path}: not valid {kind.upper()}{at}; it was left as it was (remove or repair it)"
        ) from None
    if not isinstance(value, expect):
        want = "a mapping" if expect is dict else _type(expect())
        raise DamagedState(f"{path}: {_type(value)}, expected {want}; it was left as it was (remove or repair it)")
    problem = check(value) if check else None
    if problem:
        raise DamagedState(f"{path}: {problem}; it was left as it was (remove or repair it)")
    return value


def save_figure(fig, path: Path, **kwargs) -> None:
    """A matplotlib figure written as `atomic_write` writes text (format from the suffix)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip("."), **kwargs)
    atomic_write(Path(path), buf.getvalue())
