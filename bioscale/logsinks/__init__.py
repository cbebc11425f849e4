"""Log sinks: every epoch of a job mirrored to the tools researchers watch (TensorBoard, Weights & Biases).

A grid chooses them with ``logging: [tensorboard, wandb]`` (``bioscale run --log NAME`` adds one). The store
(``metrics.jsonl``, ``result.json``) stays the source of truth: a sink only mirrors it, so a sink that fails
(a missing package, a full disk, no network) is stopped and named in the job's result note; the job goes on
and loses nothing. Only the process that writes the store logs (rank 0 of a distributed job).

Why not the component catalog (``bioscale.catalog``): catalog entries change what a job computes, so they are
part of job ids, carry parameter models, compatibility rules and paper references, and are listed by
``bioscale list``. A sink is a run-time setting (like the executor): it is in no job id, has no parameters
(each tool reads its own environment, e.g. ``WANDB_PROJECT``), and is chosen per grid, not per job. A plain
mapping of name -> module is all it needs, and it keeps this package importable without torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bioscale.job import Job
    from bioscale.runner import Plan
    from bioscale.spec import EpochMetrics, JobResult


@dataclass(frozen=True)
class SinkInfo:
    """A sink: its module (which defines ``open_sink``), the package it needs and the extra that installs it."""

    module: str
    package: str
    extra: str
    summary: str
    folder: str
    """What it writes in the job's folder (``bioscale run --force`` sets it aside with the run's other files)."""


SINKS: dict[str, SinkInfo] = {
    "tensorboard": SinkInfo("bioscale.logsinks.tensorboard", "tensorboard", "tensorboard",
                            "event files in <job>/tensorboard/ (torch.utils.tensorboard)", "tensorboard"),
    "wandb": SinkInfo("bioscale.logsinks.wandb", "wandb", "wandb",
                      "a Weights & Biases run in <job>/wandb/ (offline unless an API key is configured)", "wandb"),
}
"""Every sink by name."""

NONE = "none"
"""``--log none``: no sink for this run, whatever the grid says."""


def check_names(names: list[str]) -> list[str]:
    """Validate a grid's ``logging:`` list (pydantic calls this): known names, each once."""
    out: list[str] = []
    for name in names:
        if name not in SINKS:
            close = difflib.get_close_matches(name, list(SINKS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown log sink {name!r}.{hint} Sinks: {', '.join(SINKS)}")
        if name not in out:
            out.append(name)
    return out


def with_sinks(planned: Plan, names: Iterable[str]) -> Plan:
    """``planned`` with ``names`` (``bioscale run --log``) added to every job's sinks; ``none`` turns them off.
    Raises ``BioscaleError`` for an unknown name."""
    from bioscale.errors import BioscaleError

    names = list(names)
    if not names:
        return planned
    try:
        chosen = [] if NONE in names else check_names([*planned.grid.logging, *names])
    except ValueError as exc:
        raise BioscaleError(f"--log: {exc} (or {NONE}).") from None
    grid = planned.grid.model_copy(update={"logging": chosen})
    jobs = {job.job_id: dataclasses.replace(job, logging=tuple(chosen)) for job in planned.jobs}
    return dataclasses.replace(planned, grid=grid, jobs=list(jobs.values()),
                               todo=[jobs[job.job_id] for job in planned.todo])


def missing_package(name: str) -> str | None:
    """Why sink ``name`` cannot run here (its package is not installed), or None. Imports nothing."""
    info = SINKS[name]
    if importlib.util.find_spec(info.package) is not None:
        return None
    return (f"logging: {name} needs the {info.package!r} package, which is not installed. Install it with "
            f"`pip install 'bioscale[{info.extra}]'` (or `pip install {info.package}`), or remove {name!r} from "
            "the grid's `logging:` list (`--log none` turns every sink off for one run).")


class Sink(Protocol):
    """What a sink module's ``open_sink(context)`` returns."""

    def epoch(self, metrics: EpochMetrics, values: dict[str, float]) -> None:
        """Log one finished epoch (``values``: its numbers by readable tag, from ``scalars``)."""

    def close(self, result: JobResult | None) -> None:
        """Flush and close; ``result`` is the job's outcome (None when it is not known)."""


@dataclass(frozen=True)
class SinkContext:
    """What a sink is opened with."""

    job: Job
    directory: Path
    """The job's folder in the store: a sink writes under it only."""
    start: int
    """Epochs already done (a resumed job): the next logged epoch is ``start + 1``."""
    done: list[EpochMetrics]
    """The metrics of those epochs."""


def scalars(metrics: EpochMetrics, best_test_error: float) -> dict[str, float]:
    """One epoch's numbers by readable tag: every field of ``metrics.jsonl``'s line, the diagnostics under
    ``alignment/`` (the rules' angles) or ``diagnostics/``, and the best test error so far."""
    out = {
        "train/loss": metrics.train_loss, "train/error": metrics.train_error, "test/error": metrics.test_error,
        "test/best_error": best_test_error, "time/epoch_s": metrics.epoch_time_s,
    }
    optional = {"test/loss": metrics.test_loss, "test/top5_error": metrics.top5_error, "lr": metrics.lr}
    out.update({tag: value for tag, value in optional.items() if value is not None})
    for key, value in metrics.diagnostics.items():
        out[diagnostic_tag(key)] = value
    return {tag: float(value) for tag, value in out.items()}


_DIAGNOSTICS = {"angle_grad_bp": "alignment/update_vs_backprop_deg", "angle_w_b": "alignment/weights_vs_feedback_deg"}
"""Readable groups for the rules' diagnostics (``bioscale.rules.angles``)."""


def diagnostic_tag(key: str) -> str:
    """``angle_grad_bp/layers.0.op`` -> ``alignment/update_vs_backprop_deg/layers.0.op``."""
    head, sep, rest = key.partition("/")
    return f"{_DIAGNOSTICS[head]}/{rest}" if sep and head in _DIAGNOSTICS else f"diagnostics/{key}"


def hparams(job: Job) -> dict[str, Any]:
    """The job's hyperparameters as flat scalars for the tools' comparison views: rule, arch and dataset with
    their parameters, optimiser, training settings, seed, job id and grid (lists as JSON, booleans and None
    as text)."""
    import json

    flat: dict[str, Any] = {"job_id": job.job_id, "grid": job.grid}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif value is None:
            flat[prefix] = "none"
        elif isinstance(value, bool):  # as text: torch's hparams summary would store a bool as the number 0/1
            flat[prefix] = str(value).lower()
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:  # lists, empty mappings
            flat[prefix] = json.dumps(value)

    spec = job.spec.model_dump(mode="json")
    for key in ("rule", "arch", "dataset"):
        component = spec.pop(key)
        flat[key] = component["name"]
        walk(f"{key}.params", component["params"])
    walk("", spec)
    return flat


class JobLog:
    """The sinks of one job, opened by the trainer's writing process. Every call is guarded: a sink that
    raises is closed, dropped and named in ``note``, so logging never fails or loses a job."""

    def __init__(self) -> None:
        self.sinks: dict[str, Sink] = {}
        self.problems: list[str] = []
        self.best = math.inf

    @classmethod
    def open(cls, job: Job, directory: Path, start: int, done: list[EpochMetrics]) -> JobLog:
        log = cls()
        log.best = min((m.test_error for m in done), default=math.inf)
        context = SinkContext(job, directory, start, list(done))
        for name in job.logging:
            problem = missing_package(name)  # preflight says so before a run; a job started another way here
            if problem:
                log.problems.append(problem.removeprefix("logging: "))
                continue
            try:
                log.sinks[name] = importlib.import_module(SINKS[name].module).open_sink(context)
            except Exception as exc:
                log._failed(name, "could not start", exc)
        return log

    def epoch(self, metrics: EpochMetrics) -> None:
        if not self.sinks:
            return
        self.best = min(self.best, metrics.test_error)
        values = scalars(metrics, self.best)
        for name, sink in list(self.sinks.items()):
            try:
                sink.epoch(metrics, values)
            except Exception as exc:
                self.sinks.pop(name)
                self._close_quietly(sink)
                self._failed(name, f"stopped in epoch {metrics.epoch}", exc)

    def close(self, result: JobResult | None = None) -> str | None:
        """Close every sink; returns the note for the job's result (None when every sink worked)."""
        for name, sink in list(self.sinks.items()):
            try:
                sink.close(result)
            except Exception as exc:
                self._failed(name, "could not be closed", exc)
        self.sinks.clear()
        return self.note

    @property
    def note(self) -> str | None:
        if not self.problems:
            return None
        return ("logging: " + "; ".join(self.problems) +
                ". The job's numbers are all in metrics.jsonl and result.json (the store is the source of truth).")

    def _failed(self, name: str, what: str, exc: Exception) -> None:
        why = " ".join(str(exc).split())[:300]
        self.problems.append(f"{name} {what} ({type(exc).__name__}: {why})")

    @staticmethod
    def _close_quietly(sink: Sink) -> None:
        with contextlib.suppress(Exception):  # already failing: its first error is the one reported
            sink.close(None)


__all__ = ["NONE", "SINKS", "JobLog", "Sink", "SinkContext", "SinkInfo", "check_names", "diagnostic_tag", "hparams",
           "missing_package", "scalars", "with_sinks"]
