"""``bioscale status``: where each job of a store (or of a grid file) stands, read from the store alone.

Per job: its state (``queued`` where a live Slurm job holds it and no process has claimed it yet), epochs
done of planned, the last and the best value of its task's score (test error in %, lower is better; COCO AP
for detection, higher is better: ``bioscale.tasks``), the process holding its lease, an ETA for a running
job, the scheduler's job id and the first line of its note. ``--watch`` redraws the table until Ctrl-C.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bioscale.job import Job, job_label
from bioscale.slurm import Queue, read_submission

if TYPE_CHECKING:
    from rich.table import Table

    from bioscale.spec import EpochMetrics, JobSpec
    from bioscale.store import JobDir, Store

STATES = ("queued", "running", "pending", "done", "failed", "diverged")
COLUMNS = ("grid", "job_id", "job", "status", "epochs", "last", "best", "eta", "scheduler", "where", "note")


def status_rows(store: Store, grid: str | None = None, jobs: Sequence[Job] | None = None,
                queue: Queue | None = None) -> list[dict[str, Any]]:
    """One row per job (``COLUMNS``; ``of`` is the planned epochs). ``jobs`` (from a grid file) adds the jobs
    not recorded yet."""
    from bioscale.claims import live_lease

    queue = queue or Queue()
    entries: list[tuple[str, JobDir, Job | None]] = []
    labels: dict[tuple[str, str], str] = {}
    if jobs is not None:
        entries = [(j.grid, store.job_dir(j.grid, j.job_id), j) for j in jobs]
    else:
        from bioscale.select import store_candidates  # labels as the grid file gives them ("... last_layer_bp=true")

        entries = [(g, jdir, None) for g, jdir in store.jobs(grid)]
        labels = {(c.grid, c.job_id): c.label for c in store_candidates(store, grid)}
    records = {jdir.path: read_submission(jdir.path) for _, jdir, _ in entries}
    live = queue.live(r for r in records.values() if r is not None)
    rows = []
    for gname, jdir, job in entries:
        state = jdir.inspect()
        spec = state.spec or (job.spec if job else None)
        record = records[jdir.path]
        status = state.status
        queued = record is not None and (record.job_id or f"submitting-{record.pid}") in live
        if status in ("pending", "failed") and queued:
            status = "queued"
        lease = live_lease(jdir.path) if state.leased else None
        if lease is not None:
            where = f"{lease.host} pid {lease.pid}"
        elif status == "queued" and record is not None:
            when = datetime.fromtimestamp(record.submitted_at)
            where = f"since {when:%H:%M}" if when.date() == datetime.now().date() else f"since {when:%Y-%m-%d %H:%M}"
        else:
            where = ""
        note = (state.result.error if state.result and state.result.error else "; ".join(state.problems))
        last, best = scores(spec, state.metrics)
        of = spec.train.epochs if spec else None
        rows.append({
            "grid": gname, "job_id": jdir.job_id, "job": _label(job, labels.get((gname, jdir.job_id)), spec),
            "status": status,
            "epochs": len(state.metrics), "of": of, "last": last, "best": best,
            "eta_s": eta_s(state.metrics, of) if status == "running" else None,
            "scheduler": f"{record.cluster} {record.job_id}" if record and record.job_id else "",
            "where": where, "note": _first_line(note)})
    return rows


def _label(job: Job | None, stored: str | None, spec: JobSpec | None) -> str:
    if job is not None:
        return job.label
    return stored or (job_label(spec, {}) if spec else "?")


def scores(spec: JobSpec | None, metrics: list[EpochMetrics]) -> tuple[float | None, float | None]:
    """(last evaluated, best) value of the job's task score; (None, None) before its first evaluation."""
    if spec is None or not metrics:
        return None, None
    from bioscale import tasks

    task = tasks.scoring(spec.dataset.name)
    values = [v for v in (task.value(m) for m in metrics) if v is not None]
    best = task.best(metrics)
    return (values[-1] if values else None), (task.value(best) if best is not None else None)


def eta_s(metrics: list[EpochMetrics], planned: int | None) -> float | None:
    """Seconds left: the median training time of its epochs so far times the epochs left (evaluation not
    counted, so a lower bound); None before the first epoch."""
    if not metrics or planned is None:
        return None
    return statistics.median(m.epoch_time_s for m in metrics) * max(0, planned - len(metrics))


def duration(seconds: float | None) -> str:
    """``"~1h05m"``, ``"~3m"``, ``"~40s"``; empty for None."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s >= 3600:
        return f"~{s // 3600}h{s % 3600 // 60:02d}m"
    return f"~{s // 60}m" if s >= 60 else f"~{s}s"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def status_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2) + "\n"


def count_states(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {s: 0 for s in STATES}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {k: v for k, v in counts.items() if v}


def summary_line(rows: list[dict[str, Any]]) -> str:
    return f"{len(rows)} jobs: " + (", ".join(f"{n} {s}" for s, n in count_states(rows).items()) or "none")


def status_table(rows: list[dict[str, Any]]) -> Table:
    """The rows as a table that fits a terminal: a column empty in every row (no Slurm ids, nothing running)
    is left out, as is ``grid`` when there is one; the state, epochs and numbers never wrap, the label does."""
    from rich.markup import escape
    from rich.table import Table

    cells = [{**row, "epochs": f"{row['epochs']}/{row['of']}" if row["of"] is not None else str(row["epochs"]),
              "last": _number(row["last"]), "best": _number(row["best"]), "eta": duration(row["eta_s"])}
             for row in rows]
    optional = {"scheduler", "where", "note", "eta"}
    shown = [name for name in COLUMNS
             if not (name in optional and not any(c[name] for c in cells))
             and not (name == "grid" and len({c["grid"] for c in cells}) == 1)]
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in shown:
        table.add_column(name, overflow="fold" if name in ("note", "job") else "ellipsis",
                         no_wrap=name in ("status", "epochs", "last", "best", "eta", "job_id"),
                         justify="right" if name in ("last", "best", "eta") else "left")
    for c in cells:
        table.add_row(*(escape(str(c[name])) for name in shown))
    return table


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
