"""The rich progress display of ``bioscale run``: jobs done/total, and per running job its epoch, loss,
last test error and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


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

    def job_started(self, job_id: str, label: str, epochs: int) -> None:
        self.running[job_id] = self.progress.add_task(f"  {job_id} {label}", total=epochs, info="starting")

    def update(self, event: Any) -> None:
        """``event`` is a ``bioscale.train.Progress``."""
        task = self.running.get(event.job_id)
        if task is None:
            self.job_started(event.job_id, event.label, event.epochs)
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

    def job_finished(self, job_id: str, status: str, test_error: float | None, error: str | None = None) -> None:
        task = self.running.pop(job_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)
        err = f"{test_error:.2f}%" if test_error is not None else "-"
        line = f"  {job_id}: {status}, best test error {err}"
        if status in ("failed", "diverged") and error:
            line += f"\n    {error.strip().splitlines()[0]}"
        self.progress.console.print(line, highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        self.progress.console.print(text)
