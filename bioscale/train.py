"""The shared trainer: seeding, device, epochs, evaluation, checkpoints, metrics.

It never looks at which rule it runs: a rule's ``phases``, ``train_step`` and ``diagnostics`` are all it
calls. Errors are in %, the best over epochs, as Bartunov et al. report ("best errors achieved in 500
epochs"); ``epoch_time_s`` is the median time of the training passes of one epoch, evaluation excluded.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bioscale.data import LoaderSettings, load_data
from bioscale.data.base import DataBundle
from bioscale.events import JobProgress
from bioscale.job import Job
from bioscale.models import build_model
from bioscale.provenance import collect, now
from bioscale.rules import Rule, build_rule
from bioscale.spec import EpochMetrics, JobResult, JobSpec
from bioscale.store import JobDir, Store, atomic_write

ProgressFn = Callable[[JobProgress], None]


class Diverged(Exception):
    """The training loss became NaN or infinite."""


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


def run_job(job: Job, store: Store, on_progress: ProgressFn | None = None) -> JobResult:
    """Run (or resume) one job and record its outcome; a failure is recorded, never raised."""
    jdir = store.job_dir(job.grid, job.job_id)
    jdir.write_spec(job.grid, job.spec)
    provenance = collect()
    jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status="running", provenance=provenance))
    trainer = Trainer(job, jdir, on_progress)
    try:
        result = trainer.fit()
    except Diverged as exc:
        result = trainer.partial_result("diverged")
        result.error = str(exc)
    except Exception as exc:  # recorded as failed; the other jobs go on
        result = trainer.partial_result("failed")
        tb = traceback.format_exc(limit=-3)
        result.error = f"{type(exc).__name__}: {exc}\n{tb}"
    if trainer.restart_note:
        result.error = f"{result.error}\n{trainer.restart_note}" if result.error else trainer.restart_note
    result.rule_setup = trainer.rule_setup
    provenance.device = str(trainer.device) if trainer.device is not None else None
    provenance.finished_at = now()
    result.provenance = provenance
    result.wall_time_s = trainer.wall_time()
    jdir.write_result(result)
    return result


class Trainer:
    def __init__(self, job: Job, jdir: JobDir, on_progress: ProgressFn | None = None) -> None:
        self.job = job
        self.spec: JobSpec = job.spec
        self.jdir = jdir
        self.on_progress = on_progress
        self.device: torch.device | None = None
        self.metrics: list[EpochMetrics] = []
        self.previous_wall_time = 0.0
        self.started = time.perf_counter()
        self.restart_note: str | None = None
        self.rule_setup: str | None = None

    def wall_time(self) -> float:
        """Seconds spent on this job, over every run that resumed it."""
        return self.previous_wall_time + time.perf_counter() - self.started

    # -- setup -------------------------------------------------------------------------------------------
    def build(self) -> tuple[DataBundle, nn.Module, Rule]:
        spec = self.spec
        self.device = resolve_device(spec.train.device)
        seed_everything(spec.seed)
        ctx = LoaderSettings(spec.train.batch_size, spec.train.eval_batch_size, self.device, spec.seed,
                          spec.train.num_workers)
        data = load_data(spec.dataset, ctx)
        seed_everything(spec.seed)  # the model's init does not depend on what loading the data drew
        rule = build_rule(spec)
        model = rule.prepare(build_model(spec.arch, data.info))
        self.rule_setup = rule.describe()
        model.to(self.device)
        rule.setup(self.device, spec.train.amp)
        if spec.train.compile:
            rule.model = torch.compile(model)
        return data, model, rule

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> JobResult:
        data, model, rule = self.build()
        start = self.restore(model, rule)
        train = self.spec.train
        for epoch in range(start, train.epochs):
            train_time, train_loss, running_error = self.train_epoch(epoch, data, model, rule)
            if not math.isfinite(train_loss):
                raise Diverged(f"training loss is {train_loss} in epoch {epoch + 1}")
            test_error, top5, test_loss = evaluate(model, data.test, rule)
            if train.train_error == "running" and running_error is not None:
                train_error = running_error
            else:
                train_error = evaluate(model, data.train_eval, rule)[0]
            diagnostics: dict[str, float] = {}
            if train.diagnostics_every and (epoch + 1) % train.diagnostics_every == 0:
                x, y = next(iter(data.train_eval))
                diagnostics = rule.diagnostics(x, y)
            self.metrics.append(EpochMetrics(
                epoch=epoch + 1, train_loss=train_loss, train_error=train_error, test_error=test_error,
                test_loss=test_loss, top5_error=top5, epoch_time_s=train_time, lr=rule.current_lr(),
                diagnostics=diagnostics))
            self.jdir.write_metrics(self.metrics)
            if train.checkpoint:
                self.save(model, rule, epoch + 1)
            self.report(epoch + 1, len(data.train), len(data.train), train_loss, test_error)
        return self.partial_result("done")

    def train_epoch(self, epoch: int, data: DataBundle, model: nn.Module, rule: Rule
                    ) -> tuple[float, float, float | None]:
        """One epoch's training passes; returns (seconds, mean task loss, running error in % or None)."""
        rule.begin_epoch(epoch)
        data.train.set_epoch(epoch)
        model.train()
        steps = len(data.train)
        every = max(1, steps // 20)
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        running = self.spec.train.train_error == "running"  # else the argmax per step is wasted work
        has_logits = True
        t0 = time.perf_counter()
        for phase in rule.phases(epoch):
            rule.begin_phase(phase)
            for i, (x, y) in enumerate(data.train):
                out = rule.train_step(x, y)
                loss_sum += out.loss.float() * len(y)
                seen += len(y)
                if out.logits is None:
                    has_logits = False
                elif running:
                    wrong += (out.logits.argmax(1) != y).sum()
                if (i + 1) % every == 0:  # the only host syncs inside the epoch
                    loss = float(out.loss)
                    if not math.isfinite(loss):
                        raise Diverged(f"training loss is {loss} in epoch {epoch + 1}, step {i + 1}")
                    self.report(epoch + 1, i + 1, steps, loss, None)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        error = 100.0 * float(wrong) / seen if running and has_logits and seen else None
        return elapsed, float(loss_sum) / max(seen, 1), error

    def report(self, epoch: int, step: int, steps: int, loss: float | None, test_error: float | None) -> None:
        if self.on_progress is not None:
            self.on_progress(JobProgress(self.job.job_id, self.job.label, epoch, self.spec.train.epochs,
                                         step, steps, loss, test_error))

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self, model: nn.Module, rule: Rule, epochs_done: int) -> None:
        state = {
            "epochs_done": epochs_done,
            "model": model.state_dict(),
            "rule": rule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
            "wall_time_s": self.wall_time(),
        }
        atomic_write(self.jdir.checkpoint, lambda f: torch.save(state, f))

    def restore(self, model: nn.Module, rule: Rule) -> int:
        """Resume from the last checkpoint; returns the number of epochs already done."""
        path = self.jdir.checkpoint
        if not path.exists():
            return 0
        try:
            state: dict[str, Any] = torch.load(path, map_location=self.device, weights_only=False)
            model.load_state_dict(state["model"])
            rule.load_state_dict(state["rule"])
        except Exception as exc:  # a torn or foreign file: keep it (and the metrics) aside, start over
            kept = self.jdir.set_aside(f"unreadable checkpoint ({type(exc).__name__}: {exc})")
            self.restart_note = f"restarted from epoch 0: the checkpoint could not be read; kept as {kept}"
            return 0
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        random.setstate(state["python_rng"])
        self.previous_wall_time = float(state["wall_time_s"])
        done = int(state["epochs_done"])
        self.metrics = [m for m in self.jdir.read_metrics() if m.epoch <= done]
        return done

    # -- results -----------------------------------------------------------------------------------------
    def partial_result(self, status: str) -> JobResult:
        """The result from the epochs done so far (also for failed and diverged jobs)."""
        m = self.metrics
        result = JobResult(job_id=self.job.job_id, grid=self.job.grid, status=status, epochs=len(m))  # type: ignore[arg-type]
        if m:
            best = min(m, key=lambda r: r.test_error)
            result.test_error = best.test_error
            result.best_epoch = best.epoch
            result.train_error = min(r.train_error for r in m)
            top5 = [r.top5_error for r in m if r.top5_error is not None]
            result.top5_error = min(top5) if top5 else None
            result.final_test_error = m[-1].test_error
            result.epoch_time_s = statistics.median(r.epoch_time_s for r in m)
        return result


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, rule: Rule) -> tuple[float, float | None, float]:
    """(top-1 error %, top-5 error % or None when there are 5 classes or fewer, mean cross-entropy)."""
    was_training = model.training
    model.eval()
    wrong1 = torch.zeros((), dtype=torch.long)
    wrong5 = torch.zeros((), dtype=torch.long)
    loss_sum = torch.zeros(())
    n = 0
    top5 = True
    for x, y in loader:
        with rule.autocast():
            logits: Tensor = model(x)
        logits = logits.float()
        wrong1 = wrong1.to(logits.device) + (logits.argmax(1) != y).sum()
        top5 = logits.shape[1] > 5
        if top5:
            hit = (logits.topk(5, dim=1).indices == y[:, None]).any(1)
            wrong5 = wrong5.to(logits.device) + (~hit).sum()
        loss_sum = loss_sum.to(logits.device) + nn.functional.cross_entropy(logits, y, reduction="sum")
        n += len(y)
    model.train(was_training)
    n = max(n, 1)
    return 100.0 * float(wrong1) / n, (100.0 * float(wrong5) / n if top5 else None), float(loss_sum) / n
