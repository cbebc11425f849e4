"""The public Python API: expand a grid, skip what is finished, run the rest, summarise.

``bioscale run`` is a thin shell around this module, so a notebook or a script gets exactly what the command
line does::

    import bioscale
    summary = bioscale.run_grid("grids/smoke.yaml", results="runs", overrides=["train.epochs=1"])
    frame = bioscale.load_results("runs", grid="smoke")

Importing it does not import torch (``bioscale grid validate`` and the report stay fast); the executors
import it when a job starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bioscale import interrupts
from bioscale.claims import DEFAULT_TIMEOUT_S as DEFAULT_LEASE_TIMEOUT_S
from bioscale.errors import BioscaleError
from bioscale.events import EventHandler
from bioscale.executors import Executor, make_executor
from bioscale.interrupts import Interrupted
from bioscale.job import Job, unwritable_result
from bioscale.spec import ExecutorSpec, GridSpec, JobResult
from bioscale.store import DEFAULT_RESULTS, SPEC, JobState, Store

if TYPE_CHECKING:
    import pandas as pd

RUNNABLE = ("pending", "failed")
"""Statuses ``run_grid`` (re)runs; done and diverged are results, a running job belongs to another process."""


@dataclass(frozen=True)
class Plan:
    """What a run would do: every job of the grid and those of them still to run. Computing it writes
    nothing, so it can be shown (``bioscale run`` prints it) before anything starts."""

    grid: GridSpec
    jobs: list[Job]
    todo: list[Job]
    store: Store
    states: dict[str, JobState] = field(default_factory=dict)
    """Each job's folder as read once when planning (job id -> ``JobState``): what todo, running elsewhere
    and the damaged jobs are derived from, without reading the store again."""
    runs: int | None = None
    """Job runs this plan expects, where it is not ``len(todo)``: with successive halving, the jobs of the
    current rungs plus the survivors of every later rung (each continues from its checkpoint)."""

    @property
    def skipped(self) -> int:
        """Jobs already finished (or running elsewhere), left alone."""
        return len(self.jobs) - len(self.todo)

    @property
    def results_dir(self) -> Path:
        return self.store.root / self.grid.name

    @property
    def running_elsewhere(self) -> int:
        """Jobs left alone because another process holds them (a live lease)."""
        return sum(state.status == "running" for state in self.states.values())

    @property
    def damaged(self) -> list[tuple[str, list[str]]]:
        """(job id, problems) of the grid's damaged jobs: they run again from their last consistent point."""
        return [(job_id, state.problems) for job_id, state in self.states.items() if state.problems]


