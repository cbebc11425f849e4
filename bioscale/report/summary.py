"""The seeds of one setting, aggregated as numbers: what every table (both layouts, every format) is made of.

A setting is one grid x rule x schedule x arch x dataset x ``setting`` (every other spec key that varies
within the grid): jobs that differ in anything but the seed never share a mean. Only finished jobs (done,
diverged) go into means; running and interrupted (pending) ones only with ``include_running``; failed ones
never. Each setting still lists every job's status, so unfinished work is shown as such.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bioscale.report.frame import PARTIAL, clean, in_means

GROUP = ["grid", "rule", "schedule", "arch", "dataset", "setting"]
STATUS_ORDER = ("done", "diverged", "running", "pending", "failed")
METRICS = ("train_error", "test_error", "top5_error", "ap", "ap50", "ap75")
HEADLINE = ("test_error", "ap")
"""A job is in a setting's seeds when it has its task's best number: a test error, or a detection AP."""
FIRST = ("paper_train_error", "paper_test_error", "paper_top5_error", "paper_note", "paper_dataset",
         "paper_source", "paper_setup", "second_test_error", "second_source")


def summarize(frame: pd.DataFrame, include_running: bool = False) -> pd.DataFrame:
    """One row per setting, in the frame's order (the papers' row order). Columns: ``GROUP``; ``jobs``;
    ``seeds`` (jobs in the means); ``status`` ("2 done, 1 running") and a count per status; ``partial``
    (unfinished jobs in the means, only with ``include_running``); ``epochs_min``/``epochs_max`` (of the jobs
    in the means; of all the setting's jobs where none is) and ``planned_epochs``; ``<metric>`` (mean) and
    ``<metric>_std`` (sample std; None under two values) for train, test and top-5 error and detection's AP,
    AP50, AP75; ``delta`` (mean
    test error minus the paper's); ``epoch_time_s`` (median); the paper's numbers and notes as in the frame."""
    counted = in_means(frame, include_running)
    rows = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        used = group[counted.loc[group.index]]
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        counts = group["status"].value_counts()
        row["jobs"] = len(group)
        row["seeds"] = int(used[list(HEADLINE)].notna().any(axis=1).sum())
        row["status"] = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if s in counts)
        for s in STATUS_ORDER:
            row[s] = int(counts.get(s, 0))
        row["partial"] = int(used["status"].isin(PARTIAL).sum())
        behind = used if len(used) else group  # the epochs behind the numbers shown (or the progress so far)
        row["epochs_min"], row["epochs_max"] = int(behind["epochs"].min()), int(behind["epochs"].max())
        planned = group["planned_epochs"].dropna()
        row["planned_epochs"] = int(planned.max()) if len(planned) else None
        for metric in METRICS:
            values = used[metric].dropna().astype(float)
            row[metric] = values.mean() if len(values) else None
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else None
        for col in FIRST:
            row[col] = next((v for v in group[col] if v is not None and not pd.isna(v)), None)
        if row["test_error"] is not None and row["paper_test_error"] is not None:
            row["delta"] = row["test_error"] - row["paper_test_error"]
        else:
            row["delta"] = None
        times = used["epoch_time_s"].dropna()
        row["epoch_time_s"] = times.median() if len(times) else None
        rows.append({k: clean(v) for k, v in row.items()})
    return pd.DataFrame(rows)


def partial_jobs(frame: pd.DataFrame) -> int:
    """Unfinished jobs (running, interrupted) with some epochs: those ``include_running`` is about."""
    return int((frame["status"].isin(PARTIAL) & (frame["epochs"] > 0)).sum())


def means_note(frame: pd.DataFrame, include_running: bool) -> list[str]:
    """What went into the means, when it matters: the partial epochs left out, or the ones put in."""
    n = partial_jobs(frame)
    if not n:
        return []
    jobs = "job" if n == 1 else "jobs"
    if include_running:
        return [f"Means include the partial epochs of {n} running or interrupted {jobs} (--include-running)."]
    return [f"Means are over finished (done, diverged) jobs only: the partial epochs of {n} running or "
            f"interrupted {jobs} are left out (--include-running puts them in)."]
