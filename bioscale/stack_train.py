"""Train several jobs as one stack (``bioscale.stack``), each member recorded exactly as if it had run alone.

``run_stack`` claims every job of the stack (a job another process holds, or one that has finished, is left
out), builds each member as its solo trainer would, resumes each from its own checkpoint, and trains the
members together: member m reads its own data order (the solo loader with its seed) and takes its own
random draws (``Stack.rng``). After every epoch each member is evaluated on its own solo model and rule
(``Stack.member``: the same evaluation, diagnostics and metrics code as a solo job) and writes its own
metrics, checkpoint (a solo checkpoint: a stacked job resumes alone and a solo job resumes in a stack) and
log sinks; its result says which jobs it was stacked with (``provenance.stack``).

A member that diverges is recorded as diverged at the step its solo job would notice it (the same checks,
at the same steps) and leaves the stack at the end of that epoch; the others go on. Ctrl-C records every
member as resumable, as a solo job does. Members must start at the same epoch: when their checkpoints
disagree (e.g. one was damaged), the stack is not formed and every job runs alone.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bioscale import cadence, claims, interrupts, stack_fit, threads
from bioscale.data import LoaderSettings, load_data
from bioscale.data.loaders import first_batch
from bioscale.interrupts import Interrupted
from bioscale.job import Job, unwritable_result
from bioscale.logsinks import JobLog
from bioscale.provenance import collect, now
from bioscale.spec import EpochMetrics, JobResult, JobSpec
from bioscale.stack.data import StackedLoader, member_loaders
from bioscale.store import JobDir, Store
from bioscale.tasks import Evaluation
from bioscale.train import ProgressFn, Trainer, resolve_device, run_job, seed_everything

if TYPE_CHECKING:
    from bioscale.stack import Stack


def unsupported(spec: JobSpec) -> str | None:
    """What the stacked trainer does not do yet for this job (None: nothing): on top of ``stackable``."""
    from bioscale.stack import stackable

    reason = stackable(spec)
    if reason is not None:
        return reason
    for key in ("optim", "inverse_optim"):
        optim = getattr(spec, key)
        if optim is not None and optim.warmup is not None:
            return f"{key}.warmup is not implemented for stacks"
    return None


@dataclass
class _Member:
    job: Job
    jdir: JobDir
    claim: claims.Claim
    trainer: Trainer
    provenance: Any
    result: JobResult | None = None
    """Set once the member has left the stack (diverged, lost its lease): what it recorded."""
    extra: dict[str, Any] = field(default_factory=dict)


class _NotStacked(Exception):
    """The members cannot train together (they resume from different epochs): run each alone."""


class _TooLarge(Exception):
    """The stack would not fit the device's memory (``bioscale.stack_fit``): run it as smaller stacks."""

    def __init__(self, fit: Any, size: int) -> None:
        super().__init__(fit.note(size))
        self.fit = fit


