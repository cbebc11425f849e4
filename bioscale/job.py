"""A job: one resolved spec of a grid, with the label that names it in messages and progress."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bioscale.spec import JobResult, JobSpec, Resources


@dataclass(frozen=True)
class Job:
    grid: str
    spec: JobSpec
    label: str
    """A short readable name for progress and messages (``job_label``: "dtp/alt lc mnist s0")."""
    resources: Resources | None = None
    """What its scheduler task asks for (the grid's ``resources:`` with this job's overrides); not in its id."""
    logging: tuple[str, ...] = ()
    """Sinks that mirror its epochs (the grid's ``logging:``, ``bioscale.logsinks``); not in its id."""
    stop_after: int | None = None
    """Stop after this many epochs, resumable (successive halving's rung, ``bioscale.promote``); None: run
    ``train.epochs``. A run-time setting: the job's budget and id stay those of its spec."""

    @property
    def job_id(self) -> str:
        return self.spec.job_id()


CELL_KEYS = ("rule", "rule.name", "rule.params.schedule", "arch", "arch.name", "dataset", "dataset.name", "seed")
"""Axis keys the compact label already shows."""


def job_label(spec: JobSpec, axes: dict[str, Any]) -> str:
    """A short name for progress lines and messages: rule (and schedule), arch, dataset, seed, then the other
    axis values that made the job, e.g. ``dtp/alt lc mnist s0`` or ``fa fc mnist-5k s1 last_layer_bp=true``."""
    schedule = spec.rule.params.get("schedule")
    head = f"{spec.rule.name}/{schedule[:3]}" if isinstance(schedule, str) and schedule else spec.rule.name
    parts = [head, spec.arch.name, spec.dataset.name, f"s{spec.seed}"]
    parts += [f"{key.rsplit('.', 1)[-1]}={_compact(value)}" for key, value in axes.items() if key not in CELL_KEYS]
    return " ".join(parts)


def _compact(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def unwritable_result(job: Job, exc: OSError) -> JobResult:
    """The result of a job whose folder cannot be written: it fails (said here, since it cannot be said on
    disk), and the other jobs go on."""
    what = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    return JobResult(job_id=job.job_id, grid=job.grid, status="failed",
                     error=f"cannot write the job's directory: {what}. Check the results directory's "
                           "permissions and free space, then run the same command again.")
