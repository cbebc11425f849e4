"""The rich progress display of ``bioscale run``: jobs done/total, and per running job its epoch, loss,
last test error and ETA.

It is one subscriber to the executors' events (``bioscale.events``), not something executors know about:
``with Display(total) as display: executor.run(jobs, store, display)``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from bioscale.events import Event, JobFinished, JobProgress, JobStarted


class Display:
    def __init__(self, total: int, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=not enabled,
        )
        self.overall = self.progress.add_task("jobs", total=total, info="")
        self.running: dict[str, TaskID] = {}
        self.last_error: dict[str, float] = {}

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

    def _started(self, job_id: str, label: str, epochs: int) -> None:
        # the description is rendered as markup: a label such as "arch.params.hidden=[fc]" must stay text
        self.running[job_id] = self.progress.add_task(f"  {escape(job_id)} {escape(label)}", total=epochs,
                                                      info="starting")

    def _progress(self, event: JobProgress) -> None:
        task = self.running.get(event.job_id)
        if task is None:  # a producer that does not announce its jobs
            self._started(event.job_id, event.label, event.epochs)
            task = self.running[event.job_id]
        if event.test_error is not None:
            self.last_error[event.job_id] = event.test_error
        err = self.last_error.get(event.job_id)
        info = f"epoch {min(event.epoch, event.epochs)}/{event.epochs} step {event.step}/{event.steps}"
        if event.loss is not None:
            info += f" loss {event.loss:.4f}"
        if err is not None:
            info += f" test err {err:.2f}%"
        done = event.epoch - 1 + event.step / max(event.steps, 1) if event.test_error is None else event.epoch
        self.progress.update(task, completed=done, info=info)

    def _finished(self, event: JobFinished) -> None:
        task = self.running.pop(event.job_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)
        err = f"{event.test_error:.2f}%" if event.test_error is not None else "-"
        line = f"  {escape(event.job_id)}: {escape(event.status)}, best test error {err}"
        first = (event.error or "").strip().splitlines()
        if event.status in ("failed", "diverged") and first:
            line += f"\n    {escape(first[0])}"
        self.progress.console.print(line, highlight=False, soft_wrap=True)