def run_stack(jobs: list[Job], store: Store, on_progress: ProgressFn | None = None,
              lease_timeout: float = claims.DEFAULT_TIMEOUT_S, note: str | None = None) -> list[JobResult]:
    """Claim, run (or resume) and record the jobs of one stack; a result per job, in order (see the module
    docstring). One job, or jobs that turn out not to stack, run alone through ``bioscale.train.run_job``; a
    stack too large for the device's memory runs as smaller stacks, one after the other, each member's result
    saying so (``note``)."""
    if len(jobs) == 1:
        return [run_job(jobs[0], store, on_progress, lease_timeout, note)]
    results: dict[str, JobResult] = {}
    alone: list[Job] = []
    parts: list[list[Job]] = []
    with contextlib.ExitStack() as held:
        members: list[_Member] = []
        for job in jobs:
            jdir = store.job_dir(job.grid, job.job_id)
            try:
                claim = claims.acquire(jdir.path, lease_timeout)
            except OSError as exc:
                results[job.job_id] = unwritable_result(job, exc)
                continue
            if claim is None:
                holder = claims.live_lease(jdir.path)
                where = f" (pid {holder.pid} on {holder.host})" if holder else ""
                results[job.job_id] = JobResult(job_id=job.job_id, grid=job.grid, status="running",
                                                error=f"held by another process{where}; left alone")
                continue
            held.enter_context(claim)
            jdir.clean_temporary()
            previous = jdir.finished()
            if previous is not None:
                claim.note = "already finished"
                results[job.job_id] = previous
                continue
            provenance = collect()
            try:
                jdir.write_spec(job.grid, job.spec)
                jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status="running",
                                            provenance=provenance))
            except OSError as exc:
                results[job.job_id] = unwritable_result(job, exc)
                continue
            trainer = Trainer(job, jdir, on_progress, owns=lambda c=claim: not c.lost)
            members.append(_Member(job, jdir, claim, trainer, provenance))
        if len(members) == 1:
            alone = [members[0].job]
        elif members:
            try:
                results.update(_StackRun(members, note).fit())
            except _NotStacked:
                alone = [m.job for m in members]
            except _TooLarge as exc:
                from bioscale.stack_groups import plan_stacks

                parts = plan_stacks([m.job for m in members], exc.fit.members)
                note = str(exc)
    for job in alone:  # released above: each claims itself again
        results[job.job_id] = run_job(job, store, on_progress, lease_timeout)
    for part in parts:  # likewise
        part_results = (run_stack(part, store, on_progress, lease_timeout, note) if len(part) > 1
                        else [run_job(part[0], store, on_progress, lease_timeout, note)])
        results.update((job.job_id, r) for job, r in zip(part, part_results, strict=True))
    return [results[job.job_id] for job in jobs]


