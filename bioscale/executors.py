"""Where jobs run: ``inline`` (this process) or ``local`` (a pool of worker processes, one job per slot:
one per GPU on a GPU machine, else CPU slots that share the cores).

Every job writes its own results as it goes, so an interrupted run loses at most the current epoch of each
running job; ``bioscale run`` on the same grid resumes it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from bioscale import interrupts
from bioscale import threads as cpu_threads
from bioscale.claims import DEFAULT_TIMEOUT_S as DEFAULT_LEASE_TIMEOUT_S
from bioscale.errors import BioscaleError
from bioscale.events import Event, EventHandler, JobFinished, JobStarted, ignore
from bioscale.interrupts import Interrupted
from bioscale.job import Job
from bioscale.spec import ExecutorSpec, JobResult
from bioscale.store import Store


class Executor(ABC):
    @abstractmethod
    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        """Run every job; a job's failure is its result, not an exception. ``on_event`` sees each job's
        ``JobStarted``, ``JobProgress``... and ``JobFinished`` (``bioscale.events``)."""


class InlineExecutor(Executor):
    """This process, one job after the other. ``Interrupted`` (Ctrl-C, SIGTERM) stops the running job,
    which records itself as resumable, and propagates."""

    def __init__(self, threads: int | None = None, lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S,
                 stack: int | None = None) -> None:
        self.threads = threads
        self.lease_timeout = lease_timeout
        self.stack = stack

    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        on_event = on_event or ignore
        results = []
        with cpu_threads.budget(cpu_threads.share(1, self.threads)):  # each job picks its threads within it
            for unit in stack_units(jobs, store, self.stack):
                for job in unit:
                    on_event(JobStarted(job.job_id, job.label, job.spec.train.epochs))
                done = run_unit(unit, store, on_event, self.lease_timeout)
                for job, result in zip(unit, done, strict=True):
                    on_event(_finished(job, result))
                results += done
        return results


class LocalExecutor(Executor):
    """Pools of worker processes on this machine (pebble's ``ProcessPool``), one job per slot: without GPUs,
    CPU slots that share the cores; with GPUs, ``jobs_per_gpu`` slots per GPU (one MNIST-sized job leaves a
    modern GPU almost idle), each worker pinned to its GPU with ``CUDA_VISIBLE_DEVICES`` (one pool per GPU).

    Isolation: a worker that dies (OOM killer, segfault) fails only its own job; pebble replaces it and the
    other jobs go on (``concurrent.futures`` breaks the whole pool instead). The parent hands out at most one
    job per slot, so nothing waits inside a pool when a stop signal comes: on ``Interrupted`` it sends
    every worker SIGTERM (each records its job as resumable and releases its lease), waits up to
    ``STOP_WAIT_S`` for them, and kills what is left. Workers watch their parent and stop if it dies.
    """

    STOP_WAIT_S = 8.0

    def __init__(self, workers: int | None = None, threads: int | None = None,
                 lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S, jobs_per_gpu: int = 1,
                 stack: int | None = None) -> None:
        self.workers = workers
        self.threads = threads
        self.lease_timeout = lease_timeout
        self.jobs_per_gpu = jobs_per_gpu
        self.stack = stack

    def layout(self) -> list[str | None]:
        """One entry per worker slot: the ``CUDA_VISIBLE_DEVICES`` value that pins it, None for a CPU slot.
        ``workers`` caps the slots; without GPUs it defaults to half the CPUs this process may use."""
        gpus = visible_gpus()
        if gpus:
            slots: list[str | None] = [g for g in gpus for _ in range(self.jobs_per_gpu)]
            return slots[: self.workers] if self.workers else slots
        return [None] * (self.workers or max(1, cpu_threads.cpus_available() // 2))

    def threads_per_job(self, workers: int) -> int:
        """The most threads a job may use (``bioscale.threads``: a small job uses fewer): ``threads``, else the
        available CPUs shared among ``workers``. Fixed by the executor's settings, never by how many jobs are
        left, so a resumed job computes with the same thread count as an uninterrupted one."""
        return cpu_threads.share(workers, self.threads).limit

    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        from pebble import ProcessExpired, ProcessPool

        from bioscale.catalog import plugins

        on_event = on_event or ignore
        layout = self.layout()
        budget = cpu_threads.share(len(layout), self.threads)
        ctx = mp.get_context("spawn")  # CUDA and fork do not mix
        events = ctx.Queue()
        started: set[str] = set()

        def emit(event: Event) -> None:
            if isinstance(event, JobStarted):
                started.add(event.job_id)
            on_event(event)

        results: list[JobResult] = []
        todo = stack_units(jobs, store, self.stack, gpu=layout[0] is not None)
        free = list(range(len(layout)))
        running: dict[Any, tuple[list[Job], list[int]]] = {}
        pools = {pin: ProcessPool(max_workers=layout.count(pin), context=ctx, initializer=_init_worker,
                                  initargs=(events, plugins(), os.getpid(), pin))
                 for pin in dict.fromkeys(layout)}
        try:
            while todo or running:
                while todo:  # first come, first served: a job waiting for whole GPUs is not overtaken
                    slots = take_slots(layout, free, todo[0][0])
                    if slots is None:
                        break
                    unit = todo.pop(0)
                    if not slots:  # asks for more GPUs than this machine has (a stack is of one-process jobs)
                        job = unit[0]
                        result = _record_failure(job, store, _too_many_gpus(job, layout))
                        emit(JobStarted(job.job_id, job.label, job.spec.train.epochs))
                        on_event(_finished(job, result))
                        results.append(result)
                        continue
                    free[:] = [i for i in free if i not in slots]
                    gpus = ",".join(dict.fromkeys(layout[i] for i in slots if layout[i] is not None)) or None
                    # the job's share of the cores: what `num_workers: auto` divides
                    cpus = max(1, cpu_threads.cpus_available() * len(slots) // len(layout))
                    future = pools[layout[slots[0]]].schedule(
                        _run_in_worker, args=(unit, str(store.root), budget, self.lease_timeout, gpus, cpus))
                    running[future] = (unit, slots)
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, emit)  # a finished job's events are all queued before its result arrives
                for future in done:
                    unit, slots = running.pop(future)
                    free.extend(slots)
                    try:
                        outcomes = future.result()
                    except ProcessExpired as exc:  # the worker died: its jobs fail, the pool goes on
                        why = f"worker process died ({_exit_reason(exc.exitcode)})"
                        outcomes = [_record_failure(job, store, why) for job in unit]
                    except Exception as exc:
                        why = f"worker error: {type(exc).__name__}: {exc}"
                        outcomes = [_record_failure(job, store, why) for job in unit]
                    for job, result in zip(unit, outcomes, strict=True):
                        if job.job_id not in started:  # died before it could say so: keep the event order
                            emit(JobStarted(job.job_id, job.label, job.spec.train.epochs))
                        on_event(_finished(job, result))
                        results.append(result)
        except Interrupted:
            self._stop(events, emit)
            raise
        finally:
            for pool in pools.values():
                pool.close()
                pool.stop()
            for pool in pools.values():
                pool.join(timeout=self.STOP_WAIT_S)
        return results

    def _stop(self, events: Any, emit: EventHandler) -> None:
        """SIGTERM every worker at once (each records and releases its job), wait, then let pebble kill."""
        import psutil

        procs = psutil.Process().children()
        workers = [p for p in procs if _is_worker(p)]
        for proc in workers:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        psutil.wait_procs(workers, timeout=self.STOP_WAIT_S)
        _drain(events, emit)


def take_slots(layout: list[str | None], free: list[int], job: Job) -> list[int] | None:
    """The slots ``job`` runs in, if they are free now (None: wait; []: it can never run here). A job of
    one process takes one slot; a job of N processes (``train.distributed``) on a GPU machine takes N whole
    GPUs, every slot of each, so packed jobs never share a GPU with its ranks. On the CPU, its ranks share
    the cores of one slot."""
    from bioscale.distributed import world_size

    n = world_size(job.spec)
    if n == 1 or layout[0] is None:
        return free[:1] or None
    by_gpu: dict[str | None, list[int]] = {}
    for i, pin in enumerate(layout):
        by_gpu.setdefault(pin, []).append(i)
    if n > len(by_gpu):
        return []
    whole = [g for g, idx in by_gpu.items() if all(i in free for i in idx)]
    return [i for g in whole[:n] for i in by_gpu[g]] if len(whole) >= n else None


def _too_many_gpus(job: Job, layout: list[str | None]) -> str:
    gpus = len(dict.fromkeys(layout))
    return (f"the job asks for {job.spec.train.distributed.nproc_per_node} processes, one per GPU, and this machine "
            f"lets bioscale use {gpus} GPU(s). Lower train.distributed.nproc_per_node, or run it where there are "
            "enough GPUs (e.g. --executor slurm --gpus-per-job N).")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries for the workers it pins."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return names[:count]


def _is_worker(proc: Any) -> bool:
    """Our pool's workers, not the multiprocessing resource tracker."""
    import psutil

    try:
        return "resource_tracker" not in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}, e.g. the out-of-memory killer"
    return f"exit code {code}"


