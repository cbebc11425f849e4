"""torch's CPU threads per job: from the job's size and the executor's share of the cores.

Why not torch's default (one thread per core in every process): a small job gains nothing from more threads
(each op is a few microseconds of work, and waking threads costs as much), and when several jobs or other
users share the cores, OpenMP threads that wait for each other are descheduled and an epoch can take many
times longer (``make demo`` on 2 shared cores: 13.5 minutes with the default, 36 s with one thread per job).

The executor gives each job a *budget* (``Budget``): ``--threads`` (used as given), else the Slurm task's
``cpus_per_task``, else the CPUs this process may run on (``os.sched_getaffinity``: a cgroup or ``taskset``
limit counts) divided by the executor's slots. The trainer then picks (``for_job``) one thread per
``STEP_FLOPS_PER_THREAD`` of forward work in one training batch (counted by torch's ``FlopCounterMode`` on
the architecture built on the meta device, so nothing is allocated or drawn from the random generators), at
least 1 and at most the budget. On a GPU the budget is used as is (the CPU then mostly feeds the GPU). The
choice depends only on the job and the executor's settings, never on how many jobs are left, so a resumed
job computes with the same thread count; it is recorded in ``result.json`` (``provenance.threads``).

Identical numbers across thread counts, where torch allows it: ``import bioscale`` sets
``MKL_CBWR=AUTO,STRICT`` (unless it is already set; MKL reads it at its first call), which makes MKL's matrix
products give the same bits whatever the thread count (without it a 32 x 784 by 784 x 256 product already
differs in the last bits between 1 and 2 threads), at no measurable cost; torch's elementwise ops and
reductions (sum, mean, also over 10^6 elements) gave the same bits at 1 and 2 threads in our checks. So fc
jobs give identical metrics at 1 and 2 threads (tests/test_threads.py; lc gave identical gradients in a check
by hand). Not guaranteed, and not the same
in practice: oneDNN's convolution backward (the weight and bias gradients of ``conv``, ``resnet*``,
``alexnet`` are sums over the batch and positions, split across threads), so conv jobs on the CPU differ in
the last bits between thread counts from the first step and drift apart over epochs; a conv job resumed under
another thread count (another machine, another ``--threads``) is not bit-identical to an uninterrupted one. On
GPUs thread counts play no part (cuDNN's algorithm choice does).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from bioscale.data.base import DataShape
    from bioscale.spec import JobSpec

STEP_FLOPS_PER_THREAD = 2e8
"""Forward FLOPs of one training batch per thread. Measured on an idle 2-core AVX-512 machine: the paper's
MNIST FC net at batch 32 (3e7 FLOPs) takes 1.3 ms per step on one thread and 1.0 ms on two (a 25% gain that
turns into a large loss as soon as another process wants a core); the FC net on CIFAR-10 at batch 128
(1.3e9 FLOPs) 25 ms vs 13 ms, and the conv net (1.3e10 FLOPs) 320 ms vs 280 ms."""


@dataclass(frozen=True)
class Budget:
    """The most threads a job may use, and whether it is to use exactly that many (``--threads``)."""

    limit: int
    fixed: bool = False


_budget: Budget | None = None
_default: int | None = None


def cpus_available() -> int:
    """CPUs this process may run on: its affinity mask (Slurm's, a cgroup's, taskset's), else the CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def share(slots: int, threads: int | None = None, cpus_per_task: int | None = None) -> Budget:
    """A job's budget when ``slots`` jobs run side by side: ``threads`` if given, else ``cpus_per_task`` (a
    Slurm task's CPUs, at most those this process may use), else an equal share of the available CPUs."""
    if threads:
        return Budget(threads, fixed=True)
    cpus = cpus_available()
    if cpus_per_task:
        return Budget(min(cpus_per_task, cpus))
    return Budget(max(1, cpus // max(1, slots)))


def set_budget(budget: Budget) -> None:
    """This process's budget for every job it runs (a local executor's worker)."""
    import torch

    global _budget
    _budget = budget
    torch.set_num_threads(budget.limit)


@contextlib.contextmanager
def budget(value: Budget) -> Iterator[None]:
    """``set_budget`` for a block, then torch's thread count as it was (the inline executor, a Slurm task)."""
    import torch

    global _budget
    previous, threads = _budget, torch.get_num_threads()
    set_budget(value)
    try:
        yield
    finally:
        _budget = previous
        torch.set_num_threads(threads)


def current_budget() -> Budget:
    """The budget set by the executor; else torch's thread count when first asked (e.g. a torchrun rank,
    which its launcher gives ``OMP_NUM_THREADS``), so one job that lowers it does not lower the next."""
    global _default
    if _budget is not None:
        return _budget
    if _default is None:
        import torch

        _default = torch.get_num_threads()
    return Budget(_default)


def step_flops(spec: JobSpec, info: DataShape) -> float | None:
    """Forward FLOPs of one training batch of this process (a distributed job's rank: its share), counted on
    the meta device; None if the architecture cannot be counted that way."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bioscale.distributed import world_size
    from bioscale.models import build_model

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = build_model(spec.arch, info).eval()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(torch.zeros((1, *info.input_shape)))
    except Exception:  # an architecture the meta device cannot run: the budget decides
        return None
    batch = max(1, spec.train.batch_size // world_size(spec))
    return float(counter.get_total_flops()) * batch


def choose(budget: Budget, flops: float | None, on_cpu: bool = True) -> int:
    """Threads for a job of ``flops`` forward FLOPs per training batch under ``budget``."""
    if budget.fixed or not on_cpu or flops is None:
        return budget.limit
    return max(1, min(budget.limit, math.ceil(flops / STEP_FLOPS_PER_THREAD)))


def for_job(spec: JobSpec, info: DataShape, device: torch.device | None) -> int:
    """Choose the job's threads (see the module's docstring), set them in torch, and return the number."""
    import torch

    plan = current_budget()
    on_cpu = device is None or device.type == "cpu"
    n = choose(plan, step_flops(spec, info) if on_cpu and not plan.fixed else None, on_cpu)
    torch.set_num_threads(n)
    return n
