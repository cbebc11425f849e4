"""Where jobs run: ``inline`` (this process) or ``local`` (a pool of worker processes, one job per slot:
one per GPU on a GPU machine, else CPU slots that share the cores).

Every job writes its own results as it goes, so an interrupted run loses at most the current epoch of each
running job; ``bioscale run`` on the same grid resumes it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from bioscale.errors import BioscaleError
from bioscale.events import Event, EventHandler, JobFinished, JobStarted, ignore
from bioscale.job import Job
from bioscale.spec import ExecutorSpec, JobResult
from bioscale.store import Store


class Executor(ABC):
    @abstractmethod
    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        """Run every job; a job's failure is its result, not an exception. ``on_event`` sees each job's
        ``JobStarted``, ``JobProgress``... and ``JobFinished`` (``bioscale.events``)."""


class InlineExecutor(Executor):
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        from bioscale.train import run_job

        on_event = on_event or ignore
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

        results = []
        for job in jobs:
            on_event(JobStarted(job.job_id, job.label, job.spec.train.epochs))
            result = run_job(job, store, on_event)
            on_event(_finished(job, result))
            results.append(result)
        return results


class LocalExecutor(Executor):
    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        self.workers = workers
        self.threads = threads

    def slots(self) -> tuple[int, int]:
        """(number of worker processes, GPUs); with GPUs, one worker per GPU."""
        import torch

        gpus = torch.cuda.device_count()
        workers = self.workers or gpus or max(1, (os.cpu_count() or 1) // 2)
        return workers, gpus

    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        from bioscale.catalog import plugins

        on_event = on_event or ignore
        workers, gpus = self.slots()
        workers = max(1, min(workers, len(jobs)))
        ctx = mp.get_context("spawn")  # CUDA and fork do not mix
        manager = ctx.Manager()
        events = manager.Queue()
        slots = manager.Queue()
        for i in range(workers):
            slots.put(i)
        threads = self.threads or max(1, (os.cpu_count() or 1) // workers)
        started: set[str] = set()

        def emit(event: Event) -> None:
            if isinstance(event, JobStarted):
                started.add(event.job_id)
            on_event(event)

        results: list[JobResult] = []
        # spawned workers start from a fresh interpreter: they load the same --plugin modules as this one
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(slots, gpus, threads, events, plugins())) as pool:
            pending = {pool.submit(_run_in_worker, job, str(store.root)): job for job in jobs}
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, emit)  # a finished job's events are all queued before its result arrives
                for future in done:
                    job = pending.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # the worker process died (e.g. out of memory)
                        result = JobResult(job_id=job.job_id, grid=job.grid, status="failed",
                                           error=f"worker process died: {exc!r}")
                        store.job_dir(job.grid, job.job_id).write_result(result)
                    if job.job_id not in started:  # died before it could say so: keep the event order
                        emit(JobStarted(job.job_id, job.label, job.spec.train.epochs))
                    on_event(_finished(job, result))
                    results.append(result)
        manager.shutdown()
        return results


def _finished(job: Job, result: JobResult) -> JobFinished:
    return JobFinished(job.job_id, job.label, result.status, result.test_error, result.error)


_EVENTS: Any = None


def _init_worker(slots: Any, gpus: int, threads: int, events: Any, plugins: list[str]) -> None:
    global _EVENTS
    import torch

    from bioscale.catalog import load_plugins

    slot = slots.get()
    if gpus:
        torch.cuda.set_device(slot % gpus)
    torch.set_num_threads(threads)
    if plugins:
        load_plugins(plugins)
    _EVENTS = events


def _run_in_worker(job: Job, root: str) -> JobResult:
    from bioscale.train import run_job

    put = _EVENTS.put if _EVENTS is not None else None
    if put is not None:
        put(JobStarted(job.job_id, job.label, job.spec.train.epochs))
    return run_job(job, Store(root), put)


def _drain(events: Any, on_event: EventHandler) -> None:
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        on_event(event)


def make_executor(spec: ExecutorSpec | None) -> Executor:
    """``threads`` (both) is torch's CPU threads per job; ``workers`` (local) the number of processes."""
    spec = spec or ExecutorSpec(name="inline")
    allowed = {"inline": {"threads"}, "local": {"workers", "threads"}}.get(spec.name)
    if allowed is not None and set(spec.params) - allowed:
        raise BioscaleError(f"executor {spec.name!r} takes the parameters {sorted(allowed)}, not "
                            f"{sorted(set(spec.params) - allowed)}.")
    if spec.name == "inline":
        return InlineExecutor(spec.params.get("threads"))
    if spec.name == "local":
        return LocalExecutor(spec.params.get("workers"), spec.params.get("threads"))
    raise BioscaleError(f"Unknown executor {spec.name!r}. Use 'inline' (this process) or 'local' "
                        "(a pool of worker processes: --executor local --workers N).")