def _record_failure(job: Job, store: Store, error: str) -> JobResult:
    """Record a job the executor could not run (a dead worker, too few GPUs) as failed; its finished
    epochs stay on disk, and a re-run resumes it. A job that finished before its worker died stays finished."""
    try:
        return store.job_dir(job.grid, job.job_id).record_failure(job.grid, error)
    except OSError:
        return JobResult(job_id=job.job_id, grid=job.grid, status="failed", error=error)


def _finished(job: Job, result: JobResult) -> JobFinished:
    return JobFinished(job.job_id, job.label, result.status, result.test_error, result.error,
                       result.metrics.get("ap"))


_EVENTS: Any = None
_STOPPING = False
_IN_JOB = False


def _init_worker(events: Any, plugins: list[str], parent: int, pin: str | None) -> None:
    """In each worker: its GPU (before torch is imported, so CUDA sees only that one), events queue,
    plugins, stop signals, and a watch on the parent."""
    global _EVENTS
    if pin is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = pin
    from bioscale.catalog import load_plugins

    _EVENTS = events
    if plugins:
        load_plugins(plugins)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stop: inside a job, raise ``Interrupted`` (the job records itself as resumable and releases its
    lease, then the worker exits); between jobs, exit at once. Later signals are ignored."""
    global _STOPPING
    if _STOPPING:
        return
    _STOPPING = True
    if _IN_JOB:
        interrupts.interrupt(signum)  # raises, after the store write in progress if there is one
        return
    os._exit(128 + signum)


def _watch_parent(parent: int) -> None:
    """If the parent dies (kill -9), stop like on SIGTERM: nothing keeps training orphaned."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _run_in_worker(unit: list[Job], root: str, budget: cpu_threads.Budget, lease_timeout: float,
                   gpus: str | None, cpus: int | None = None) -> list[JobResult]:
    global _IN_JOB
    cpu_threads.set_budget(budget)
    if gpus is not None:  # the GPUs this job's ranks may use (torchrun inherits it), whole GPUs for DDP
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if cpus is not None:  # this job's share of the cores, which `train.num_workers: auto` divides
        os.environ["BIOSCALE_JOB_CPUS"] = str(cpus)
    put = _EVENTS.put if _EVENTS is not None else None
    _IN_JOB = True
    try:
        if _STOPPING:
            raise Interrupted(signal.SIGTERM)
        if put is not None:
            for job in unit:
                put(JobStarted(job.job_id, job.label, job.spec.train.epochs))
        return run_unit(unit, Store(root), put, lease_timeout)
    except Interrupted as exc:  # the job is recorded and its lease released: go now
        # Progress events still buffered are dropped: flushing them could block forever on a full pipe
        # whose reader (a killed parent) is gone; the parent reports the job from the store.
        os._exit(exc.exit_code)
    finally:
        _IN_JOB = False