@dataclass
class RunSummary:
    """The outcome of ``run_grid``. ``results`` holds the jobs run by this call only; ``load_results`` has
    every job of the store, including those skipped here."""

    grid: str
    results_dir: Path
    jobs: list[Job]
    skipped: int
    results: list[JobResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Jobs run by this call per status, e.g. ``{"done": 3, "failed": 1}``, sorted by status."""
        return dict(sorted(Counter(r.status for r in self.results).items()))

    @property
    def failed(self) -> list[JobResult]:
        """Jobs that failed (an error, not a diverged loss: divergence is a result); run again to retry."""
        return [r for r in self.results if r.status == "failed"]


def expand_grid(grid: str | Path | GridSpec, overrides: list[str] | str | Mapping[str, Any] | None = None, *,
                max_jobs: int | None = None) -> tuple[GridSpec, list[Job]]:
    """Load and validate ``grid`` (a YAML path or a ``GridSpec``) and expand it into its jobs, with
    ``overrides`` (``["train.epochs=2"]`` or ``{"train.epochs": 2}``) applied to every job. Raises
    ``BioscaleError`` on invalid input, and when the axes make more than ``max_jobs`` combinations (default
    ``bioscale.grid.DEFAULT_MAX_JOBS``, 10,000). Reads nothing but the grid, writes nothing."""
    from bioscale.grid import expand, load_grid

    if isinstance(grid, GridSpec):
        spec, source = grid, f"<grid {grid.name}>"
    else:
        spec, source = load_grid(grid), str(grid)
    return spec, expand(spec, _sets(overrides), source=source, max_jobs=max_jobs)


def _sets(overrides: list[str] | str | Mapping[str, Any] | None) -> dict[str, Any]:
    from bioscale.grid import parse_set

    if isinstance(overrides, Mapping):
        return dict(overrides)
    return parse_set([overrides] if isinstance(overrides, str) else list(overrides or []))


def plan(grid: str | Path | GridSpec, results: str | Path = DEFAULT_RESULTS,
         overrides: list[str] | str | Mapping[str, Any] | None = None, *, max_jobs: int | None = None,
         where: list[str] | None = None, only: list[str] | None = None) -> Plan:
    """``expand_grid``, then find the jobs not finished in ``results``. ``where`` (``["rule.name=fa"]``, all
    must hold) and ``only`` (job ids, id prefixes or pieces of labels; any may match) narrow it to a subset
    (``bioscale.select``; selecting nothing raises ``BioscaleError``). Writes nothing (``bioscale run``
    then checks the plan with ``bioscale.preflight.preflight`` before it starts anything)."""
    from bioscale.select import parse_selection, select_jobs

    spec, jobs = expand_grid(grid, overrides, max_jobs=max_jobs)
    jobs = select_jobs(jobs, parse_selection(where, only), spec, _sets(overrides))
    store = Store(results)
    states = {job.job_id: store.job_dir(job.grid, job.job_id).inspect() for job in jobs}
    if spec.promote is not None:  # successive halving: only the jobs still in the race, up to their rung
        from bioscale.promote import advance, expected_runs

        todo, groups = advance(spec, jobs, store, write=False)
        return Plan(spec, jobs, todo, store, states, expected_runs(spec.promote, groups, todo))
    todo = [job for job in jobs if states[job.job_id].status in RUNNABLE]
    return Plan(spec, jobs, todo, store, states)


def choose_executor(grid: GridSpec, executor: str | ExecutorSpec | Executor | None = None,
                    workers: int | None = None, threads: int | None = None,
                    lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S, jobs_per_gpu: int | None = None,
                    stack: int | None = None) -> Executor:
    """The executor for a run: the grid's ``executor:`` entry, replaced by ``executor`` where given, with
    ``workers``/``threads``/``jobs_per_gpu``/``stack`` on top (``workers`` alone means a local pool).
    Unknown names and parameters raise ``BioscaleError`` before anything is written."""
    settings = (workers, threads, jobs_per_gpu, stack)
    if isinstance(executor, Executor):
        if any(v is not None for v in settings):
            raise BioscaleError("workers, threads, jobs_per_gpu and stack configure an executor by name; give "
                                "them to the executor object itself, or pass executor='local' (or 'inline').")
        return executor
    spec = executor if isinstance(executor, ExecutorSpec) else grid.executor
    if isinstance(executor, str) or any(v is not None for v in settings):
        pool = workers is not None or jobs_per_gpu is not None
        name = executor if isinstance(executor, str) else (spec.name if spec else ("local" if pool else "inline"))
        params = dict(spec.params) if spec and spec.name == name else {}
        given = (("workers", workers), ("threads", threads), ("jobs_per_gpu", jobs_per_gpu), ("stack", stack))
        params.update({k: v for k, v in given if v is not None})
        spec = ExecutorSpec(name=name, params=params)
    return make_executor(spec, lease_timeout)


def run_plan(planned: Plan, executor: str | ExecutorSpec | Executor | None = None, *, workers: int | None = None,
             threads: int | None = None, on_event: EventHandler | None = None,
             lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S) -> RunSummary:
    """Run the plan's jobs still to run. The spec of every job still to run (or not recorded yet) is written
    first, so the report lists the whole grid (pending jobs included) while it runs; a finished job's record
    is left exactly as written. A failed job is recorded and the others go on; so is a job whose directory
    cannot be written. Each job is claimed (``bioscale.claims``) by the process that trains
    it, so concurrent runs on one store never train a job twice.

    SIGINT and SIGTERM raise ``Interrupted`` (with a one-line ``message`` on what was saved) after every
    running job has stopped, recorded itself as resumable and released its claim."""
    runner = choose_executor(planned.grid, executor, workers, threads, lease_timeout)
    todo, unwritable = [], []
    waiting = {job.job_id for job in planned.todo}
    for job in planned.jobs:
        jdir = planned.store.job_dir(job.grid, job.job_id)
        if job.job_id not in waiting and (jdir.path / SPEC).exists():
            continue  # finished or running elsewhere: its record stays exactly as it was written
        try:
            jdir.write_spec(job.grid, job.spec)
        except OSError as exc:
            if job.job_id in waiting:
                unwritable.append(unwritable_result(job, exc))
            continue
        if job.job_id in waiting:
            todo.append(job)
    with interrupts.raising():
        try:
            if planned.grid.promote is not None:
                done = run_rungs(planned, runner, on_event)
            else:
                done = runner.run(todo, planned.store, on_event) if todo else []
        except Interrupted as exc:
            exc.message = exc.message or interrupted_message(exc, planned)  # an executor may know better
            raise
    return RunSummary(planned.grid.name, planned.results_dir, planned.jobs, planned.skipped, unwritable + done)


def run_rungs(planned: Plan, runner: Executor, on_event: EventHandler | None = None) -> list[JobResult]:
    """Successive halving (``bioscale.promote``): run every job still in the race up to its rung, decide the
    rungs whose jobs have all arrived, run the promoted ones on from their checkpoints, and so on until nothing
    is left to run here (an executor that only submits, like Slurm without --wait, stops after one round: the
    next ``bioscale run`` decides and goes on). Each job is run at most once per stop in one call, so a job that
    fails again is left for the next run. Returns each job's latest result."""
    from bioscale.promote import advance

    results: dict[str, JobResult] = {}
    tried: set[tuple[str, int | None]] = set()
    while True:
        todo = [job for job in advance(planned.grid, planned.jobs, planned.store)[0]
                if (job.job_id, job.stop_after) not in tried]
        if not todo:
            return list(results.values())
        tried |= {(job.job_id, job.stop_after) for job in todo}
        for result in runner.run(todo, planned.store, on_event):
            results[result.job_id] = result


def interrupted_message(exc: Interrupted, planned: Plan) -> str:
    """One line: what the interrupt left on disk and how to resume."""
    saved = []
    for job in planned.todo:
        jdir = planned.store.job_dir(job.grid, job.job_id)
        result = jdir.read_result()
        if result is not None and result.status == "pending" and result.epochs:
            saved.append(result.epochs)
    unfinished = sum(planned.store.job_dir(j.grid, j.job_id).status() not in ("done", "diverged", "failed")
                     for j in planned.todo)
    kept = f"; {len(saved)} of them keep {sum(saved)} finished epochs" if saved else ""
    return (f"interrupted by {exc.name}: {unfinished} unfinished job(s) left resumable{kept}, none recorded "
            f"as failed. Run the same command to resume.")


def run_grid(grid: str | Path | GridSpec, results: str | Path = DEFAULT_RESULTS,
             overrides: list[str] | str | Mapping[str, Any] | None = None,
             executor: str | ExecutorSpec | Executor | None = None, *, workers: int | None = None,
             threads: int | None = None, on_event: EventHandler | None = None,
             plugins: list[str] | None = None, lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S,
             preflight: bool = True, where: list[str] | None = None, only: list[str] | None = None,
             force: bool = False) -> RunSummary:
    """Run every job of ``grid`` that is not finished in ``results``; a second call resumes or does nothing.

    ``executor``: ``"inline"`` (this process, the default), ``"local"`` (a process pool), an ``ExecutorSpec``
    or an ``Executor``; ``on_event`` receives ``bioscale.events`` (e.g. a ``bioscale.progress.Display``);
    ``plugins``: modules or ``.py`` paths that register components, loaded first. Bad input, and with
    ``preflight`` a missing dataset, device or unwritable results folder (``bioscale.preflight``), raises
    ``BioscaleError`` before anything runs; a failing job does not raise (see ``RunSummary.failed``).
    ``lease_timeout``: seconds without a heartbeat before another host may take a job over. SIGINT/SIGTERM
    raise ``bioscale.interrupts.Interrupted`` once every job has stopped and saved. ``where``/``only`` run a
    subset (see ``plan``); ``force`` reruns its finished (done, failed, diverged) jobs from scratch, their
    files kept aside (``bioscale.force``; a job running elsewhere is never forced).
    """
    if plugins:
        from bioscale.catalog import load_plugins

        load_plugins(plugins)
    planned = plan(grid, results, overrides, where=where, only=only)
    runner = choose_executor(planned.grid, executor, workers, threads, lease_timeout)  # refused before preflight
    if preflight:
        from bioscale.preflight import preflight as check

        check(planned, devices=getattr(runner, "runs_here", True),  # a Slurm job's GPU is not on this machine
              multi_node=getattr(runner, "multi_node", False))
    if force:
        from bioscale.force import force_finished

        planned = force_finished(planned, lease_timeout).plan
    return run_plan(planned, runner, on_event=on_event)


def load_results(results: str | Path = DEFAULT_RESULTS, grid: str | GridSpec | None = None) -> pd.DataFrame:
    """One row per job in ``results`` (of ``grid`` only, if given), with the columns of
    ``bioscale report --format csv``: spec, status, errors in %, timings and the papers' numbers."""
    from bioscale.report import load_frame

    store = Store(results)
    name = grid.name if isinstance(grid, GridSpec) else grid
    if name is not None and name not in store.grids():
        known = ", ".join(store.grids()) or "none"
        raise BioscaleError(f"No results for grid {name!r} in {results}. Grids there: {known}. Run "
                            f"`bioscale run grids/{name}.yaml --results {results}` first.")
    return load_frame(store, name)
