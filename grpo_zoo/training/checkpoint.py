"""Checkpoints of a run: the engine's (weights, optimizer) and the trainer's state per rank,
written into a staging directory and committed atomically (grpo_zoo/runs/store.py); a resume
loads the newest readable one, falling back past damaged ones (said in one line)."""

from __future__ import annotations

import os
import shutil

import torch

from grpo_zoo.runs import say
from grpo_zoo.runs.files import no_space, out_of_space


def save(run, engine, step: int, rank: int, state: dict) -> None:
    """Stage, then publish. A staging that fails (a full disk: DeepSpeed and torch.save report
    it in their own words) is removed and said in one line; the published checkpoints and
    `latest` are untouched, so a rerun with space resumes from the last one."""
    staging = run.staging(step)
    try:
        if rank == 0:
            staging.mkdir(parents=True, exist_ok=True)
        engine.barrier()
        engine.save(staging)
        tmp = staging / f".trainer_rank{rank}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, staging / f"trainer_rank{rank}.pt")
    except Exception as err:
        full = out_of_space(err, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise no_space(staging, f"checkpoint step-{step}:") from None
        raise
    engine.barrier()
    if rank == 0:
        run.commit_checkpoint(step)
    engine.barrier()


def load_newest(run, engine, rank: int, world: int) -> tuple[dict | None, str | None, str | None]:
    """(state, name of the checkpoint loaded, fallback note): None state means step 0."""
    candidates, newest = run.checkpoint_candidates()
    loaded, failures, state = None, [], None
    for path in candidates:
        try:
            state = torch.load(path / f"trainer_rank{rank}.pt", weights_only=False)
            engine.load(path)
            ok = 1.0
        except Exception as err:  # a damaged or partial checkpoint: try the one before
            failures.append(f"{path.name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}")
            ok = 0.0
        if float(engine.all_reduce_sum(torch.tensor([ok]))[0]) == world:
            loaded = path
            break
        state = None
    fallback = None
    if newest is not None and (loaded is None or loaded.name != newest):
        missing = [] if newest in [p.name for p in candidates] else [f"{newest}: missing"]
        why = "; ".join(missing + failures)
        to = f"resuming from {loaded.name}" if loaded is not None else "no readable checkpoint, starting from step 0"
        fallback = f"checkpoint {newest} cannot be read ({why}); {to}"
        if rank == 0:
            say(f"warning: run_dir: {fallback}")
    return state, loaded.name if loaded is not None else None, fallback
