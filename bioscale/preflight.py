"""Preflight: what ``bioscale run`` checks for every job before any starts, so that a missing dataset, an absent
GPU or a results folder that cannot be written is one message and exit code 2, not the same failure recorded
for each of 38 jobs an hour into a run.

Every check is cheap: datasets are looked for, not read (``DatasetRecord.check``, once per distinct
parameters); torch is imported only when a job asks for a device other than ``auto`` or ``cpu``; the
results folder gets a probe file, written and removed. Each problem is reported once, with the number of jobs
it affects and the first few of them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bioscale.catalog import DATASETS
from bioscale.errors import BioscaleError
from bioscale.job import Job

if TYPE_CHECKING:
    from bioscale.runner import Plan

SHOWN_JOBS = 3
"""Jobs named per problem; the rest are counted."""


@dataclass
class Problem:
    """One thing that stops jobs running, and the jobs it stops."""

    message: str
    jobs: list[Job] = field(default_factory=list)


class PreflightError(BioscaleError):
    """Jobs that cannot start; ``problems`` lists each once. The CLI prints the message and exits 2."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems


def preflight(planned: Plan, *, devices: bool = True, multi_node: bool = False) -> None:
    """Raise ``PreflightError`` if a job of ``planned`` still to run cannot start here: its dataset is not
    found (and may not be downloaded), its ``train.device`` is not on this machine (``devices=False`` skips
    that, for an executor that runs jobs elsewhere), a log sink's package is not installed, or the results
    folder cannot be written. Writes nothing that stays, and starts nothing. ``multi_node``: the executor runs
    jobs over several nodes (slurm)."""
    problems = find_problems(planned.todo, planned.results_dir, all_jobs=planned.jobs, devices=devices,
                             multi_node=multi_node)
    if problems:
        raise PreflightError(describe(problems, len(planned.jobs)), problems)


def find_problems(todo: Sequence[Job], results_dir: Path, *, all_jobs: Sequence[Job] | None = None,
                  devices: bool = True, multi_node: bool = False) -> list[Problem]:
    """Every problem, each once with the jobs it affects (a results folder problem affects ``all_jobs``:
    the run records every job's spec, finished or not)."""
    found: dict[str, list[Job]] = {}
    checks: list[Iterable[tuple[str, list[Job]]]] = [_dataset_problems(todo), _node_problems(todo, multi_node),
                                                     _logging_problems(todo), _compile_problems(todo)]
    if devices:
        checks.append(_device_problems(todo))
    for check in checks:
        for message, jobs in check:
            found.setdefault(message, []).extend(jobs)
    results_problem = _results_problem(results_dir, clean_up_if=bool(found))
    if results_problem:
        found.setdefault(results_problem, []).extend(all_jobs if all_jobs is not None else todo)
    return [Problem(message, jobs) for message, jobs in found.items()]


def describe(problems: list[Problem], total: int) -> str:
    """One paragraph per problem, after a line saying that nothing was started."""
    head = (f"preflight found {len(problems)} problem{'s' if len(problems) > 1 else ''}; nothing was started. "
            "Fix and run the same command again:")
    return "\n".join([head, *(f"- {p.message} [{_which(p.jobs, total)}]" for p in problems)])


def _which(jobs: list[Job], total: int) -> str:
    if len(jobs) == total:
        return f"all {total} job{'s' if total > 1 else ''}" if total > 1 else "the job"
    named = "; ".join(f"{j.label} ({j.job_id})" for j in jobs[:SHOWN_JOBS])
    more = f"; and {len(jobs) - SHOWN_JOBS} more" if len(jobs) > SHOWN_JOBS else ""
    return f"{len(jobs)} of {total} jobs: {named}{more}"


def _dataset_problems(jobs: Sequence[Job]) -> Iterable[tuple[str, list[Job]]]:
    """Each dataset's ``check`` once per distinct parameters (a grid of 38 jobs on one set: one call)."""
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        key = (job.spec.dataset.name, json.dumps(job.spec.dataset.params, sort_keys=True, default=str))
        groups.setdefault(key, []).append(job)
    for (name, _), group in groups.items():
        record = DATASETS.get(name)
        if record.check is None:
            continue
        try:
            message = record.check(record.params.model_validate(group[0].spec.dataset.params))
        except BioscaleError as exc:
            message = str(exc)
        except Exception as exc:  # a plugin's check must not turn a preflight into a traceback
            message = f"dataset {name!r}: its preflight check failed ({type(exc).__name__}: {exc})."
        if message:
            yield message, group


