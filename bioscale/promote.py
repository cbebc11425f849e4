"""Successive halving over a search's configurations (a grid's ``promote:`` block).

Bartunov et al. 2018 on ImageNet: "we also started 60 random configurations but after 10 epochs we allowed
only the best performing job to continue thereafter". In general (Jamieson & Talwalkar 2016; Li et al.'s
Hyperband): the configurations of one *group* (one combination of the grid's axes: the jobs that differ only
in their drawn values) all run to the first rung; the best ``keep`` of them by a validation metric continue
to the next rung, and so on; the survivors of the last rung run their whole ``train.epochs``.

A job's budget is its ``train.epochs`` (part of its id); a rung is a run-time stop (``Job.stop_after``), so a
promoted job resumes its checkpoint and ends exactly as if it had run its whole budget at once. Decisions are
recorded in ``promotions.json`` in the grid's results folder (the group, the rung, every candidate's metric,
who was kept) and read back, never recomputed: rerunning the same search gives the same survivors even if a
job's files change later. A decision waits until every candidate has reached the rung (or diverged); a failed
candidate is retried by the next ``bioscale run`` before its group is decided.

No library does this here: optuna's pruners decide inside one process's study and keep their state in its
storage, while bioscale's jobs run in any executor (process pool, Slurm arrays) and its state is the store;
the rule itself is a sort.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioscale.errors import BioscaleError, GridError
from bioscale.job import Job
from bioscale.spec import GridSpec, JobResult, PromoteSpec
from bioscale.store import JobState, Store, atomic_write_text

DECISIONS = "promotions.json"
"""In the grid's results folder, next to the job folders (a file, so the store never lists it as a job)."""
LOCK = ".promotions.json.lock"


def paused(result: JobResult, end: int, epochs: int) -> JobResult:
    """The result of a job stopped at a rung: ``pending`` (resumable) with a note saying why."""
    note = (f"paused after epoch {end} of {epochs} at a rung of successive halving; it continues from its "
            f"checkpoint if promoted (see {DECISIONS})")
    result.error = f"{result.error}\n{note}" if result.error else note
    return result


def targets(promote: PromoteSpec, epochs: int) -> list[int]:
    """The epochs a job of budget ``epochs`` stops at: the rungs below it, then the budget itself."""
    return [r for r in promote.rungs if r < epochs] + [epochs]


def check_jobs(grid: GridSpec, jobs: list[Job], source: str) -> None:
    """What successive halving needs of every job: a validation set to rank on, checkpoints to continue from,
    and rungs inside its budget."""
    promote = grid.promote
    if promote is None:
        return
    for job in jobs:
        spec = job.spec
        if spec.dataset.params.get("validation") is None:
            raise GridError(f"{source} ({job.label}): promote: ranks jobs by {promote.metric}, which needs a "
                            f"validation set: set dataset.params.validation (e.g. 10000 for MNIST, 5000 for "
                            f"CIFAR-10) in `base` or in an override. A selection never looks at the test set.")
        if not spec.train.checkpoint:
            raise GridError(f"{source} ({job.label}): promote: a promoted job continues from its checkpoint; "
                            "train.checkpoint is false. Set it to true.")
        beyond = [r for r in promote.rungs if r > spec.train.epochs]
        if beyond:
            raise GridError(f"{source} ({job.label}): promote: rung {beyond[0]} is beyond the job's budget of "
                            f"train.epochs={spec.train.epochs}; the rungs are epochs at which to decide, below "
                            "the budget (the last may equal it).")


def group_of(job: Job, searched: Iterable[str]) -> str:
    """The group of a job: a hash of its spec without the searched keys (its combination of the axes)."""
    data = job.spec.model_dump(mode="json")
    for key in searched:
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def group_label(job: Job) -> str:
    return job.label.rsplit(" cfg=", 1)[0]


# ---- the decisions file ------------------------------------------------------------------------------------


class Decisions:
    """``promotions.json``: one entry per (group, rung), appended once and never changed."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / DECISIONS
        self.entries: dict[tuple[str, int], dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        if not self.path.exists():
            self.entries = {}
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = {(e["group"], int(e["rung"])): e for e in data["decisions"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BioscaleError(f"{self.path} cannot be read ({type(exc).__name__}: {exc}). It records which jobs "
                                "successive halving promoted, so it is not rewritten: restore it from a backup, or "
                                "move it away to decide again from the jobs' metrics.") from None

    def get(self, group: str, rung: int) -> dict[str, Any] | None:
        return self.entries.get((group, rung))

    def add(self, entries: list[dict[str, Any]], grid: GridSpec) -> list[dict[str, Any]]:
        """Record ``entries`` unless another process recorded the same (group, rung) first; returns those that
        are now on disk for them (the other process's where it was first)."""
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.parent / LOCK, timeout=60):
            self.reload()
            for entry in entries:
                self.entries.setdefault((entry["group"], entry["rung"]), entry)
            promote = grid.promote
            assert promote is not None
            doc = {"grid": grid.name, "metric": promote.metric, "rungs": promote.rungs, "keep": promote.keep,
                   "about": "Successive halving decisions (bioscale.promote): per group of configurations and rung, "
                            "every candidate's metric (lower is better; null: diverged) and the jobs kept. Written "
                            "once, read back on every run.",
                   "decisions": sorted(self.entries.values(), key=lambda e: (e["label"], e["group"], e["rung"]))}
            atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")
        return [self.entries[(e["group"], e["rung"])] for e in entries]


# ---- where each job stands ---------------------------------------------------------------------------------


