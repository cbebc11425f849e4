"""Tasks: what a job learns and how it is scored, so the trainer, the store and the report stay task-agnostic.

A dataset's registry record names its task (``DatasetRecord.task``: "classification" or "detection"); the
task says how a batch becomes a loss, what is measured on the evaluation set, which of those numbers picks
the best epoch and whether lower is better (test error for classification, as Bartunov et al.'s "best
errors"; COCO AP for detection, higher is better).

Importing this package does not import torch (``bioscale.report`` reads ``best`` without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bioscale.tasks.base import Evaluation, Task
from bioscale.tasks.classification import Classification
from bioscale.tasks.detection import Detection

if TYPE_CHECKING:
    from bioscale.spec import JobSpec

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Detection())}
"""One instance per task name that ``bioscale.catalog.Task`` allows."""


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def for_dataset(name: str) -> Task:
    """The task of the registered dataset ``name`` (its registry record says which)."""
    from bioscale.catalog import DATASETS

    return get(DATASETS.get(name).task)


def for_spec(spec: JobSpec) -> Task:
    return for_dataset(spec.dataset.name)


def scoring(dataset: str) -> Task:
    """The task that scores a job of ``dataset``; classification for a dataset not registered here (a plugin
    not loaded, a renamed one): its recorded numbers are errors, and a job that cannot load its dataset fails
    in the trainer's build, saying why."""
    try:
        return for_dataset(dataset)
    except Exception:
        return get("classification")


__all__ = ["TASKS", "Classification", "Detection", "Evaluation", "Task", "for_dataset", "for_spec", "get", "scoring"]
