"""What ``bioscale run`` shows while jobs run: one subscriber to the executors' events (``bioscale.events``),
not something executors know about: ``with Display(total) as display: executor.run(jobs, store, display)``.

On a terminal: a live view that fits 80 columns, whose first line always shows jobs done/total, running,
failed and the ETA, then one row per running job (its compact label, epoch, loss, last test error). In a log
file or a Slurm output (not a terminal): plain lines, one per job when it starts and finishes and one per
epoch at most every ``LOG_EVERY_S`` seconds per job (first and last epochs always), so a 500-epoch job is
neither silent for hours nor 500 lines long.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column

from bioscale.events import Event, JobFinished, JobProgress, JobStarted

LOG_EVERY_S = 60.0


class Display:
    def __init__(self, total: int, console: Console | None = None, enabled: bool = True,
                 log_every_s: float = LOG_EVERY_S) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.plain = enabled and not self.console.is_terminal
        self.log_every_s = log_every_s
        self.total = total
        self.done = 0
        self.failed = 0
        self.running: dict[str, TaskID] = {}
        self.fraction: dict[str, float] = {}
        self.labels: dict[str, str] = {}
        self.last_error: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("{task.description}", table_column=Column(ratio=3, no_wrap=True, overflow="ellipsis")),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[info]}", table_column=Column(ratio=4, no_wrap=True, overflow="ellipsis")),
            TimeRemainingColumn(compact=True),
            console=self.console, transient=False, expand=True, disable=not enabled or self.plain,
        )
        self.overall = self.progress.add_task(f"jobs 0/{total}", total=total, info=self._counts())

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        """The event handler: pass the display itself as an executor's ``on_event``."""
        if isinstance(event, JobProgress):
            self._progress(event)
        elif isinstance(event, JobStarted):
            self._started(event.job_id, event.label, event.epochs)
        elif isinstance(event, JobFinished):
            self._finished(event)
        # other events (from a newer executor) are not this display's business

    def _counts(self) -> str:
        """The first line's second half (its first is "jobs done/total"): what a glance must tell."""
        failed = f"[red]{self.failed} failed[/]" if self.failed else "0 failed"
        return f"{len(self.running)} running, {failed}"

    def _refresh_overall(self) -> None:
        completed = self.done + sum(self.fraction.values())
        self.progress.update(self.overall, description=f"jobs {self.done}/{self.total}", info=self._counts(),
                             completed=completed)

    def _started(self, job_id: str, label: str, epochs: int) -> None:
        self.labels[job_id] = label
        self.fraction[job_id] = 0.0
        # the description is rendered as markup: a label such as "hidden=[fc]" must stay text
        self.running[job_id] = self.progress.add_task(f"  {escape(label)}", total=epochs, info="starting")
        self._refresh_overall()
        if self.plain:
            self._line(f"started {label} ({job_id}), {epochs} epochs")

    def _progress(self, event: JobProgress) -> None:
        task = self.running.get(event.job_id)
        if task is None:  # a producer that does not announce its jobs
            self._started(event.job_id, event.label, event.epochs)
            task = self.running[event.job_id]
        end_of_epoch = event.epoch_end or event.test_error is not None
        if event.test_error is not None:
            self.last_error[event.job_id] = event.test_error
        err = self.last_error.get(event.job_id)
        info = f"epoch {min(event.epoch, event.epochs)}/{event.epochs}"
        if event.loss is not None:
            info += f" loss {event.loss:.4f}"
        if err is not None:
            info += f" err {err:.2f}%"
        done = event.epoch if end_of_epoch else event.epoch - 1 + event.step / max(event.steps, 1)
        self.fraction[event.job_id] = min(1.0, done / max(event.epochs, 1))
        self.progress.update(task, completed=done, info=info)
        self._refresh_overall()
        if self.plain and end_of_epoch:
            now = time.monotonic()
            first_or_last = event.epoch in (1, event.epochs)
            if first_or_last or now - self.last_line.get(event.job_id, -1e9) >= self.log_every_s:
                self.last_line[event.job_id] = now
                self._line(f"{self.labels.get(event.job_id, event.label)} ({event.job_id}): {info}")

    def _finished(self, event: JobFinished) -> None:
        task = self.running.pop(event.job_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.fraction.pop(event.job_id, None)
        self.done += 1
        self.failed += event.status == "failed"
        self._refresh_overall()
        err = f"{event.test_error:.2f}%" if event.test_error is not None else "-"
        best = f"best AP {event.ap:.2f}%" if event.ap is not None else f"best test error {err}"
        label = self.labels.get(event.job_id, event.label)
        line = f"  {escape(label)} {escape(event.job_id)}: {escape(event.status)}, {best}"
        first = (event.error or "").strip().splitlines()
        if event.status in ("failed", "diverged") and first:
            line += f"\n    {escape(first[0])}"
        if self.plain:
            line = f"{line.strip()} [{self.done}/{self.total} jobs]"
        self.progress.console.print(line, highlight=False, soft_wrap=True)

    def _line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"{stamp} {escape(text)}", highlight=False, soft_wrap=True)