def _node_problems(jobs: Sequence[Job], multi_node: bool) -> Iterable[tuple[str, list[Job]]]:
    """One job over several nodes needs one torchrun per node in a multi-node allocation, which only the
    slurm executor starts (``bioscale.slurm_task``)."""
    several = [job for job in jobs if job.spec.train.distributed.nnodes > 1]
    if several and not multi_node:
        yield ("train.distributed.nnodes > 1 (one job over several nodes) runs only under the slurm executor, "
               "which starts one torchrun on each node of a Slurm allocation: use --executor slurm (with "
               "--gpus-per-job = nnodes x nproc_per_node), or `executor: {name: slurm, params: {cluster: local}}` "
               "to run the nodes as tasks on this machine. The inline and local executors run a job on one node: "
               "set nnodes to 1 there."), several


def _logging_problems(jobs: Sequence[Job]) -> Iterable[tuple[str, list[Job]]]:
    """A log sink (``logging:``, ``--log``) whose package is not installed: found before any job runs rather
    than as a note in every job's result."""
    from bioscale.logsinks import missing_package

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        for name in job.logging:
            groups.setdefault(name, []).append(job)
    for name, group in groups.items():
        message = missing_package(name)
        if message:
            yield message, group


def _compile_problems(jobs: Sequence[Job]) -> Iterable[tuple[str, list[Job]]]:
    """``train.compile`` without the compiler torch.compile needs on this machine (``bioscale.accel``): found
    before any job starts rather than as the same failure in every job's result. Torch-free."""
    from bioscale.accel import compiler_problem

    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        if job.spec.train.compile:
            groups.setdefault((str(job.spec.train.compile), job.spec.train.device), []).append(job)
    for (mode, device), group in groups.items():
        message = compiler_problem(mode, device)
        if message:
            yield message, group


def _device_problems(jobs: Sequence[Job]) -> Iterable[tuple[str, list[Job]]]:
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.spec.train.device, []).append(job)
    for device, group in groups.items():
        message = device_problem(device)
        if message:
            yield message, group


def device_problem(device: str) -> str | None:
    """Why ``train.device`` cannot be used on this machine, or None. Imports torch only for a GPU device."""
    kind, _, index = device.partition(":")
    if kind in ("auto", "cpu"):
        return None
    import torch

    fix = "Use train.device=auto (the GPU if there is one, else the CPU) or cpu, or run on a machine that has it."
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "" if torch.version.cuda else f" (this torch, {torch.__version__}, is built without CUDA)"
            return f"train.device={device!r}: no CUDA device is available on this machine{why}. {fix}"
        count = torch.cuda.device_count()
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"train.device={device!r}: Apple's MPS backend is not available on this machine. {fix}"
        count = 1
    elif kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            return f"train.device={device!r}: no Intel XPU is available on this machine. {fix}"
        count = xpu.device_count()
    else:  # JobSpec refuses other names; a spec built another way still gets a sentence, not a traceback
        return f"train.device={device!r}: unknown device. {fix}"
    if index.isdigit() and int(index) >= count:
        return (f"train.device={device!r}: this machine has {count} {kind} device{'s' if count > 1 else ''} "
                f"({kind}:0 .. {kind}:{count - 1}). Use one of them, {kind}, or auto.")
    return None


def _results_problem(results_dir: Path, clean_up_if: bool) -> str | None:
    """Create the results folder if missing and write and remove a probe file in it. Folders it created
    are removed again when the run will not start (``clean_up_if``, or this check failing)."""
    created = [p for p in (results_dir, *results_dir.parents) if not p.exists()]
    problem = None
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".preflight-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"bioscale preflight\n")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        hint = (" A part of that path is a file, not a folder." if isinstance(exc, NotADirectoryError | FileExistsError)
                else "")
        problem = (f"the results folder {results_dir} cannot be written: {exc.strerror or exc}{where}.{hint} "
                   "Give a folder you can write to with --results DIR.")
    if problem or clean_up_if:
        for path in created:  # deepest first: only the empty folders this check made
            try:
                path.rmdir()
            except OSError:
                break
    return problem
