"""What submitit runs for one job: in a Slurm array task, in a subprocess of submitit's local executor, or in
this process for its debug executor. Imported only there and by ``bioscale.slurm`` at submission (it needs
submitit); the task pickles by reference to this module, so the nodes must import the same bioscale.

Preemption and time limits: Slurm sends SIGUSR2 (``--signal=USR2@<signal_delay_s>``; on preemption after a
SIGTERM that submitit ignores). The task then stops the running epoch the way a Ctrl-C stops an inline run
(``bioscale.interrupts.Interrupted``: finished epochs kept, the job recorded ``pending`` and its lease
released), and only then hands over to submitit's own handler, which calls ``checkpoint()``, requeues the
same call and exits. The requeued task claims the job at once (the lease is free) and resumes from its last
finished epoch under the same job id, on any node.

A job over several nodes (``train.distributed.nnodes`` = M) is one Slurm job of M nodes with one task per
node (``--nodes=M --ntasks-per-node=1``). Each task starts torchrun for its node (``node_of``): a c10d
rendezvous served by the allocation's first node, under an id made of the bioscale job id, the Slurm job
id and ``SLURM_RESTART_COUNT``, so a requeued job meets at a fresh rendezvous. Only task 0 requeues (submitit:
Slurm then requeues the whole allocation). ``cluster: local`` runs the M "nodes" as M tasks on this machine,
meeting on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from submitit.helpers import Checkpointable

from bioscale import cadence, claims, interrupts
from bioscale import threads as cpu_threads
from bioscale.interrupts import Interrupted
from bioscale.job import Job
from bioscale.spec import JobResult
from bioscale.store import Store

if TYPE_CHECKING:
    from bioscale.distributed import Node


class JobTask(Checkpointable):
    """``JobTask()(job, root, lease_timeout, threads, plugins)`` claims, trains (or resumes) and records one job
    as every executor does (``bioscale.distributed.run_job``: this process, or torchrun over the node's GPUs
    for ``train.distributed.nproc_per_node`` > 1). It never raises for a job's failure (that is the job's
    result), so submitit's debug executor never drops into its post-mortem debugger."""

    def __call__(self, job: Job | list[Job], root: str, lease_timeout: float, threads: int | None = None,
                 plugins: tuple[str, ...] = ()) -> JobResult | list[JobResult]:
        """``job``: one job, or the jobs of one stack (trained as one model: ``bioscale.stack_train``), whose
        results come back as a list."""
        if isinstance(job, list):
            return self._stack(job, root, lease_timeout, threads, plugins)
        budget = contextlib.ExitStack()
        try:
            from bioscale.catalog import load_plugins

            run_job = _job_runner()
            if plugins:
                load_plugins(list(plugins))
            node = node_of(job)  # this task's node of a multi-node job (None: one node)
            # the task's CPUs bound the job's threads, chosen per job (bioscale.threads): a requeued run
            # computes with the same number
            budget.enter_context(cpu_threads.budget(cpu_threads.share(1, cpus_per_task=threads or _slurm_cpus())))
        except Exception as exc:  # nothing ran: say why in the job's result rather than in submitit's pickle
            return _record(job, root, lease_timeout, "failed", f"the task could not start: {type(exc).__name__}: "
                           f"{exc}")
        with budget, _stop_signals() as requeue:
            try:
                if node is not None:
                    return run_job(job, Store(root), None, lease_timeout, node)
                return run_job(job, Store(root), None, lease_timeout)
            except Interrupted as exc:  # the job is recorded as pending and its lease released
                if requeue is None:  # in-process (debug): the caller's own interrupt, let it through
                    raise
                if exc.signum == requeue.signum:
                    _requeue(job, root, lease_timeout, requeue)  # exits (or raises if not requeued)
                raise SystemExit(exc.exit_code) from None  # SIGINT: stop, resumable, no traceback
            except Exception as exc:  # not the job's own failure (run_job records those): e.g. a locked store
                return _record(job, root, lease_timeout, "failed", f"{type(exc).__name__}: {exc}")

    def _stack(self, jobs: list[Job], root: str, lease_timeout: float, threads: int | None,
               plugins: tuple[str, ...]) -> list[JobResult]:
        """The jobs of one stack, in this task; stopping and requeueing as for one job, for each member."""
        budget = contextlib.ExitStack()
        try:
            from bioscale.catalog import load_plugins
            from bioscale.stack_train import run_stack

            if plugins:
                load_plugins(list(plugins))
            budget.enter_context(cpu_threads.budget(cpu_threads.share(1, cpus_per_task=threads or _slurm_cpus())))
        except Exception as exc:
            return [_record(job, root, lease_timeout, "failed", f"the task could not start: {type(exc).__name__}: "
                            f"{exc}") for job in jobs]
        with budget, _stop_signals() as requeue:
            try:
                return run_stack(jobs, Store(root), None, lease_timeout)
            except Interrupted as exc:  # every member is recorded as pending and released
                if requeue is None:
                    raise
                if exc.signum == requeue.signum:
                    _requeue(jobs, root, lease_timeout, requeue)  # exits (or raises if not requeued)
                raise SystemExit(exc.exit_code) from None
            except Exception as exc:
                return [_record(job, root, lease_timeout, "failed", f"{type(exc).__name__}: {exc}") for job in jobs]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The same call again: every finished epoch is in the store, so the requeued task resumes from it."""
        return super().checkpoint(*args, **kwargs)


class _Requeue:
    """submitit's preemption handler (checkpoint, requeue, exit) and the signal it listens to."""

    def __init__(self, signum: int, handler: Callable[[int, Any], None]) -> None:
        self.signum = signum
        self.handler = handler


