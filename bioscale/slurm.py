"""The ``slurm`` executor: the jobs still to run go to Slurm as job arrays through submitit, one array task per
job and one array per distinct ``resources`` set; ``executor.params.cluster: local`` (subprocesses on this
machine) or ``debug`` (this process) run the very same code path through submitit's local and debug
executors, for tests and for trying a grid without a cluster.

Where things are, for a grid ``g`` in results ``R``:

- ``R/g/<job_id>/submitted.json``: the latest submission of the job (cluster, scheduler job id such as
  ``1234_5``, when, by whom, the submitit folder). It keeps a grid submitted twice from queueing a job
  twice: a job whose record names a live scheduler job (``squeue``; a live process for ``cluster: local``)
  is left alone. Once a task runs, its lease (``bioscale.claims``) keeps any second copy from training.
- ``R/g/<job_id>/slurm/``: links to the job's submitit logs (``<scheduler id>.out``/``.err``). submitit
  writes one folder per executor and names files by ``%A_%a`` (an array cannot have a folder per task), so
  the files live in ``R/g/.submitit/<submission>/`` and each job links to its own.
- ``result.json``'s ``provenance.scheduler``: the scheduler job that ran it (``bioscale.provenance``).

Importing this module imports neither torch nor submitit: grid validation and ``bioscale status`` use it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, PositiveFloat, PositiveInt, ValidationError

from bioscale import cadence
from bioscale.claims import DEFAULT_TIMEOUT_S as DEFAULT_LEASE_TIMEOUT_S
from bioscale.claims import process_alive
from bioscale.errors import BioscaleError
from bioscale.events import EventHandler, JobFinished, JobProgress, JobStarted, ignore
from bioscale.executors import Executor, stack_units
from bioscale.explain import explain
from bioscale.interrupts import Interrupted
from bioscale.job import Job
from bioscale.spec import JobResult, Resources, Strict
from bioscale.store import RESULT, Store, atomic_write_text

if TYPE_CHECKING:
    from bioscale.store import JobDir

CLUSTERS = ("slurm", "local", "debug")
SUBMITTED = "submitted.json"
LOGS = "slurm"
"""Each job's folder of links to its submitit logs."""
SUBMITIT_DIR = ".submitit"
"""Per grid: submitit's folders, one per submission."""
LOCAL_DEFAULT_TIME = "7-00:00:00"
"""Time limit of a ``cluster: local`` task without ``resources.time`` (submitit's own default is 2 minutes)."""
SUBMITTING_GRACE_S = 600.0
"""A submission in progress on another host counts as queued for this long (its sbatch may be slow)."""
FINAL = ("done", "failed", "diverged")
SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
               "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT"}
"""squeue states of a job that will not run again (a requeued one shows PENDING or REQUEUED)."""


class SlurmParams(Strict):
    """``executor: {name: slurm, params: {...}}``: how bioscale uses the cluster (what each task asks for is
    ``resources:``)."""

    cluster: Literal["slurm", "local", "debug"] = "slurm"
    """slurm: sbatch; local: submitit's subprocesses on this machine; debug: this process, one job after another."""
    array_parallelism: PositiveInt | None = None
    """Array tasks running at once (``%N`` of ``--array``; submitit's default 256). cluster local honours it
    while ``bioscale run`` waits; debug runs one at a time."""
    wait: bool = False
    """Wait for the jobs, showing progress from the store (debug always waits: it runs in this process)."""
    poll_s: PositiveFloat | None = None
    """Seconds between looks at the store and the queue while waiting (default: 30 for slurm, 1 otherwise)."""
    max_timeouts: int = Field(10, ge=0)
    """How often a job may reach its time limit and requeue itself (preemptions do not count)."""
    signal_delay_s: int = Field(90, ge=1)
    """Seconds between Slurm's warning signal and the time limit (``--signal=USR2@N``)."""
    python: str | None = None
    """The command that starts Python on the nodes (default: this interpreter), e.g. a container wrapper."""
    queued_timeout_h: PositiveFloat = 72.0
    """Where ``squeue`` cannot tell (or for cluster local, from another host), a submitted job counts as
    queued for this many hours; delete its ``submitted.json`` to submit it again sooner."""
    stack: PositiveInt | None = None
    """Jobs a task trains as one stacked model (``bioscale.stack_train``; ``--stack``). Default: 16 for tasks
    with GPUs (``resources.gpus_per_job``), 1 (a job per task) for CPU tasks."""