def run_unit(unit: list[Job], store: Store, on_event: EventHandler | None, lease_timeout: float) -> list[JobResult]:
    """Run one job (``bioscale.distributed.run_job``: this process, or torchrun for a DDP job) or one stack of
    jobs (``bioscale.stack_train.run_stack``); a result per job."""
    if len(unit) == 1:
        from bioscale.distributed import run_job

        return [run_job(unit[0], store, on_event, lease_timeout)]
    from bioscale.stack_train import run_stack

    return run_stack(unit, store, on_event, lease_timeout)  # type: ignore[arg-type]


def stack_units(jobs: list[Job], store: Store, size: int | None, gpu: bool | None = None) -> list[list[Job]]:
    """The jobs as stacks (``bioscale.stack_groups.plan_stacks``) of at most ``size`` members (None: the
    device's default, ``stack_groups.default_size``); each job alone when that is 1."""
    from bioscale.stack_groups import default_size, plan_stacks

    size = size if size is not None else default_size(gpu if gpu is not None else bool(visible_gpus()))
    if size == 1 or len(jobs) < 2:
        return [[job] for job in jobs]
    from bioscale import cadence
    from bioscale.stack_train import unsupported

    def start(job: Job) -> int:  # the epoch a resume starts from: members start together
        return cadence.last_saved(job.spec.train, len(store.job_dir(job.grid, job.job_id).read_metrics()))

    return plan_stacks(jobs, size, start=start, stackable=lambda job: unsupported(job.spec))


