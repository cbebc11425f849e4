"""Which jobs can train together as one stacked model (issue 13, stacked runs): the grouping, torch-free.

A stack trains M jobs as one model with a leading member dimension, so its members must share everything
that shapes the computation (dataset, architecture, rule and its schedule, batch size, epochs, optimiser
kind, where the job stands) and may differ only in what becomes a per-member number
(``bioscale.stack.PER_MEMBER``): the seed (weights, feedback draws, data order), the optimisers' numeric
hyperparameters and lr schedule, and the rule's alpha, sigma and decay. Papers' grids are mostly such
families: Table 1's 3 seeds of a cell, a search's 60 configurations of a rule (Bartunov et al. 2018, Sec. 3
and Table 4).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from bioscale.job import Job


def member_values(job: Job) -> dict[str, Any]:
    """What this job sets per member (``bioscale.stack.PER_MEMBER``), by dotted key."""
    from bioscale.stack import PER_MEMBER

    spec = job.spec
    out: dict[str, Any] = {"seed": spec.seed}
    for name in ("optim", "inverse_optim"):
        optim = getattr(spec, name)
        if optim is not None:
            out.update({f"{name}.{k}": getattr(optim, k) for k in sorted(PER_MEMBER[name])})
    out.update({f"rule.params.{k}": spec.rule.params[k] for k in sorted(PER_MEMBER["rule.params"])
                if k in spec.rule.params})
    return out


def stack_key(job: Job, start: int = 0) -> str:
    """Jobs with equal keys can share a stack: what members must share (``bioscale.stack.shared_settings``:
    the spec without its member values), the grid, what its scheduler task asks for, its budget
    (``stop_after``) and ``start``, the epoch it resumes from."""
    from bioscale.stack import shared_settings

    extra = {"grid": job.grid, "stop_after": job.stop_after, "start": start,
             "resources": job.resources.model_dump(mode="json") if job.resources is not None else None}
    return json.dumps([shared_settings(job.spec), extra], sort_keys=True, separators=(",", ":"))


def plan_stacks(jobs: Iterable[Job], size: int, start: Callable[[Job], int] | None = None,
                stackable: Callable[[Job], str | None] | None = None) -> list[list[Job]]:
    """The jobs as stacks of at most ``size`` members (``size`` 1: each job alone), in the jobs' order.

    ``start(job)``: the epoch the job resumes from (members must start together); ``stackable(job)``: why a
    job cannot be stacked (its rule or architecture has no stacked form), None when it can; such jobs run
    alone. A family of n jobs becomes ceil(n / size) stacks of near-equal sizes (10 jobs, size 4: 4, 3, 3),
    so no stack is left nearly empty.
    """
    if size < 1:
        raise ValueError(f"a stack holds at least one job, not {size}")
    families: dict[str, list[Job]] = {}
    for job in jobs:
        alone = size == 1 or (stackable is not None and stackable(job) is not None)
        key = f"alone:{job.grid}/{job.job_id}" if alone else stack_key(job, start(job) if start else 0)
        families.setdefault(key, []).append(job)
    stacks: list[list[Job]] = []
    for family in families.values():
        count = math.ceil(len(family) / size)
        base, extra = divmod(len(family), count)
        at = 0
        for i in range(count):
            n = base + (i < extra)
            stacks.append(family[at:at + n])
            at += n
    return stacks


GPU_STACK = 16
"""Members per stack on a GPU by default: an MNIST/CIFAR-sized step leaves a modern GPU mostly idle, so a
stack of 16 costs little more than one job (``benchmarks/gpu_suite.sh`` measures it)."""


def default_size(gpu: bool) -> int:
    """``--stack``'s default: ``GPU_STACK`` on a GPU; 1 (each job alone) on the CPU, where a step is
    arithmetic-bound and a stack gains little (issue 13: ~1.2x at M = 10)."""
    return GPU_STACK if gpu else 1
