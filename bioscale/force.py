"""``bioscale run --force``: rerun finished jobs (done, failed, diverged) from scratch.

Nothing is deleted: under the job's claim (``bioscale.claims``, so no process trains it meanwhile) its result,
metrics, checkpoint and earlier rerun note are renamed to ``*.aside-<n>`` by ``JobDir.set_aside`` (the same
mechanism that keeps damaged files), and a ``rerun.txt`` note says what was kept where; every result the new
run writes carries that note. The job is then an ordinary pending job, claimed again by whichever process
trains it. A job that another process holds (a live lease) is never forced.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from bioscale import claims
from bioscale.job import Job
from bioscale.logsinks import SINKS
from bioscale.runner import Plan
from bioscale.store import CHECKPOINT, METRICS, RERUN, RESULT, JobDir, atomic_write_text

FINISHED = ("done", "failed", "diverged")
"""What ``--force`` reruns; pending jobs run anyway, running ones belong to another process."""
FORCE_ASIDE = (RESULT, METRICS, CHECKPOINT, RERUN, *(sink.folder for sink in SINKS.values()))
"""The files of one run of a job, with its log sinks' folders: set aside together."""


@dataclass(frozen=True)
class Forced:
    plan: Plan
    """The plan with the forced jobs added to ``todo`` (in the grid's order)."""
    forced: list[Job]
    running: list[Job]
    """Finished when planned, held by another process when forcing: left alone."""


def finished_jobs(planned: Plan) -> list[Job]:
    """The plan's jobs that ``--force`` would rerun (as read when planning)."""
    return [j for j in planned.jobs if planned.states[j.job_id].status in FINISHED]


def would_run(planned: Plan) -> Plan:
    """The plan as ``--force`` would make it, without touching anything: for preflight and the scheduler's
    checks, which must see the forced jobs before any file is set aside."""
    return _with_todo(planned, finished_jobs(planned))


def force_finished(planned: Plan, lease_timeout: float = claims.DEFAULT_TIMEOUT_S) -> Forced:
    """Set aside the files of every finished job of ``planned`` and add it to the plan's ``todo``."""
    forced, running = [], []
    for job in finished_jobs(planned):
        outcome = _set_aside(planned.store.job_dir(job.grid, job.job_id), lease_timeout)
        (forced if outcome else running).append(job)
    return Forced(_with_todo(planned, forced), forced, running)


def _with_todo(planned: Plan, more: list[Job]) -> Plan:
    ids = {j.job_id for j in [*planned.todo, *more]}
    return dataclasses.replace(planned, todo=[j for j in planned.jobs if j.job_id in ids])


def _set_aside(jdir: JobDir, lease_timeout: float) -> bool:
    """False if another process holds the job; True once its finished run is kept aside (or, if another
    --force got there first, once it is pending anyway)."""
    claim = claims.acquire(jdir.path, lease_timeout)
    if claim is None:
        return False
    with claim:
        state = jdir.inspect()  # under our claim: its status reads "running" (our lease); the result says more
        result = state.result
        if (result is None or result.status not in FINISHED) and not state.problems:
            claim.note = "forced: already pending"
            return True
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        was = f"{result.status}, {result.epochs} epochs" if result is not None else "damaged"
        if result is not None and result.test_error is not None:
            was += f", best test error {result.test_error:g}%"
        kept = jdir.set_aside(f"set aside by `bioscale run --force` at {when}: the job reruns from scratch.",
                              names=FORCE_ASIDE)
        note = f"rerun from scratch by `bioscale run --force` at {when}; the earlier run ({was}) is kept as " \
               f"{', '.join(kept)}"
        atomic_write_text(jdir.path / RERUN, note + "\n")
        claim.note = "forced: earlier run set aside"
    return True
