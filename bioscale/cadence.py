"""Which epochs run the optional per-epoch work: diagnostics and checkpoints (``TrainSpec``).

Neither changes what a job trains, so both are run-time settings (``spec.RUNTIME_FIELDS``). Torch-free.
"""

from __future__ import annotations

from typing import Any


def due(every: int, epoch: int, epochs: int, *, first: bool = False) -> bool:
    """Whether the work runs after ``epoch`` (0-based) of ``epochs``: every ``every``-th epoch and the last
    (so a finished job always has the final value), the first too when ``first``; never when ``every`` is 0."""
    if every <= 0:
        return False
    done = epoch + 1
    return done % every == 0 or done == epochs or (first and done == 1)


def diagnostics_due(train: Any, epoch: int) -> bool:
    """Diagnostics after the first epoch, every ``diagnostics_every``-th and the last: an alignment curve
    starts at its first point and ends at the final model."""
    return due(train.diagnostics_every, epoch, train.epochs, first=True)


def checkpoint_due(train: Any, epoch: int) -> bool:
    return bool(train.checkpoint) and due(train.checkpoint_every, epoch, train.epochs)


def last_saved(train: Any, done: int) -> int:
    """The epoch a resume starts from after ``done`` finished epochs: the last one a checkpoint was due at
    (``checkpoint_every``), 0 without checkpoints."""
    if not train.checkpoint or done <= 0:
        return 0
    return done if done >= train.epochs else done - done % max(1, train.checkpoint_every)


def saved_note(train: Any, done: int) -> str:
    """What a stop after ``done`` epochs keeps, for messages: "all saved", or which epochs a resume replays."""
    saved = last_saved(train, done)
    if saved == done:
        return "all saved"
    if saved == 0:
        return f"no checkpoint yet: a resume replays epochs 1-{done}"
    return f"checkpoint at epoch {saved}: a resume replays epochs {saved + 1}-{done}"


def diagnostics_slice(batch: tuple[Any, Any], size: int | None) -> tuple[Any, Any]:
    """The first ``size`` examples of the diagnostics batch (all of it when ``size`` is None)."""
    x, y = batch
    return (x, y) if size is None else (x[:size], y[:size])
