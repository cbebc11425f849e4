"""A job: one resolved spec of a grid, with the label that names it in messages and progress."""

from __future__ import annotations

from dataclasses import dataclass

from bioscale.spec import JobSpec


@dataclass(frozen=True)
class Job:
    grid: str
    spec: JobSpec
    label: str
    """The axis values that made this job, for messages and progress ("rule.name=fa, seed=1")."""

    @property
    def job_id(self) -> str:
        return self.spec.job_id()