@contextlib.contextmanager
def _stop_signals() -> Iterator[_Requeue | None]:
    """Inside a submitit task process: submitit's preemption signal and SIGINT raise ``Interrupted`` (once),
    so the trainer stops cleanly; SIGTERM stays submitit's (ignored: on preemption Slurm sends it before
    SIGUSR2). Yields submitit's handler for the requeue, or None in-process (debug executor), where the
    caller's handlers stay as they are. After the job, the signals are ignored: a finished job needs no
    requeue."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local") or \
            threading.current_thread() is not threading.main_thread():
        yield None
        return
    from submitit.core.job_environment import JobEnvironment

    usr = JobEnvironment._usr_sig()
    submitit_handler = signal.getsignal(usr)
    fired: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if fired:
            return  # already stopping: let the cleanup finish
        fired.append(signum)
        interrupts.interrupt(signum)  # raises, after the store write in progress if there is one

    signal.signal(usr, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        yield _Requeue(usr, submitit_handler) if callable(submitit_handler) else None
    finally:
        if not fired:
            signal.signal(usr, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _requeue(jobs: Job | list[Job], root: str, lease_timeout: float, requeue: _Requeue) -> None:
    """Note the requeue in each job's result (a stack's members all), then let submitit checkpoint, requeue and
    exit. If it does not requeue (timed out too often, ``scontrol requeue`` failed), the jobs are recorded as
    failed, saying why."""
    jobs = jobs if isinstance(jobs, list) else [jobs]
    name = signal.Signals(requeue.signum).name
    if _task_rank() != 0:  # submitit requeues from task 0 only (the whole allocation); this task just stops
        requeue.handler(requeue.signum, None)
        return
    saved = {}
    for job in jobs:
        done = _epochs(job, root)
        saved[job.job_id] = f"{done} of {job.spec.train.epochs} epochs ({cadence.saved_note(job.spec.train, done)})"
        _record(job, root, lease_timeout, "pending",
                f"stopped by {name} (Slurm preemption or time limit) after {saved[job.job_id]}; submitit requeued "
                f"it, and it resumes from epoch {cadence.last_saved(job.spec.train, done)}")
    try:
        requeue.handler(requeue.signum, None)
    except Exception as exc:
        for job in jobs:
            _record(job, root, lease_timeout, "failed",
                    f"stopped by {name} after {saved[job.job_id]} and not requeued: "
                    f"{exc}. Raise resources.time (--time) or the executor's max_timeouts, then run `bioscale "
                    "run` again: it resumes from the last finished epoch.")
        raise


RDZV_PORTS = (20000, 32000)
"""The rendezvous port is picked in this range (below Linux's ephemeral ports) from the rendezvous id, so
every node computes the same one without talking; ``BIOSCALE_RDZV_PORT`` sets it instead."""


def node_of(job: Job) -> Node | None:
    """This task's ``bioscale.distributed.Node`` for a job over several nodes (None for one node), from
    submitit's ``JobEnvironment``: Slurm's node list and node id (``SLURM_JOB_NODELIST``, ``SLURM_NODEID``),
    or, for ``cluster: local``, the task's rank among the job's tasks, each task standing for one node."""
    from submitit import JobEnvironment

    from bioscale.distributed import Node
    from bioscale.errors import BioscaleError

    nnodes = job.spec.train.distributed.nnodes
    if nnodes <= 1:
        return None
    env = JobEnvironment()
    if env.cluster == "slurm":
        rank, count, hosts = env.node, env.num_nodes, list(env.hostnames)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
    else:  # submitit's local executor: one machine, one task per simulated node
        rank, count, hosts, restarts = env.global_rank, env.num_tasks, ["127.0.0.1"], "0"
        per = job.spec.train.distributed.nproc_per_node
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if len(visible) >= count * per:  # each simulated node its own GPUs, as on a cluster
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible[rank * per:(rank + 1) * per])
    if count != nnodes or not 0 <= rank < nnodes or not hosts:
        raise BioscaleError(
            f"the job asks for train.distributed.nnodes={nnodes} but its {env.cluster} allocation has {count} "
            f"node(s) (this is node {rank}; nodes {','.join(hosts) or '?'}): submit it with `bioscale run "
            "--executor slurm`, which asks for one task on each of nnodes nodes.")
    rdzv_id = f"{job.job_id}-{env.job_id}-{restarts}"
    port = os.environ.get("BIOSCALE_RDZV_PORT", "")
    if not port.isdigit():
        low, high = RDZV_PORTS
        port = str(low + int(hashlib.blake2b(rdzv_id.encode(), digest_size=8).hexdigest(), 16) % (high - low))
    return Node(rank=rank, nnodes=nnodes, endpoint=f"{hosts[0]}:{port}", rdzv_id=rdzv_id)


def _task_rank() -> int:
    """This task's rank among its job's tasks (0 outside submitit)."""
    with contextlib.suppress(Exception):
        from submitit import JobEnvironment

        return int(JobEnvironment().global_rank)
    return 0


def _job_runner() -> Callable[..., JobResult]:
    """``bioscale.distributed.run_job``: the job in this process, or, for a job over several GPUs of this node
    (``train.distributed.nproc_per_node``), under torchrun; ``bioscale.train.run_job`` where that module is
    absent."""
    try:
        from bioscale.distributed import run_job
    except ModuleNotFoundError as exc:
        if exc.name != "bioscale.distributed":
            raise
        from bioscale.train import run_job
    return run_job


def _epochs(job: Job, root: str) -> int:
    return len(Store(root).job_dir(job.grid, job.job_id).read_metrics())


def _record(job: Job, root: str, lease_timeout: float, status: str, note: str) -> JobResult:
    """Set the job's status and note in result.json, holding its lease for the write (another process may
    have claimed it meanwhile: then that process owns the result, and this one writes nothing; a finished job
    keeps its result)."""
    jdir = Store(root).job_dir(job.grid, job.job_id)
    result = JobResult(job_id=job.job_id, grid=job.grid, status=status, error=note)  # type: ignore[arg-type]
    try:
        claim = claims.acquire(jdir.path, lease_timeout)
        if claim is None:
            return result
        with claim:
            finished = jdir.finished()
            if finished is not None:  # a late stop or failure does not undo a final outcome
                return finished
            claim.note = note.split(";")[0]
            previous = jdir.read_result()
            if previous is not None:
                result = previous.model_copy(update={"status": status, "error": note})
            elif status == "pending":
                return result  # nothing recorded yet: a job without a result is pending anyway
            jdir.write_result(result)
    except Exception as exc:  # the note is a courtesy; the job's state is already right on disk
        print(f"bioscale: could not record the job's note ({type(exc).__name__}: {exc})", file=sys.stderr)
    return result


def _slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
