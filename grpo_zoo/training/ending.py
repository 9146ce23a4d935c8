"""How a run ends: every way out of the training loop is recorded in status.json by rank 0.

    completed / pruned  the loop's own return (grpo_zoo/training/trainer.py)
    diverged            a NaN or inf in a loss or reward (NonFiniteError)
    terminated          SIGTERM (or SystemExit), resumable
    interrupted         SIGINT, resumable
    failed              anything else (a crash), with its type and message
The error is re-raised after it is recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from grpo_zoo.errors import NonFiniteError
from grpo_zoo.runs import RunDir, Terminated
from grpo_zoo.runs.files import NoSpace


@contextlib.contextmanager
def recorded(run: RunDir, rank: int, step: Callable[[], int]) -> Iterator[None]:
    """Inside this block a run that ends by an error has its status written (rank 0)."""

    def write(status: str, reason: str) -> None:
        if rank == 0:  # a status that cannot be written (a full disk) keeps the old one, and the first error
            with contextlib.suppress(OSError, NoSpace):
                run.set_status(status, step=step(), reason=reason)

    try:
        yield
    except NonFiniteError as err:
        write("diverged", str(err))
        raise
    except (Terminated, KeyboardInterrupt, SystemExit) as err:  # ended from outside: resumable
        write(getattr(err, "status", "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated"),
              f"{type(err).__name__}: {err}")  # fmt: skip
        raise
    except BaseException as err:  # a crash is recorded, then raised
        write("failed", f"{type(err).__name__}: {err}")
        raise
