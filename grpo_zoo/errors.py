"""One clear line and exit status 2 for bad input, before any compute."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable


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
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2 (through `cli`)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message)