class _StackRun:
    """One stack's training, from building the members to recording their results."""

    def __init__(self, members: list[_Member], note: str | None = None) -> None:
        self.members = members
        self.note = note
        self.ids = [m.job.job_id for m in members]
        self.interrupted: Interrupted | None = None

    # -- setup ---------------------------------------------------------------------------------------------
    def build(self) -> tuple[Any, Stack, int]:
        from bioscale.stack import Stack

        first = self.members[0].trainer
        spec = first.spec
        device = resolve_device(spec.train.device)
        seed_everything(spec.seed)
        ctx = LoaderSettings(spec.train.batch_size, spec.train.eval_batch_size, device, spec.seed,
                             spec.train.num_workers)
        data = load_data(spec.dataset, ctx)
        # each member's solo loader (its seed: its own order and augmentation) over the one loaded set
        self.batches = StackedLoader(member_loaders(data.train, [m.job.spec.seed for m in self.members]))
        for m in self.members:
            m.trainer.device = device
        specs = [m.job.spec for m in self.members]
        fit = stack_fit.members_that_fit(specs, data.info, device)
        if fit.members < len(specs):
            raise _TooLarge(fit, len(specs))
        stack = Stack.build(specs, data.info, device)
        starts = []
        for i, (m, built) in enumerate(zip(self.members, stack.members, strict=True)):
            built.rule.task = m.trainer.task
            m.trainer.rule_setup = built.rule.describe()
            m.trainer.threads = threads.for_job(m.job.spec, data.info, device)
            with stack.rng.use(i):  # a checkpoint's generators become the member's
                done = m.trainer.restore(built.model, built.rule)
                state = {"model": built.model.state_dict(), "rule": built.rule.state_dict(),
                         "torch_rng": torch.get_rng_state(), "cuda_rng": [], "python_rng": random.getstate()}
            stack.load_member_state(i, state)
            starts.append(done)
        if len(set(starts)) > 1:
            raise _NotStacked(f"the members resume from epochs {starts}")
        return data, stack, starts[0]

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, JobResult]:
        """Train, record every member's result (also when interrupted: resumable), return them by job id."""
        results: dict[str, JobResult] = {}
        try:
            self._fit()
        except (_NotStacked, _TooLarge):
            raise
        except Interrupted as exc:  # resumable: every finished epoch of every member is on disk
            self.interrupted = exc
            for m in self._alive():
                done = len(m.trainer.metrics)
                m.result = m.trainer.partial_result("pending")
                m.result.error = (f"interrupted by {exc.name} after {done} of {m.job.spec.train.epochs} epochs "
                                  f"({cadence.saved_note(m.job.spec.train, done)}); run the same command to "
                                  "resume")
        except Exception as exc:  # every member still training fails alike; the other jobs go on
            tb = traceback.format_exc(limit=-3)
            for m in self._alive():
                m.result = m.trainer.partial_result("failed")
                m.result.error = f"{type(exc).__name__}: {exc}\n{tb}"
        for m in self.members:
            results[m.job.job_id] = self._record(m)
        if self.interrupted is not None:
            raise self.interrupted
        return results

    def _alive(self) -> list[_Member]:
        return [m for m in self.members if m.result is None]

    def _fit(self) -> None:
        data, stack, start = self.build()
        for m in self.members:
            m.trainer.log = JobLog.open(m.job, m.jdir.path, start, m.trainer.metrics)
        train = self.members[0].job.spec.train
        end = min(train.epochs, self.members[0].job.stop_after or train.epochs)
        slots = list(range(len(self.members)))  # the member of self.members in each slot of the stack
        batches = self.batches
        for epoch in range(start, end):
            keep = [i for i, k in enumerate(slots) if self.members[k].result is None]
            if not keep:
                return
            if len(keep) < len(slots):  # members that diverged or lost their lease leave the stack
                stack = stack.subset(keep)
                batches = StackedLoader([batches.loaders[i] for i in keep])
                slots = [slots[i] for i in keep]
            alive = [self.members[k] for k in slots]
            train_time = self._train_epoch(epoch, stack, alive, batches)
            self._end_epoch(epoch, stack, alive, data, train_time, epoch + 1 == end)
        for m in self._alive():
            if end < train.epochs:
                from bioscale.promote import paused

                m.result = paused(m.trainer.partial_result("pending"), end, train.epochs)
            else:
                m.result = m.trainer.partial_result("done")

    def _train_epoch(self, epoch: int, stack: Stack, alive: list[_Member], batches: StackedLoader) -> float:
        """One epoch's passes of every member; a member whose loss stops being finite is recorded as diverged at
        the check its solo job would make (it trains on, ignored, until the epoch ends). Returns the seconds."""
        stack.begin_epoch(epoch)
        batches.set_epoch(epoch)
        steps = len(batches)
        every = max(1, steps // 20)
        device = alive[0].trainer.device
        loss_sum = torch.zeros(len(alive), device=device, dtype=torch.float64)
        wrong = torch.zeros(len(alive), device=device, dtype=torch.long)
        running = alive[0].job.spec.train.train_error == "running"
        seen = 0
        t0 = time.perf_counter()
        for phase in stack.phases(epoch):
            stack.begin_phase(phase)
            for i, (x, y) in enumerate(batches):
                out = stack.step(x, y)
                loss_sum += out.loss.double() * y.shape[1]
                seen += y.shape[1]
                if running:
                    wrong += (out.logits.argmax(-1) != y).sum(1)
                if (i + 1) % every == 0:  # the only host syncs inside the epoch, as a solo job's
                    for m, loss in zip(alive, out.loss.tolist(), strict=True):
                        if m.result is not None:
                            continue
                        if not math.isfinite(loss):
                            self._diverged(m, f"training loss is {loss} in epoch {epoch + 1}, step {i + 1}")
                            continue
                        m.trainer.report(epoch + 1, i + 1, steps, loss, None)
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        losses = (loss_sum / max(seen, 1)).tolist()
        errors = (100.0 * wrong.double() / max(seen, 1)).tolist()
        for m, total, error in zip(alive, losses, errors, strict=True):
            m.extra["train_loss"], m.extra["running_error"] = total, error if running else None
            if m.result is None and not math.isfinite(total):
                self._diverged(m, f"training loss is {total} in epoch {epoch + 1}")
        return seconds

    def _diverged(self, m: _Member, why: str) -> None:
        m.result = m.trainer.partial_result("diverged")
        m.result.error = why

    def _end_epoch(self, epoch: int, stack: Stack, alive: list[_Member], data: Any, train_time: float,
                   last_of_run: bool) -> None:
        """Every member's evaluation (one pass of the stack over each shared set: ``bioscale.stack.evaluate``),
        diagnostics (on its solo model and rule, with its own generators), metrics, checkpoint and progress."""
        from bioscale.stack.evaluate import evaluate

        train = alive[0].job.spec.train
        none = [Evaluation()] * len(alive)
        tests, trains, vals = none, none, none
        if cadence.due(train.eval_every, epoch, train.epochs) or last_of_run:
            tests = evaluate(stack, data.test)
            if train.train_error == "eval":
                trains = evaluate(stack, data.train_eval)
            held = getattr(data, "validation", None)  # dataset.params.validation: what a search selects on
            if held is not None:
                vals = evaluate(stack, held)
        with interrupts.deferred():  # one unit: a stop cannot leave some members an epoch ahead of the others
            for i, m in enumerate(alive):
                if m.result is None:
                    self._record_epoch(epoch, stack, i, m, data, train_time, last_of_run, tests[i], trains[i],
                                       vals[i])

    def _record_epoch(self, epoch: int, stack: Stack, i: int, m: _Member, data: Any, train_time: float,
                      last_of_run: bool, test: Evaluation, trained: Evaluation, val: Evaluation) -> None:
        """Member i's diagnostics (its solo model and rule, its own generators), metrics, checkpoint, progress."""
        train = m.job.spec.train
        t = m.trainer
        diagnostics: dict[str, float] = {}
        if cadence.diagnostics_due(train, epoch):
            _, rule = stack.member(i)  # its solo model and rule, holding its current state
            with stack.rng.use(i):  # diagnostics draw from the member's generators, as alone
                x, y = cadence.diagnostics_slice(first_batch(data.train_eval), train.diagnostics_batch)
                diagnostics = rule.diagnostics(x, y)
        train_error = m.extra["running_error"] if train.train_error == "running" else trained.error
        t.metrics.append(EpochMetrics(
            epoch=epoch + 1, train_loss=m.extra["train_loss"], train_error=train_error,
            test_error=test.error, test_loss=test.loss, top5_error=test.top5, epoch_time_s=train_time,
            lr=stack.current_lr(i), diagnostics=diagnostics, metrics=dict(test.metrics), val_error=val.error,
            val_loss=val.loss))
        if m.claim.lost:  # another process took this job over: it writes nothing more
            m.result = JobResult(job_id=m.job.job_id, grid=m.job.grid, status="running",
                                 error="another process took this job over; this stack stopped writing it")
            m.extra["lost"] = True
            return
        m.jdir.write_metrics(t.metrics)
        t.log.epoch(t.metrics[-1])
        if cadence.checkpoint_due(train, epoch) or (train.checkpoint and last_of_run):
            t.write_checkpoint(stack.member_state(i), epoch + 1)
        t.report(epoch + 1, len(self.batches), len(self.batches), m.extra["train_loss"], test.error,
                 epoch_end=True)

    # -- results -------------------------------------------------------------------------------------------
    def _record(self, m: _Member) -> JobResult:
        """Write member m's result as ``bioscale.train`` writes a solo job's, naming its stack."""
        result = m.result if m.result is not None else m.trainer.partial_result("failed")
        if m.extra.get("lost"):
            m.trainer.log.close()
            return result
        t = m.trainer
        for note in (t.restart_note, self.note):
            if note:
                result.error = f"{result.error}\n{note}" if result.error else note
        log_note = t.log.close(result)
        if log_note:
            result.error = f"{result.error}\n{log_note}" if result.error else log_note
        provenance = m.provenance
        provenance.threads = t.threads
        provenance.device = str(t.device) if t.device is not None else None
        provenance.stack = self.ids
        provenance.finished_at = now()
        result.provenance = provenance
        result.rule_setup = t.rule_setup
        result.wall_time_s = t.wall_time()
        try:
            m.jdir.write_result(result)
        except OSError as exc:
            result = unwritable_result(m.job, exc)
        m.claim.note = f"{result.status}, {result.epochs} epochs (stack of {len(self.members)})"
        return result

