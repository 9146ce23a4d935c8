"""Ending a run from outside: TERM and INT become `Terminated` (outside any `critical` write),
and the kill-point test hooks GRPO_ZOO_KILL_AT / GRPO_ZOO_STOP_AT=POINT[@STEP] (SIGKILL / SIGSTOP
at a named point: `row`, `checkpoint_write`, `checkpoint_publish`, `before_complete`,
`after_complete`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


def test_point(name: str, step: int | None = None) -> None:
    """GRPO_ZOO_KILL_AT / GRPO_ZOO_STOP_AT=POINT[@STEP]: SIGKILL / SIGSTOP this process here."""
    for var, sig in (("GRPO_ZOO_KILL_AT", signal.SIGKILL), ("GRPO_ZOO_STOP_AT", signal.SIGSTOP)):
        point, _, at = os.environ.get(var, "").partition("@")
        if point == name and (not at or (step is not None and int(at) == step)):
            os.kill(os.getpid(), sig)


# -- exit signals -------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM or SIGINT arrived: the run records `terminated` / `interrupted` and ends."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = "interrupted" if signum == signal.SIGINT else "terminated"


_critical = {"depth": 0, "pending": None}


@contextlib.contextmanager
def critical():
    """A write that a TERM or INT must not cut in half: the signal takes effect after it."""
    _critical["depth"] += 1
    try:
        yield
    finally:
        _critical["depth"] -= 1
        if _critical["depth"] == 0 and _critical["pending"] is not None:
            signum, _critical["pending"] = _critical["pending"], None
            raise Terminated(signum)


def _on_signal(signum: int, frame: object) -> None:
    if _critical["depth"]:
        _critical["pending"] = signum
        return
    raise Terminated(signum)


@contextlib.contextmanager
def exit_signals():
    """TERM and INT raise `Terminated` inside this block (outside any `critical` write).

    A handler someone else installed is left alone: under submitit, TERM stays its
    logged no-op and USR2 its checkpoint-and-requeue, so preemption keeps working."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
            if signal.getsignal(sig) is default:
                installed[sig] = signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old)