@dataclass
class Group:
    key: str
    label: str
    jobs: list[Job]
    targets: list[int]
    stage: int = 0
    """Index into ``targets`` of the stop its jobs race for now (the last: their whole budget)."""
    alive: list[Job] = field(default_factory=list)
    """The jobs still in the race at ``stage``."""
    out: dict[str, int] = field(default_factory=dict)
    """Job id -> the rung at which it was not promoted."""


def standings(grid: GridSpec, jobs: list[Job], decisions: Decisions) -> list[Group]:
    """Every group with its current stage, from the recorded decisions."""
    from bioscale.search import searched_keys

    assert grid.promote is not None and grid.search is not None
    keys = searched_keys(grid.search)
    groups: dict[str, Group] = {}
    for job in jobs:
        key = group_of(job, keys)
        if key not in groups:
            groups[key] = Group(key, group_label(job), [], targets(grid.promote, job.spec.train.epochs))
        groups[key].jobs.append(job)
    for group in groups.values():
        group.alive = list(group.jobs)
        for stage, rung in enumerate(group.targets[:-1]):
            entry = decisions.get(group.key, rung)
            if entry is None:
                break
            kept = set(entry["kept"])
            group.out.update({j.job_id: rung for j in group.alive if j.job_id not in kept})
            group.alive = [j for j in group.alive if j.job_id in kept]
            group.stage = stage + 1
    return list(groups.values())


def to_run(groups: list[Group], states: dict[str, JobState]) -> list[Job]:
    """The jobs to (re)run now, each with the stop of its stage: alive, runnable (pending or failed) and short
    of that stop."""
    out = []
    for group in groups:
        stop = group.targets[group.stage]
        last = group.stage == len(group.targets) - 1
        for job in group.alive:
            state = states[job.job_id]
            if state.status in ("pending", "failed") and (last or len(state.metrics) < stop):
                out.append(dataclasses.replace(job, stop_after=None if last else stop))
    return out


def _value(state: JobState, rung: int, metric: str) -> float | None:
    """The job's best ``metric`` over its first ``rung`` epochs (None: diverged, ranked last)."""
    values = [getattr(m, metric) for m in state.metrics[:rung]]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if state.status == "diverged" or not values:
        return None
    return min(values)


def decide(grid: GridSpec, groups: list[Group], states: dict[str, JobState], decisions: Decisions) -> int:
    """Record a decision for every group whose candidates have all reached their rung (or diverged); returns
    how many were recorded. The metric is each job's best over the epochs up to the rung; lower is better,
    ties broken by job id, so a decision does not depend on the order jobs finished in."""
    promote = grid.promote
    assert promote is not None
    new = []
    for group in groups:
        if group.stage >= len(group.targets) - 1:
            continue
        rung = group.targets[group.stage]
        ready = all(states[j.job_id].status == "diverged" or
                    (len(states[j.job_id].metrics) >= rung and states[j.job_id].status in ("pending", "done"))
                    for j in group.alive)
        if not ready:
            continue
        for job in group.alive:
            if states[job.job_id].status != "diverged" and _value(states[job.job_id], rung, promote.metric) is None:
                raise BioscaleError(f"{job.label} ({job.job_id}) has no {promote.metric} in its first {rung} epochs, "
                                    "so successive halving cannot rank it: its dataset needs a validation set "
                                    "(dataset.params.validation).")
        ranked = sorted(((_value(states[j.job_id], rung, promote.metric), j) for j in group.alive),
                        key=lambda vj: (vj[0] is None, vj[0] if vj[0] is not None else 0.0, vj[1].job_id))
        kept = [j.job_id for _, j in ranked[:promote.survivors(len(ranked))]]
        new.append({"group": group.key, "label": group.label, "rung": rung, "metric": promote.metric,
                    "candidates": [{"job_id": j.job_id, "label": j.label, "value": v} for v, j in ranked],
                    "kept": kept})
    if new:
        decisions.add(new, grid)
    return len(new)


def advance(grid: GridSpec, jobs: list[Job], store: Store, *, write: bool = True
            ) -> tuple[list[Job], list[Group]]:
    """Decide every rung that is ready (unless ``write`` is False), then return the jobs to run next, each with
    its stop, and the groups' standings."""
    folder = store.root / grid.name
    decisions = Decisions(folder)
    while True:
        states = {job.job_id: store.job_dir(job.grid, job.job_id).inspect() for job in jobs}
        groups = standings(grid, jobs, decisions)
        if not write or not decide(grid, groups, states, decisions):
            return to_run(groups, states), groups


def total_epochs(promote: PromoteSpec | None, n: int, epochs: int) -> int:
    """Epochs a group of ``n`` configurations of budget ``epochs`` trains in all (without ``promote``: n x
    epochs); what a search costs, before the time of an epoch."""
    if promote is None:
        return n * epochs
    total, done = 0, 0
    for rung in targets(promote, epochs):
        total += n * (rung - done)
        done = rung
        n = promote.survivors(n)
    return total


def expected_runs(promote: PromoteSpec, groups: list[Group], todo: list[Job]) -> int:
    """``todo`` plus, per group, the survivors of each rung still to decide (for a progress total)."""
    total = len(todo)
    for group in groups:
        n = len(group.alive)
        for _ in range(group.stage, len(group.targets) - 1):
            n = promote.survivors(n)
            total += n
    return total


def eliminated(store: Store, grid: str) -> dict[str, dict[str, Any]]:
    """Job id -> the decision that did not promote it, from the grid's ``promotions.json`` (for the report)."""
    path = store.root / grid / DECISIONS
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for entry in data["decisions"]:
            for cand in entry["candidates"]:
                if cand["job_id"] not in entry["kept"]:
                    out[cand["job_id"]] = entry
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}