def params_problem(params: dict[str, Any]) -> str | None:
    """Why ``params`` are not valid slurm executor parameters (None: they are). For grid validation."""
    try:
        SlurmParams.model_validate(params)
    except ValidationError as exc:
        return f"executor 'slurm': {explain(exc, SlurmParams, prefix='params')}"
    return None


# -- submission records ----------------------------------------------------------------------------------
class Submission(BaseModel):
    """``submitted.json``: one job's latest submission."""

    cluster: str
    state: Literal["submitting", "submitted", "ended"] = "submitting"
    job_id: str | None = None
    """The scheduler's id: ``1234_5`` (Slurm array task), the controller's pid (local), ``DEBUG_...``."""
    array_job_id: str | None = None
    array_task_id: str | None = None
    folder: str
    """submitit's folder (pickles, logs)."""
    stdout: str | None = None
    stderr: str | None = None
    host: str
    user: str
    pid: int
    """The submitting process."""
    pid_started: float | None = None
    controller_started: float | None = None
    """cluster local: the start time of the controller process whose pid is ``job_id``."""
    submitted_at: float
    ended_at: float | None = None
    resources: dict[str, Any] = Field(default_factory=dict)
    note: str = ""


def read_submission(path: Path) -> Submission | None:
    """The job's submission record (``path`` is its folder), or None (none, or unreadable)."""
    try:
        return Submission.model_validate_json((path / SUBMITTED).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def write_submission(path: Path, record: Submission) -> None:
    atomic_write_text(path / SUBMITTED, record.model_dump_json(indent=2))


def end_submission(path: Path, job_id: str | None, note: str = "") -> None:
    """Mark the job's record ended (if it is still the submission ``job_id``): it no longer counts as queued."""
    record = read_submission(path)
    if record is None or record.state == "ended" or record.job_id != job_id:
        return
    with contextlib.suppress(OSError):
        write_submission(path, record.model_copy(update={"state": "ended", "ended_at": time.time(),
                                                         "note": note or record.note}))


class Queue:
    """Which recorded submissions are still queued or running: ``squeue`` for Slurm (one call per look),
    the controller process for cluster local, the submitting process while a submission is in progress;
    where none of these can tell, the record counts for ``queued_timeout_h``."""

    def __init__(self, queued_timeout_h: float = 72.0, squeue: str | None = None) -> None:
        self.queued_timeout_s = queued_timeout_h * 3600
        self.squeue = squeue if squeue is not None else shutil.which("squeue")

    def live(self, records: Iterable[Submission]) -> set[str]:
        """The ``job_id`` of each live record (``submitting`` ones by their folder-independent key ``pid``)."""
        records = list(records)
        users = {r.user for r in records if r.cluster == "slurm" and r.state == "submitted"}
        states = self.slurm_states(users) if users else None
        out = set()
        for record in records:
            if self.is_live(record, states):
                out.add(record.job_id or f"submitting-{record.pid}")
        return out

    def is_live(self, record: Submission, slurm_states: dict[str, str] | None = None) -> bool:
        here = record.host == socket.gethostname()
        age = time.time() - record.submitted_at
        if record.state == "ended" or record.cluster == "debug":  # debug runs inside the submitting call
            return False
        if record.state == "submitting":
            return process_alive(record.pid, record.pid_started) if here else age < SUBMITTING_GRACE_S
        if record.cluster == "local":
            if here and record.job_id and record.job_id.isdigit():
                return process_alive(int(record.job_id), record.controller_started)
            return age < self.queued_timeout_s
        if slurm_states is None:  # no squeue here, or it failed: trust the record for a while
            return age < self.queued_timeout_s
        state = slurm_states.get(record.job_id or "")
        return state is not None and state not in SLURM_ENDED

    def slurm_states(self, users: Iterable[str]) -> dict[str, str] | None:
        """{job id: state} of every job of ``users`` that squeue lists (array tasks one by one), or None if
        squeue is not available or fails."""
        if not self.squeue:
            return None
        states: dict[str, str] = {}
        for user in sorted(users):
            try:
                proc = subprocess.run([self.squeue, "--noheader", "--array", "--format=%i|%T", "--user", user],
                                      capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                return None
            if proc.returncode != 0:
                return None
            for line in proc.stdout.splitlines():
                job_id, _, state = line.strip().partition("|")
                if job_id:
                    states[job_id] = state.strip().upper()
        return states


# -- mapping resources to submitit ---------------------------------------------------------------------
def submitit_parameters(resources: Resources | None, params: SlurmParams, name: str,
                        nnodes: int = 1) -> dict[str, Any]:
    """What ``AutoExecutor.update_parameters`` receives for one array: submitit's generic names where it has
    them (translated for each cluster), ``slurm_*`` for the rest (ignored by the local and debug clusters).

    A job over ``nnodes`` nodes asks Slurm for ``nnodes`` nodes with one task each (each task starts torchrun
    for its node, ``bioscale.slurm_task``), ``cpus_per_task`` CPUs and ``gpus_per_job / nnodes`` GPUs on every
    node; cluster local runs ``nnodes`` tasks on this machine instead (submitit's local executor has one
    node)."""
    r = resources or Resources()
    local = params.cluster != "slurm"
    out: dict[str, Any] = {"name": name, "nodes": 1 if local else nnodes, "tasks_per_node": nnodes if local else 1,
                           "timeout_min": r.minutes or Resources(time=LOCAL_DEFAULT_TIME).minutes,
                           "slurm_signal_delay_s": params.signal_delay_s}
    if r.gpus_per_job:
        out["gpus_per_node"] = r.gpus_per_job if local else max(1, r.gpus_per_job // nnodes)
    optional = {"cpus_per_task": r.cpus_per_task, "mem_gb": r.mem, "slurm_partition": r.partition,
                "slurm_account": r.account, "slurm_qos": r.qos, "slurm_additional_parameters": dict(r.sbatch) or None,
                "slurm_setup": list(r.setup) or None, "slurm_array_parallelism": params.array_parallelism}
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def describe_resources(resources: Resources | None) -> str:
    r = resources or Resources()
    parts = [f"partition {r.partition}" if r.partition else "",
             f"{r.gpus_per_job} GPU{'s' if r.gpus_per_job != 1 else ''}" if r.gpus_per_job else "",
             f"{r.cpus_per_task} CPUs" if r.cpus_per_task else "", f"{r.mem:g} GB" if r.mem else "",
             f"time {r.time}" if r.time else "", f"account {r.account}" if r.account else "",
             f"qos {r.qos}" if r.qos else "", *(f"--{k}" + ("" if v is True else f"={v}") for k, v in r.sbatch.items())]
    return ", ".join(p for p in parts if p) or "cluster defaults"


def cli_resources(partition: str | None = None, gpus_per_job: int | None = None, cpus_per_task: int | None = None,
                  mem: str | None = None, time: str | None = None, account: str | None = None,
                  qos: str | None = None, sbatch: Sequence[str] = ()) -> dict[str, Any]:
    """``bioscale run``'s resource flags as ``resources.*`` sets, applied to every job after the grid's
    overrides (like ``--set``). ``--sbatch`` takes ``KEY=VALUE``, ``--KEY=VALUE`` or a flag ``KEY``."""
    given = {"partition": partition, "gpus_per_job": gpus_per_job, "cpus_per_task": cpus_per_task, "mem": mem,
             "time": time, "account": account, "qos": qos}
    out = {f"resources.{k}": v for k, v in given.items() if v is not None}
    for item in sbatch:
        key, sep, value = item.strip().partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise BioscaleError(f"--sbatch {item!r}: give an sbatch long option as KEY=VALUE (e.g. --sbatch "
                                "constraint=a100) or a flag KEY (e.g. --sbatch exclusive).")
        out[f"resources.sbatch.{key}"] = value if sep else True
    return out


# -- the executor ------------------------------------------------------------------------------------------
def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise BioscaleError("executor 'slurm' needs submitit, which is not installed in this environment. "
                            "Install it with `pip install 'bioscale[slurm]'` (or `pip install submitit`), then "
                            "run the same command again.") from None
    return submitit


@dataclass
class Tracked:
    """A job this call submitted or found queued, followed until it ends."""

    job: Job
    record: Submission
    handle: Any = None
    """submitit's Job, for jobs this call submitted."""
    before: bytes | None = None
    """result.json when it was submitted: a final status counts only once it changed."""
    seen: int = 0
    """Epochs already shown (a resumed job starts from those it had)."""
    started: bool = False
    result: JobResult | None = None


@dataclass
class ArraySubmission:
    """One submission: an array (Slurm) or a group of tasks (local, debug) sharing one resource set."""

    cluster: str
    resources: Resources | None
    folder: Path
    job_ids: list[str] = field(default_factory=list)

    @property
    def array_id(self) -> str | None:
        ids = {j.split("_")[0] for j in self.job_ids if "_" in j}
        return ids.pop() if len(ids) == 1 else None


class SlurmExecutor(Executor):
    """Submits jobs through submitit (see the module's docstring); ``run`` returns after submitting (every job
    ``pending``) or, with ``wait``, once every job has ended, as the inline executor does."""

    def __init__(self, params: SlurmParams | None = None, lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S,
                 queue: Queue | None = None) -> None:
        self.params = params or SlurmParams()
        self.lease_timeout = lease_timeout
        self.queue = queue or Queue(self.params.queued_timeout_h)
        self.submissions: list[ArraySubmission] = []
        """What the last ``run`` submitted, for the command line to print."""
        self.already_queued: list[tuple[Job, Submission]] = []
        """Jobs the last ``run`` left alone because a live scheduler job has them."""
        self._unsent: list[Any] = []

    @classmethod
    def from_params(cls, params: dict[str, Any], lease_timeout: float = DEFAULT_LEASE_TIMEOUT_S) -> SlurmExecutor:
        """Validate the grid's/CLI's parameters and that this machine can submit (submitit installed; for
        cluster slurm, Slurm's commands on PATH), before anything is written."""
        problem = params_problem(params)
        if problem:
            raise BioscaleError(problem)
        parsed = SlurmParams.model_validate(params)
        _import_submitit()
        if parsed.cluster == "slurm":
            missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
            if missing:
                raise BioscaleError(
                    f"executor 'slurm' (cluster slurm) needs Slurm's commands, and {' and '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not on PATH here. Run bioscale on the cluster's login "
                    "node, or try the grid on this machine through the same code path with "
                    "`executor: {name: slurm, params: {cluster: local}}` in the grid.")
        return cls(parsed, lease_timeout)

    @property
    def cluster(self) -> str:
        return self.params.cluster

    @property
    def runs_here(self) -> bool:
        """False for Slurm: preflight then skips device checks (a login node has no GPU)."""
        return self.cluster != "slurm"

    @property
    def multi_node(self) -> bool:
        """Jobs over several nodes run here: one torchrun per node (task) of the allocation."""
        return True

    @property
    def waits(self) -> bool:
        return self.params.wait or self.cluster == "debug"

    @property
    def poll_s(self) -> float:
        return self.params.poll_s or (30.0 if self.cluster == "slurm" else 1.0)

    def check(self, jobs: Sequence[Job]) -> None:
        """Problems with the jobs' resources that would only show at sbatch time (or on the nodes)."""
        multi = [j for j in jobs if _nodes(j) > 1]
        if multi and self.cluster == "debug":
            raise BioscaleError(
                f"{len(multi)} job(s) ask for train.distributed.nnodes > 1 (first: {multi[0].label}), and cluster "
                "debug runs every task in this process, one after another: the nodes could never meet. Use "
                "cluster local (each node a task on this machine) or slurm.")
        if self.cluster == "slurm":
            uneven = [j for j in multi if j.spec.train.device != "cpu" and
                      (_gpus(j) % _nodes(j) or _gpus(j) // _nodes(j) < _processes(j))]
            if uneven:
                job = uneven[0]
                want = _nodes(job) * _processes(job)
                raise BioscaleError(
                    f"{len(uneven)} job(s) run on {_nodes(job)} nodes x {_processes(job)} processes "
                    f"(train.distributed; first: {job.label}), so they need {want} GPUs in all "
                    f"({_processes(job)} on each node), but ask for resources.gpus_per_job: "
                    f"{job.resources.gpus_per_job if job.resources else None}. Set --gpus-per-job {want} (the "
                    "job's total, a multiple of nnodes: Slurm gets --gpus-per-node with each node's share), or "
                    "train.device=cpu.")
        if self.cluster == "slurm":
            short = [j for j in jobs if j.spec.train.device != "cpu" and _processes(j) > 1 and _nodes(j) == 1 and
                     ((j.resources.gpus_per_job if j.resources else None) or 0) < _processes(j)]
            if short:
                job = short[0]
                raise BioscaleError(
                    f"{len(short)} job(s) run {_processes(job)} processes on their node "
                    f"(train.distributed.nproc_per_node; first: {job.label}) but ask Slurm for fewer GPUs "
                    f"(resources.gpus_per_job: {job.resources.gpus_per_job if job.resources else None}). Set "
                    f"--gpus-per-job {_processes(job)} (or resources.gpus_per_job), or train.device=cpu for "
                    "processes on CPUs.")
            untimed = [j for j in jobs if j.resources is None or j.resources.time is None]
            if untimed:
                raise BioscaleError(
                    f"{len(untimed)} of {len(jobs)} jobs have no time limit (first: {untimed[0].label}). Slurm "
                    "jobs need one (submitit would ask for 5 minutes): set `resources: {time: '24:00:00'}` in "
                    "the grid or --time 24:00:00. A job that reaches it saves its epochs, requeues itself and "
                    f"resumes, up to max_timeouts ({self.params.max_timeouts}) times.")

    # -- run ---------------------------------------------------------------------------------------------
    def run(self, jobs: list[Job], store: Store, on_event: EventHandler | None = None) -> list[JobResult]:
        on_event = on_event or ignore
        submitit = _import_submitit()
        self.check(jobs)
        self.submissions, self.already_queued = [], []
        if not jobs:
            return []
        grid = jobs[0].grid
        folder = (store.root / grid / SUBMITIT_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}")
        folder = folder.absolute()
        groups: dict[str, list[Job]] = {}
        for job in jobs:  # one array per resource set and node count (an array's tasks all look alike)
            key = (job.resources.model_dump_json() if job.resources is not None else "") + f"|{_nodes(job)}"
            groups.setdefault(key, []).append(job)
        executors = [(self._submitit_executor(submitit, folder, group[0].resources, grid, _nodes(group[0])), group)
                     for group in groups.values()]  # every group's parameters checked before any submission
        tracked: list[Tracked] = []
        waves: list[tuple[Any, list[Job], ArraySubmission]] = []
        for executor, group in executors:
            fresh = self._reserve(group, store, folder)
            if not fresh:
                continue
            array = ArraySubmission(self.cluster, group[0].resources, folder)
            self.submissions.append(array)
            units = stack_units(fresh, store, self.params.stack, gpu=_gpus(fresh[0]) > 0)  # a task per unit
            if self.cluster == "local" and self.params.wait:
                waves.append((executor, units, array))  # submitted while waiting, array_parallelism at a time
            else:
                tracked += self._submit(executor, units, store, array)
        if not self.submissions:
            with contextlib.suppress(OSError):
                folder.rmdir()  # every job was already queued: no submitit folder needed
        if not self.waits:
            return [_queued_result(t.job, t.record) for t in tracked] + \
                   [_queued_result(job, rec, "already queued, left alone") for job, rec in self.already_queued]
        if self.cluster == "debug":
            return self._run_debug(tracked, store, on_event)
        for job, record in self.already_queued:
            tracked.append(Tracked(job, record, before=_result_bytes(store, job), seen=_epochs_done(store, job)))
        try:
            return self._wait(tracked, waves, store, on_event)
        except Interrupted as exc:
            exc.message = self._stopped_message(exc, tracked, waves, store)
            raise

    def _submitit_executor(self, submitit: Any, folder: Path, resources: Resources | None, grid: str,
                           nnodes: int = 1) -> Any:
        kwargs: dict[str, Any] = {}
        if self.cluster in ("slurm", "local"):
            kwargs[f"{self.cluster}_max_num_timeout"] = self.params.max_timeouts
            if self.params.python:
                kwargs[f"{self.cluster}_python"] = self.params.python
        parameters = submitit_parameters(resources, self.params, f"bioscale-{grid}", nnodes)
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster, **kwargs)
            executor.update_parameters(**parameters)
        except (ValueError, NameError, AssertionError, RuntimeError, TypeError) as exc:
            raise BioscaleError(f"submitit refused the resources {describe_resources(resources)} for cluster "
                                f"{self.cluster}: {' '.join(str(exc).split())}") from None
        return executor

    def _reserve(self, group: list[Job], store: Store, folder: Path) -> list[Job]:
        """Write a ``submitting`` record for each job not already queued (checked and written under a lock, so
        two concurrent runs never both submit a job); returns the jobs to submit."""
        from filelock import FileLock

        fresh: list[Job] = []
        me = os.getpid()
        started = _process_started(me)
        records = {}
        for job in group:
            jdir = store.job_dir(job.grid, job.job_id)
            records[job.job_id] = read_submission(jdir.path)
        live = self.queue.live(r for r in records.values() if r is not None)
        for job in group:
            jdir = store.job_dir(job.grid, job.job_id)
            with FileLock(jdir.path / ".submit.lock", timeout=60):
                record = read_submission(jdir.path)
                if record is not None and record != records[job.job_id]:  # changed since the look: look again
                    live |= self.queue.live([record])
                if record is not None and (record.job_id or f"submitting-{record.pid}") in live and \
                        not (record.pid == me and record.state == "submitting"):
                    self.already_queued.append((job, record))
                    continue
                write_submission(jdir.path, Submission(
                    cluster=self.cluster, folder=str(folder), host=socket.gethostname(), user=_user(), pid=me,
                    pid_started=started, submitted_at=time.time(),
                    resources=job.resources.model_dump(exclude_defaults=True) if job.resources else {}))
            fresh.append(job)
        return fresh

    def _submit(self, executor: Any, units: list[list[Job]], store: Store, array: ArraySubmission
                ) -> list[Tracked]:
        """One array (Slurm) or one task per unit (local, debug), a unit being one job or one stack of jobs
        (``stack``); then each job's record (its task's id) and log links."""
        from bioscale.catalog import plugins
        from bioscale.slurm_task import JobTask

        root = str(store.root.absolute())
        jobs = [job for unit in units for job in unit]
        befores = [_result_bytes(store, job) for job in jobs]
        try:
            with executor.batch():
                handles = [executor.submit(JobTask(), unit[0] if len(unit) == 1 else unit, root, self.lease_timeout,
                                           unit[0].resources.cpus_per_task if unit[0].resources else None,
                                           tuple(plugins())) for unit in units]
        except Exception as exc:
            for job in jobs:
                end_submission(store.job_dir(job.grid, job.job_id).path, None, "submission failed")
            raise BioscaleError(f"submitting {len(jobs)} job(s) to cluster {self.cluster} failed: "
                                f"{' '.join(str(exc).split())[:2000]}") from None
        tracked = []
        task_of = [handle for unit, handle in zip(units, handles, strict=True) for _ in unit]
        for job, handle, before in zip(jobs, task_of, befores, strict=True):
            record = self._record(store, job, handle)
            if record.job_id not in array.job_ids:
                array.job_ids.append(record.job_id or "")
            tracked.append(Tracked(job, record, handle, before, _epochs_done(store, job)))
        return tracked

    def _record(self, store: Store, job: Job, handle: Any) -> Submission:
        jdir = store.job_dir(job.grid, job.job_id)
        job_id = str(handle.job_id)
        array_id, _, task = job_id.partition("_") if self.cluster == "slurm" else (None, "", "")
        paths = handle.paths
        record = read_submission(jdir.path) or Submission(
            cluster=self.cluster, folder="", host=socket.gethostname(), user=_user(), pid=os.getpid(),
            submitted_at=time.time())
        record = record.model_copy(update={
            "state": "submitted", "job_id": job_id, "array_job_id": array_id if task else None,
            "array_task_id": task or None, "folder": str(paths.folder), "stdout": str(paths.stdout),
            "stderr": str(paths.stderr), "submitted_at": time.time(),
            "controller_started": _process_started(int(job_id)) if self.cluster == "local" else None})
        write_submission(jdir.path, record)
        _link_logs(jdir, record)
        return record

    # -- waiting -------------------------------------------------------------------------------------------
    def _run_debug(self, tracked: list[Tracked], store: Store, on_event: EventHandler) -> list[JobResult]:
        """submitit's debug executor runs each task in this process when its result is asked for (a stack's
        task returns a result per member)."""
        results = []
        for handle, group in _by_task(tracked):
            for t in group:
                on_event(JobStarted(t.job.job_id, t.job.label, t.job.spec.train.epochs))
            outcome = handle.result()
            for t, result in zip(group, outcome if isinstance(outcome, list) else [outcome], strict=True):
                end_submission(store.job_dir(t.job.grid, t.job.job_id).path, t.record.job_id)
                on_event(_finished(t.job, result))
                results.append(result)
        return results + [_queued_result(job, rec, "already queued, left alone") for job, rec in self.already_queued]

    def _wait(self, tracked: list[Tracked], waves: list[tuple[Any, list[Job], ArraySubmission]], store: Store,
              on_event: EventHandler) -> list[JobResult]:
        """Follow every job in the store (epochs as progress events) and the queue until each has ended;
        cluster local submits its waiting jobs as slots free up."""
        todo = self._unsent = [(executor, unit, array) for executor, units, array in waves for unit in units]
        slots = self.params.array_parallelism or len(todo) or 1
        while True:
            running = [t for t in tracked if t.result is None]
            while todo and len({id(t.handle) for t in running}) < slots:  # tasks, a stack being one
                executor, unit, array = todo.pop(0)
                new = self._submit(executor, [unit], store, array)
                tracked += new
                running += new
            if not running and not todo:
                break
            live = self.queue.live(t.record for t in running)
            for t in running:
                self._look(t, store, live, on_event)
            if any(t.result is None for t in tracked) or todo:
                time.sleep(self.poll_s)
        return [t.result for t in tracked if t.result is not None]

    def _look(self, t: Tracked, store: Store, live: set[str], on_event: EventHandler) -> None:
        jdir = store.job_dir(t.job.grid, t.job.job_id)
        state = jdir.inspect()
        epochs = t.job.spec.train.epochs
        changed = _result_bytes(store, t.job) != t.before
        if not t.started and (state.leased or state.metrics[t.seen:] or changed):
            t.started = True
            on_event(JobStarted(t.job.job_id, t.job.label, epochs))
        for m in state.metrics[t.seen:]:
            on_event(JobProgress(t.job.job_id, t.job.label, m.epoch, epochs, 1, 1, m.train_loss, m.test_error))
        t.seen = max(t.seen, len(state.metrics))
        if state.status in FINAL and changed and state.result is not None:
            result = state.result
        elif state.leased or (t.record.job_id or "") in live:
            return
        else:  # the scheduler job ended and nobody holds the job: what did it leave?
            result = self._ended(t, jdir, state.result if changed else None)
        t.result = result
        end_submission(jdir.path, t.record.job_id)
        if not t.started:
            t.started = True
            on_event(JobStarted(t.job.job_id, t.job.label, epochs))
        on_event(_finished(t.job, result))

    def _ended(self, t: Tracked, jdir: JobDir, recorded: JobResult | None) -> JobResult:
        """A task that ended without a final status: a note it left (stopped, resumable) is kept; a task that
        died without one (killed, out of memory, cancelled) is recorded as failed, naming its log."""
        if recorded is not None and recorded.status == "pending" and recorded.error:
            return recorded
        from bioscale import claims

        done = len(jdir.read_metrics())
        log = t.record.stderr or t.record.stdout or "(no log)"
        tail = _last_line(t.record.stderr)
        error = (f"the {self.cluster} job {t.record.job_id} ended without recording a result (killed, out of "
                 f"memory, cancelled or failed before training){': ' + tail if tail else ''}. Its log: {log}. "
                 f"Run again to resume from epoch {cadence.last_saved(t.job.spec.train, done)}.")
        result = JobResult(job_id=t.job.job_id, grid=t.job.grid, status="failed", epochs=done, error=error)
        claim = claims.acquire(jdir.path, self.lease_timeout)
        if claim is None:  # someone took the job meanwhile: it is theirs
            return JobResult(job_id=t.job.job_id, grid=t.job.grid, status="running", error="taken over by "
                             "another process; left alone")
        with claim:
            claim.note = "scheduler job ended without a result"
            previous = jdir.read_result()
            if previous is not None:
                result = previous.model_copy(update={"status": "failed", "error": error, "epochs": done})
            jdir.write_result(result)
        return result

    def _stopped_message(self, exc: Interrupted, tracked: list[Tracked], waves: list[Any], store: Store) -> str:
        left = [t for t in tracked if t.result is None]
        ids = ", ".join(str(t.record.job_id) for t in left[:8]) + (", ..." if len(left) > 8 else "")
        unsent = sum(len(unit) for _, unit, _ in self._unsent)
        where = "in Slurm" if self.cluster == "slurm" else "on this machine (submitit's local tasks)"
        grid = tracked[0].job.grid if tracked else ""
        text = (f"stopped waiting ({exc.name}); nothing was cancelled: {len(left)} submitted job(s) go on {where}"
                f"{' (' + ids + ')' if ids else ''}.")
        if unsent > 0:
            text += f" {unsent} job(s) were not submitted yet."
        return text + (f" `bioscale status {grid} --results {store.root}` shows them; run the same command to "
                       "wait again (nothing is submitted twice).")

    # -- for the command line ------------------------------------------------------------------------------
    def describe(self, store: Store) -> list[str]:
        """What ``run`` did, in lines for the terminal: arrays and ids, where the logs are, how to follow."""
        lines = []
        for array in self.submissions:
            ids = array.job_ids
            shown = f"{ids[0]} .. {ids[-1]}" if len(ids) > 2 else ", ".join(ids)
            what = describe_resources(array.resources)
            if self.cluster == "slurm":
                head = f"array {array.array_id}" if array.array_id else "job"
                lines.append(f"submitted {len(ids)} job(s) to Slurm as {head} ({shown}; {what})")
            elif self.cluster == "local":
                lines.append(f"started {len(ids)} job(s) through submitit's local executor on this machine "
                             f"(pids {shown})")
            else:
                lines.append(f"ran {len(ids)} job(s) in this process through submitit's debug executor")
        if self.submissions:
            grid_dir = self.submissions[0].folder.parent.parent
            lines.append(f"logs: {grid_dir}/<job_id>/{LOGS}/ (links into {self.submissions[0].folder})")
        if self.already_queued:
            ids = ", ".join(str(r.job_id) for _, r in self.already_queued[:8])
            more = ", ..." if len(self.already_queued) > 8 else ""
            lines.append(f"{len(self.already_queued)} job(s) already queued or running, left alone: {ids}{more}")
        return lines


def _by_task(tracked: list[Tracked]) -> list[tuple[Any, list[Tracked]]]:
    """The tracked jobs grouped by the task that runs them (a stack's members share one), in order."""
    groups: dict[int, tuple[Any, list[Tracked]]] = {}
    for t in tracked:
        groups.setdefault(id(t.handle), (t.handle, []))[1].append(t)
    return list(groups.values())


def _gpus(job: Job) -> int:
    """``resources.gpus_per_job`` (0 when unset)."""
    return (job.resources.gpus_per_job if job.resources else None) or 0


def _nodes(job: Job) -> int:
    """Nodes the job runs on (``train.distributed.nnodes``)."""
    return int(getattr(getattr(job.spec.train, "distributed", None), "nnodes", 1) or 1)


def _processes(job: Job) -> int:
    """Processes per node that the job runs (``train.distributed.nproc_per_node``; 1 without it)."""
    return int(getattr(getattr(job.spec.train, "distributed", None), "nproc_per_node", 1) or 1)


def _queued_result(job: Job, record: Submission, note: str = "") -> JobResult:
    text = f"{record.cluster} job {record.job_id}" + (f" ({note})" if note else "")
    return JobResult(job_id=job.job_id, grid=job.grid, status="pending", error=f"queued as {text}")


def _finished(job: Job, result: JobResult) -> JobFinished:
    return JobFinished(job.job_id, job.label, result.status, result.test_error, result.error, result.metrics.get("ap"))


def _result_bytes(store: Store, job: Job) -> bytes | None:
    try:
        return (store.job_dir(job.grid, job.job_id).path / RESULT).read_bytes()
    except OSError:
        return None


def _epochs_done(store: Store, job: Job) -> int:
    return len(store.job_dir(job.grid, job.job_id).read_metrics())


def _link_logs(jdir: JobDir, record: Submission) -> None:
    """``<job>/slurm/<id>.out`` and ``.err``: relative links to submitit's files (they may not exist yet)."""
    logs = jdir.path / LOGS
    with contextlib.suppress(OSError):
        logs.mkdir(exist_ok=True)
        for suffix, target in (("out", record.stdout), ("err", record.stderr)):
            if target is None:
                continue
            link = logs / f"{record.job_id}.{suffix}"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(target, logs))


def _last_line(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or passwd (some containers)
        return str(os.getuid())
