"""The shared trainer: seeding, device, epochs, evaluation, checkpoints, metrics.

It never looks at which rule it runs: a rule's ``phases``, ``train_step`` and ``diagnostics`` are all it
calls. Errors are in %, the best over epochs, as Bartunov et al. report ("best errors achieved in 500
epochs"); ``epoch_time_s`` is the median time of the training passes of one epoch, evaluation excluded.

In a distributed job (``bioscale.distributed``) this process is one rank: rank 0 claims the job, writes the
store and the checkpoints; every rank builds the same model from the same seed, trains on its rows of each
global batch, and resumes from the same checkpoint; metrics are sums over the ranks.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bioscale import accel, cadence, claims, distributed, tasks, threads
from bioscale.checkpoint import CheckpointError, UnsafeCheckpoint, load_checkpoint
from bioscale.data import LoaderSettings, load_data
from bioscale.data.base import DataBundle
from bioscale.data.loaders import first_batch
from bioscale.events import JobProgress
from bioscale.interrupts import Interrupted
from bioscale.job import Job, unwritable_result
from bioscale.logsinks import JobLog
from bioscale.models import build_model
from bioscale.provenance import collect, now
from bioscale.rules import Rule, build_rule
from bioscale.spec import EpochMetrics, JobResult, JobSpec
from bioscale.store import METRICS, JobDir, Store, atomic_write
from bioscale.tasks import Evaluation

ProgressFn = Callable[[JobProgress], None]


class Diverged(Exception):
    """The training loss became NaN or infinite, or training raised because its numbers overflowed (e.g. an
    lr of 1e300: "value cannot be converted to type float without overflow"). Divergence is a result of the
    setting, recorded as ``diverged``; a finite loss, however large, is not divergence."""


_OVERFLOW = re.compile(r"overflow|non-?finite|\b(nan|inf|infinity)\b", re.IGNORECASE)


def overflowed(exc: BaseException, model: nn.Module | None = None) -> bool:
    """Whether ``exc``, raised while training, means the numbers blew up rather than a bug: an
    ``OverflowError`` or ``FloatingPointError``, a ``RuntimeError`` that says so (torch's "... without
    overflow", "... nan/inf ..."), or any ``RuntimeError`` once the model's parameters are no longer finite."""
    if isinstance(exc, (OverflowError, FloatingPointError)):
        return True
    if not isinstance(exc, RuntimeError) or isinstance(exc, torch.OutOfMemoryError):
        return False
    if _OVERFLOW.search(str(exc)):
        return True
    if model is None:
        return False
    try:
        return any(not bool(torch.isfinite(p).all()) for p in model.parameters())
    except Exception:  # the device itself is in an error state: not evidence of divergence
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is available; use train.device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class LeaseLost(Exception):
    """Another process took the job over (this one's heartbeat stalled past the lease timeout)."""


def run_job(job: Job, store: Store, on_progress: ProgressFn | None = None,
            lease_timeout: float = claims.DEFAULT_TIMEOUT_S, note: str | None = None) -> JobResult:
    """Claim, run (or resume) and record one job; ``note`` goes into its result (why it ran alone).

    A failure is recorded, never raised, so the other jobs go on; so is a job directory that cannot be
    written. A job another process holds is left alone (returned as ``running``, nothing written). An
    interrupt (``Interrupted``) leaves the job resumable: its finished epochs are saved, it is recorded as
    ``pending`` with a note, its lease is released, and the interrupt is raised again.

    When this process is a rank of a distributed job, rank 0 does all of the above and tells the other ranks
    whether to train (``_decided``); they train alongside it and write nothing (``_follow``). A job that asks
    for several processes, called outside a process group, is launched under torchrun
    (``bioscale.distributed.launch``).
    """
    jdir = store.job_dir(job.grid, job.job_id)
    group = distributed.current()
    if group is None and distributed.world_size(job.spec) > 1:  # never one process under an N-process job id
        return distributed.launch(job, store, on_progress, lease_timeout)
    if group is not None and not group.is_main:
        return _follow(job, jdir, group)
    try:
        claim = claims.acquire(jdir.path, lease_timeout)
    except OSError as exc:
        return _decided(group, unwritable_result(job, exc))
    if claim is None:
        holder = claims.live_lease(jdir.path)
        where = f" (pid {holder.pid} on {holder.host})" if holder else ""
        return _decided(group, JobResult(job_id=job.job_id, grid=job.grid, status="running",
                                         error=f"held by another process{where}; left alone"))
    with claim:
        return _run_claimed(job, jdir, claim, on_progress, group, note)


def _decided(group: distributed.Group | None, result: JobResult) -> JobResult:
    """Rank 0 will not train: tell the other ranks (they return the same result)."""
    if group is not None:
        group.broadcast(("skip", result.model_dump(mode="json")), "telling the ranks not to train")
    return result


def _follow(job: Job, jdir: JobDir, group: distributed.Group) -> JobResult:
    """A rank other than 0: train alongside rank 0 if it claimed the job, writing nothing. Outcomes every rank
    reaches together (divergence, a lost lease, ranks that disagree) end it quietly, since rank 0 records
    them; any other error propagates, so the rank exits with it and torchrun names it as the root cause."""
    decision, data = group.broadcast(None, "waiting for rank 0's claim")
    if decision != "train":
        return JobResult.model_validate(data)
    trainer = Trainer(job, jdir, group=group)
    try:
        return trainer.fit()
    except Diverged:
        return trainer.partial_result("diverged")
    except (LeaseLost, distributed.ReplicaMismatch) as exc:
        result = trainer.partial_result("failed")
        result.error = f"{type(exc).__name__}: {exc}"
        return result


def _run_claimed(job: Job, jdir: JobDir, claim: claims.Claim, on_progress: ProgressFn | None,
                 group: distributed.Group | None = None, note: str | None = None) -> JobResult:
    jdir.clean_temporary()  # what a kill left behind; safe now that this process holds the job
    previous = jdir.finished()
    if previous is not None:
        claim.note = "already finished"
        return _decided(group, previous)  # finished by another process between planning and claiming
    provenance = collect()
    try:
        jdir.write_spec(job.grid, job.spec)
        jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status="running", provenance=provenance))
    except OSError as exc:
        return _decided(group, unwritable_result(job, exc))
    if group is not None:
        group.broadcast(("train", None), "telling the ranks to train")
    trainer = Trainer(job, jdir, on_progress, owns=lambda: not claim.lost, group=group)
    interrupted: Interrupted | None = None
    try:
        result = trainer.fit()
    except Diverged as exc:
        result = trainer.partial_result("diverged")
        result.error = str(exc)
    except LeaseLost:
        trainer.log.close()
        return JobResult(job_id=job.job_id, grid=job.grid, status="running",
                         error="another process took this job over; this one stopped without writing")
    except Interrupted as exc:  # resumable, not failed: the finished epochs are on disk
        interrupted = exc
        result = trainer.partial_result("pending")
        done = len(trainer.metrics)
        result.error = (f"interrupted by {exc.name} after {done} of {job.spec.train.epochs} epochs "
                        f"({cadence.saved_note(job.spec.train, done)}); run the same command to resume")
    except distributed.PeerLost as exc:  # another rank stopped: resumable; the launcher records why if it failed
        result = trainer.partial_result("pending")
        done = len(trainer.metrics)
        result.error = (f"stopped after {done} of {job.spec.train.epochs} epochs "
                        f"({cadence.saved_note(job.spec.train, done)}): {exc} Run the same command to resume.")
    except Exception as exc:  # recorded as failed; the other jobs go on
        result = trainer.partial_result("failed")
        tb = traceback.format_exc(limit=-3)
        result.error = f"{type(exc).__name__}: {exc}\n{tb}"
    for extra in (trainer.restart_note, note):
        if extra:
            result.error = f"{result.error}\n{extra}" if result.error else extra
    log_note = trainer.log.close(result)  # TensorBoard, W&B (bioscale.logsinks): a failing sink is a note
    if log_note:
        result.error = f"{result.error}\n{log_note}" if result.error else log_note
    provenance.threads = trainer.threads
    result.rule_setup = trainer.rule_setup
    provenance.device = str(trainer.device) if trainer.device is not None else None
    if group is not None and provenance.device is not None:
        provenance.device += f" (rank 0 of {group.world}, {group.backend})"
    provenance.finished_at = now()
    result.provenance = provenance
    result.wall_time_s = trainer.wall_time()
    try:
        jdir.write_result(result)
    except OSError as exc:
        result = unwritable_result(job, exc)
    claim.note = f"{result.status}, {result.epochs} epochs" + (f" ({interrupted.name})" if interrupted else "")
    if interrupted is not None:
        raise interrupted
    return result


