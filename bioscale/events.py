"""What executors tell the rest of the world while jobs run. Torch-free.

Executors and the trainer emit these; whoever wants to watch (the rich display of ``bioscale run``, a log
file, a notebook) subscribes with an ``EventHandler``. Keeping them plain, picklable dataclasses lets them
cross process boundaries (the local executor's workers send them through a queue).

For each job that runs, a handler sees one ``JobStarted``, then any number of ``JobProgress``, then one
``JobFinished``; events of different jobs may interleave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    label: str
    epochs: int


@dataclass(frozen=True)
class JobProgress:
    """One training step or the end of an epoch of a running job (``test_error`` is set when it was evaluated)."""

    job_id: str
    label: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    test_error: float | None = None
    epoch_end: bool = False
    """The event after an epoch (evaluated or not: ``train.eval_every``); False for a training step's."""


@dataclass(frozen=True)
class JobFinished:
    """The outcome of a job: ``status`` is done, failed or diverged; ``error`` says why it is not done."""

    job_id: str
    label: str
    status: str
    test_error: float | None = None
    error: str | None = None
    ap: float | None = None
    """A detection job's best COCO AP in % (``bioscale.tasks``); None for classification."""


Event = JobStarted | JobProgress | JobFinished
EventHandler = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The handler used when nobody listens."""