def _drain(events: Any, on_event: EventHandler) -> None:
    while True:
        try:
            event = events.get_nowait()
        except (queue.Empty, OSError, EOFError):
            return
        on_event(event)


EXECUTOR_PARAMS: dict[str, set[str]] = {"inline": {"threads", "stack"},
                                        "local": {"workers", "threads", "jobs_per_gpu", "stack"},
                                        "slurm": {"cluster", "array_parallelism", "wait", "poll_s", "max_timeouts",
                                                  "signal_delay_s", "python", "queued_timeout_h", "stack"}}
"""Each executor's name and the parameters it takes: the one list grid validation and the CLI check."""


def executor_problem(spec: ExecutorSpec) -> str | None:
    """Why ``spec`` names no usable executor (None: it is fine). Torch-free, for validation."""
    allowed = EXECUTOR_PARAMS.get(spec.name)
    if allowed is None:
        return (f"Unknown executor {spec.name!r}. Use one of {', '.join(EXECUTOR_PARAMS)}: 'inline' (this "
                "process), 'local' (a pool of worker processes: --executor local --workers N) or 'slurm' (a "
                "Slurm job array through submitit: --executor slurm).")
    extra = set(spec.params) - allowed
    if extra:
        return f"executor {spec.name!r} takes the parameters {sorted(allowed)}, not {sorted(extra)}."
    if spec.name == "slurm":  # its parameters are not all integers; bioscale.slurm is torch- and submitit-free
        from bioscale.slurm import params_problem

        return params_problem(spec.params)
    for key, value in spec.params.items():  # workers, threads: a grid file could hold any YAML value
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"executor {spec.name!r}: {key} is a positive integer (or null: the default), not {value!r}."
    return None


def make_executor(spec: ExecutorSpec | None, lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S) -> Executor:
    """``threads`` (both) is torch's CPU threads per job (default: chosen per job, ``bioscale.threads``);
    ``workers`` (local) caps the processes and ``jobs_per_gpu`` (local) packs several jobs onto each GPU;
    ``stack`` (both) trains up to that many jobs as one stacked model (``bioscale.stack_train``)."""
    spec = spec or ExecutorSpec(name="inline")
    problem = executor_problem(spec)
    if problem:
        raise BioscaleError(problem)
    if spec.name == "local":
        return LocalExecutor(spec.params.get("workers"), spec.params.get("threads"), lease_timeout,
                             spec.params.get("jobs_per_gpu") or 1, spec.params.get("stack"))
    if spec.name == "slurm":
        from bioscale.slurm import SlurmExecutor

        return SlurmExecutor.from_params(spec.params, lease_timeout)
    return InlineExecutor(spec.params.get("threads"), lease_timeout, spec.params.get("stack"))