class Trainer:
    def __init__(self, job: Job, jdir: JobDir, on_progress: ProgressFn | None = None,
                 owns: Callable[[], bool] | None = None, group: distributed.Group | None = None) -> None:
        self.job = job
        self.group = group
        """The ranks of a distributed job (None: this process alone)."""
        self.writes = group is None or group.is_main
        """Only rank 0 writes metrics and checkpoints."""
        self.owns = owns
        """False once another process took the job over: then nothing more may be written."""
        self.spec: JobSpec = job.spec
        self.jdir = jdir
        self.on_progress = on_progress
        self.device: torch.device | None = None
        self.metrics: list[EpochMetrics] = []
        self.previous_wall_time = 0.0
        self.started = time.perf_counter()
        self.restart_note: str | None = None
        self.rule_setup: str | None = None
        self.log = JobLog()
        """The job's log sinks (``bioscale.logsinks``), opened by the writing process once it knows the epoch."""
        self.threads: int | None = None
        """torch's CPU threads for this job (``bioscale.threads``)."""
        self.task = tasks.scoring(job.spec.dataset.name)
        """How a batch becomes a loss and how the job is scored (the dataset's record names it)."""
        self.step_begin: Callable[[], None] | None = None
        """Called before each training step: CUDA graphs' new-iteration mark (``bioscale.accel.step_marker``)."""

    def wall_time(self) -> float:
        """Seconds spent on this job, over every run that resumed it."""
        return self.previous_wall_time + time.perf_counter() - self.started

    # -- setup -------------------------------------------------------------------------------------------
    def build(self) -> tuple[DataBundle, nn.Module, Rule]:
        spec = self.spec
        group = self.group
        self.device = group.device if group is not None else resolve_device(spec.train.device)
        seed_everything(spec.seed)
        ctx = LoaderSettings(spec.train.batch_size, spec.train.eval_batch_size, self.device, spec.seed,
                          spec.train.num_workers)
        if group is not None and not group.is_main:  # rank 0 downloads or builds caches first, alone
            group.barrier("waiting for rank 0 to load the data")
        data = load_data(spec.dataset, ctx)
        if group is not None:
            if group.is_main:
                group.barrier("waiting for rank 0 to load the data")
            data = distributed.shard_bundle(data, group)
        seed_everything(spec.seed)  # the model's init does not depend on what loading the data drew
        rule = build_rule(spec)
        rule.task = self.task
        model = rule.prepare(build_model(spec.arch, data.info))
        if group is not None and spec.train.distributed.sync_bn:
            model = distributed.convert_sync_batchnorm(model)
        self.rule_setup = rule.describe()
        model.to(self.device)
        if spec.train.channels_last:  # before the optimisers: their state takes the parameters' layout
            accel.channels_last(model)
        rule.setup(self.device, spec.train.amp)
        if group is not None:  # every rank drew the same matrices from the same seed: checked, not assumed
            distributed.GradientSync(group, rule).attach()
            distributed.check_replicas(group, model, rule, "after building the model")
        self.rule_setup = accel.describe(self.rule_setup, accel.apply(model, rule, spec.train, self.device))
        self.step_begin = accel.step_marker(spec.train.compile, self.device)
        return data, model, rule

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> JobResult:
        data, model, rule = self.build()
        self.threads = threads.for_job(self.spec, data.info, self.device)
        start = self.restore(model, rule)
        if self.writes:
            self.log = JobLog.open(self.job, self.jdir.path, start, self.metrics)
        train = self.spec.train
        group = self.group
        end = min(train.epochs, self.job.stop_after or train.epochs)  # a rung of successive halving stops early
        for epoch in range(start, end):
            try:
                train_time, train_loss, running_error = self.train_epoch(epoch, data, model, rule)
            except (OverflowError, FloatingPointError, RuntimeError) as exc:
                if not overflowed(exc, model):
                    raise
                raise Diverged(f"training overflowed in epoch {epoch + 1}: {type(exc).__name__}: {exc}") from exc
            if not math.isfinite(train_loss):
                raise Diverged(f"training loss is {train_loss} in epoch {epoch + 1}")
            if group is not None:
                distributed.broadcast_norm_buffers(group, model)
            running = running_error if train.train_error == "running" else None
            last_of_run = epoch + 1 == end  # a rung's stop is evaluated and checkpointed: the promotion needs both
            test, train_error, val = Evaluation(), running, Evaluation()
            if cadence.due(train.eval_every, epoch, train.epochs) or last_of_run:
                test = self.task.evaluate(model, data.test, rule, group)
                train_error = self.task.train_error(model, data, rule, group, running)
                held = getattr(data, "validation", None)  # dataset.params.validation: what a search selects on
                if held is not None:
                    val = self.task.evaluate(model, held, rule, group)
            diagnostics: dict[str, float] = {}
            if cadence.diagnostics_due(train, epoch):
                # the first training batch, read in this process: ``next(iter(...))`` would start a DataLoader's
                # worker pool and prefetch 2W+1 batches to use one. Every rank reads the same whole batch
                # (diagnostics may run collectives, e.g. global batch norm).
                x, y = cadence.diagnostics_slice(first_batch(data.train_eval), train.diagnostics_batch)
                diagnostics = rule.diagnostics(x, y)
            self.metrics.append(EpochMetrics(
                epoch=epoch + 1, train_loss=train_loss, train_error=train_error, test_error=test.error,
                test_loss=test.loss, top5_error=test.top5, epoch_time_s=train_time, lr=rule.current_lr(),
                diagnostics=diagnostics, metrics={**test.metrics, **_skipped(data)}, val_error=val.error,
                val_loss=val.loss))
            lost = self.owns is not None and not self.owns()
            if group is not None:
                distributed.check_replicas(group, model, rule, f"after epoch {epoch + 1}")
                lost = bool(group.broadcast(lost, "sharing the lease's state"))
            if lost:
                raise LeaseLost(f"lease on {self.jdir.path} lost in epoch {epoch + 1}")
            if self.writes:
                self.jdir.write_metrics(self.metrics)
                self.log.epoch(self.metrics[-1])  # before the checkpoint: a resume purges and relogs this epoch
                if cadence.checkpoint_due(train, epoch) or (train.checkpoint and last_of_run):
                    self.save(model, rule, epoch + 1)
            self.report(epoch + 1, len(data.train), len(data.train), train_loss, test.error, epoch_end=True)
        if end < train.epochs:
            from bioscale.promote import paused

            return paused(self.partial_result("pending"), end, train.epochs)
        return self.partial_result("done")

    def train_epoch(self, epoch: int, data: DataBundle, model: nn.Module, rule: Rule
                    ) -> tuple[float, float, float | None]:
        """One epoch's training passes; returns (seconds, mean task loss, running error in % or None)."""
        rule.begin_epoch(epoch)
        data.train.set_epoch(epoch)
        model.train()
        group = self.group
        steps = len(data.train)
        every = max(1, steps // 20)
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        running = self.spec.train.train_error == "running"  # else the argmax per step is wasted work
        nhwc = self.spec.train.channels_last
        step_begin = self.step_begin
        has_logits = True
        t0 = time.perf_counter()
        phases = rule.phases(epoch)
        warm = rule.warms_up()
        for p, phase in enumerate(phases):
            rule.begin_phase(phase)
            first = (epoch * len(phases) + p) * steps  # the job's step count so far (a warm-up's clock)
            for i, (x, y) in enumerate(data.train):
                shard = getattr(data.train, "current_shard", None) if group is not None else None
                if group is not None:
                    distributed.set_step_shard(rule, shard)
                if warm:
                    rule.begin_step(epoch, first + i)
                if nhwc:
                    x = accel.nhwc(x)
                if step_begin is not None:
                    step_begin()
                out = rule.train_step(x, y)
                counts = shard is None or shard.counts  # a batch every rank holds whole counts once
                if out.logits is None:
                    has_logits = False
                if counts:
                    loss_sum += out.loss.float() * len(y)
                    seen += len(y)
                    if out.logits is not None and running:
                        wrong += (out.logits.argmax(1) != y).sum()
                if (i + 1) % every == 0:  # the only host syncs inside the epoch
                    loss = float(out.loss)
                    if group is not None:  # the global batch's loss, so every rank decides alike
                        total, n = group.sum([loss * len(y) if counts else 0.0, len(y) if counts else 0])
                        loss = total / n if n else loss
                    if not math.isfinite(loss):
                        raise Diverged(f"training loss is {loss} in epoch {epoch + 1}, step {i + 1}")
                    self.report(epoch + 1, i + 1, steps, loss, None)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        total_loss, wrong_n = float(loss_sum), float(wrong)
        if group is not None:
            distributed.set_step_shard(rule, None)
            total_loss, wrong_n, seen_f, no_logits = group.sum([total_loss, wrong_n, seen, 0 if has_logits else 1])
            seen, has_logits = int(seen_f), no_logits == 0
        error = 100.0 * wrong_n / seen if running and has_logits and seen else None
        return elapsed, total_loss / max(seen, 1), error

    def report(self, epoch: int, step: int, steps: int, loss: float | None, test_error: float | None,
               epoch_end: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(JobProgress(self.job.job_id, self.job.label, epoch, self.spec.train.epochs,
                                         step, steps, loss, test_error, epoch_end))

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self, model: nn.Module, rule: Rule, epochs_done: int) -> None:
        """Write the state to resume from. Only tensors and plain data (what ``bioscale.checkpoint.KEYS``
        lists), so ``restore`` can read it with the safe loader. Rank 0 of a distributed job writes it for all."""
        self.write_checkpoint({"model": model.state_dict(), "rule": rule.state_dict(),
                               "torch_rng": torch.get_rng_state(), "cuda_rng": self._cuda_rng(),
                               "python_rng": random.getstate()}, epochs_done)

    def write_checkpoint(self, state: dict[str, Any], epochs_done: int) -> None:
        """Write ``state`` (model, rule and generator states) as this job's checkpoint after ``epochs_done``
        epochs: what ``save`` writes, and what a stack writes for each of its members (``bioscale.stack_train``)."""
        state = {"epochs_done": epochs_done, **state, "wall_time_s": self.wall_time()}
        atomic_write(self.jdir.checkpoint, lambda f: torch.save(state, f))

    def _cuda_rng(self) -> list[Tensor]:
        """Every GPU's generator; in a distributed job only this rank's GPU's, which every rank restores into
        its own GPU (the ranks' streams are equal, each on its own device)."""
        if not torch.cuda.is_available():
            return []
        if self.group is None:
            return torch.cuda.get_rng_state_all()
        on_gpu = self.device is not None and self.device.type == "cuda"
        return [torch.cuda.get_rng_state(self.device)] if on_gpu else []

    def restore(self, model: nn.Module, rule: Rule) -> int:
        """Resume from the last consistent point; returns the number of epochs already done.

        That is the checkpoint's epoch when the checkpoint loads with the safe loader (a crafted pickle is
        refused, never run), holds everything ``save`` writes, and metrics.jsonl has consistent lines for all
        its epochs. Otherwise the checkpoint and metrics are set aside (never deleted) and the job starts from
        epoch 0 exactly as a fresh one would: a checkpoint ahead of its metrics cannot give back the model of
        the last epoch that has metrics. Damaged metrics lines after the checkpoint's epochs are set aside and
        the consistent ones kept. ``restart_note`` says what was done, for the job's result.

        In a distributed job rank 0 decides all that, then every other rank loads the same checkpoint file (no
        rank writes until the next epoch ends, which needs them all) and the ranks' states are compared."""
        group = self.group
        if group is None:
            return self._restore(model, rule)
        done = self._restore(model, rule) if group.is_main else 0
        done = int(group.broadcast(done, "sharing the epoch to resume from"))
        problem = None
        if done and not group.is_main:
            try:
                state = load_checkpoint(self.jdir.checkpoint, self.device)
                if int(state["epochs_done"]) != done:
                    raise CheckpointError(f"it is at epoch {state['epochs_done']}, rank 0 resumed from {done}")
                self._apply(state, model, rule)
            except Exception as exc:
                problem = f"rank {group.rank}: {type(exc).__name__}: {exc}"
        problems = [p for p in group.gather(problem, "sharing checkpoint problems") if p]
        if problems:
            raise CheckpointError(f"not every rank could resume from {self.jdir.checkpoint}: {'; '.join(problems)}")
        self.metrics = group.broadcast(self.metrics if group.is_main else None, "sharing the metrics")
        distributed.check_replicas(group, model, rule, f"after resuming from epoch {done}")
        return done

    def _restore(self, model: nn.Module, rule: Rule) -> int:
        self.jdir.clean_temporary()  # leftovers of a kill; the job is ours now
        notes = list(self.jdir.notes)  # a damaged spec.json or result.json kept aside when the job started
        rows, problems = self.jdir.scan_metrics()
        done = 0
        if self.jdir.checkpoint.exists():
            fresh = self._snapshot(model, rule)
            try:
                done = self._load(model, rule, len(rows), problems)
            except Exception as exc:  # nothing from the file stays in the model: start over as a fresh job
                self._rewind(fresh, model, rule)
                done = 0
                how, why = _checkpoint_problem(exc)
                kept = self.jdir.set_aside(f"checkpoint {how} ({why}); the job restarted from epoch 0")
                notes.append(f"restarted from epoch 0: the checkpoint {how} ({why}); kept as {kept}")
        if done:
            self.metrics = rows[:done]
            if problems:  # lines past the checkpoint's epochs are damaged: keep the file aside, the good part here
                kept = self.jdir.set_aside(f"{'; '.join(problems)}; resumed from epoch {done}", names=(METRICS,))
                self.jdir.write_metrics(self.metrics)
                notes.append(f"resumed from epoch {done} (the checkpoint's): {'; '.join(problems)}; kept as {kept}")
        else:
            self.metrics = []
            if problems and (self.jdir.path / METRICS).exists():
                kept = self.jdir.set_aside(f"{'; '.join(problems)}; the job restarted from epoch 0", names=(METRICS,))
                notes.append(f"restarted from epoch 0: {'; '.join(problems)}; kept as {kept}")
        self.restart_note = "\n".join(notes) or None
        return done

    def _load(self, model: nn.Module, rule: Rule, consistent: int, problems: list[str]) -> int:
        """Apply the checkpoint if it is consistent with ``consistent`` epochs of metrics; raise otherwise."""
        state = load_checkpoint(self.jdir.checkpoint, self.device)
        done = int(state["epochs_done"])
        if done > self.spec.train.epochs:
            raise _Mismatch(f"it is at epoch {done} but the job has {self.spec.train.epochs} epochs")
        if done > consistent:
            why = f": {'; '.join(problems)}" if problems else ""
            raise _Mismatch(f"it is at epoch {done} but metrics.jsonl holds {consistent} consistent epochs{why}")
        self._apply(state, model, rule)
        return done

    def _apply(self, state: dict[str, Any], model: nn.Module, rule: Rule) -> None:
        """Put a loaded checkpoint's state into the model, the rule and the random generators."""
        model.load_state_dict(state["model"])
        rule.load_state_dict(state["rule"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            if self.group is None:
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
            elif self.device is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"][0].cpu(), self.device)
        random.setstate(state["python_rng"])
        self.previous_wall_time = float(state["wall_time_s"])

    @staticmethod
    def _snapshot(model: nn.Module, rule: Rule) -> dict[str, Any]:
        """The freshly built state, to go back to if applying a checkpoint fails half way (kept on the CPU, so
        a model that fills the GPU does not need twice its memory there)."""
        return {"model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                "rule": copy.deepcopy(rule.state_dict()), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python_rng": random.getstate()}

    def _rewind(self, fresh: dict[str, Any], model: nn.Module, rule: Rule) -> None:
        model.load_state_dict(fresh["model"])
        rule.load_state_dict(fresh["rule"])
        torch.set_rng_state(fresh["torch_rng"])
        if fresh["cuda_rng"]:
            torch.cuda.set_rng_state_all(fresh["cuda_rng"])
        random.setstate(fresh["python_rng"])
        self.previous_wall_time = 0.0

    # -- results -----------------------------------------------------------------------------------------
    def partial_result(self, status: str) -> JobResult:
        """The result from the epochs done so far (also for failed, diverged and interrupted jobs).

        ``done`` is recorded only when the metrics are exactly epochs 1..E; otherwise the result is ``failed``
        with the reason (a re-run redoes the missing epochs), so no job is ever done with epochs missing."""
        m = self.metrics
        error = None
        epochs = [r.epoch for r in m]
        if status == "done" and epochs != list(range(1, self.spec.train.epochs + 1)):
            status = "failed"
            error = (f"not recorded as done: the metrics hold epochs {_ranges(epochs) or 'none'} of "
                     f"1-{self.spec.train.epochs}; run again to redo the missing ones")
        result = JobResult(job_id=self.job.job_id, grid=self.job.grid, status=status, epochs=len(m),  # type: ignore[arg-type]
                           error=error)
        self.task.summarize(result, m)
        return result


def _skipped(data: DataBundle) -> dict[str, float]:
    """``{"skipped_images": N}`` when the job's loaders have skipped N unreadable samples so far (a loader
    that can skip one, e.g. COCO's, counts them in ``skipped`` and warns with the file's name), else ``{}``:
    a damaged file is a count in the job's metrics, never a crash mid-epoch and never silent."""
    loaders = (data.train, data.test, getattr(data, "train_eval", None), getattr(data, "validation", None))
    n = sum(int(getattr(loader, "skipped", 0) or 0) for loader in {id(x): x for x in loaders if x is not None}.values())
    return {"skipped_images": float(n)} if n else {}


class _Mismatch(CheckpointError):
    """A checkpoint that loads but does not fit this job's metrics or length."""


def _checkpoint_problem(exc: Exception) -> tuple[str, str]:
    """(what went wrong, why) in words for a checkpoint that ``restore`` could not resume from."""
    if isinstance(exc, UnsafeCheckpoint):
        how = "could not be read safely"
    elif isinstance(exc, CheckpointError) and not isinstance(exc, _Mismatch):
        how = "could not be read"
    else:  # it loaded, but does not fit the metrics or the model
        how = "could not be used"
    why = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
    return how, " ".join(why.split())[:400]


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    out: list[str] = []
    for n in numbers:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def evaluate(model: nn.Module, loader: Any, rule: Rule, group: distributed.Group | None = None
             ) -> tuple[float, float | None, float]:
    """(top-1 error %, top-5 error % or None, mean cross-entropy) of a classifier: ``bioscale.tasks``'s
    classification task, kept under its old name."""
    e = tasks.get("classification").evaluate(model, loader, rule, group)
    return e.error, e.top5, e.loss  # type: ignore[return-value]
