"""The store as a pandas DataFrame, one row per job, joined with the papers' numbers."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bioscale import tasks
from bioscale.report.layers import layer_names
from bioscale.report.names import arch_rank, column_rank, method_rank, paper_dataset
from bioscale.report.references import find_reference
from bioscale.select import setting_flat
from bioscale.spec import JobResult
from bioscale.store import Store, load_rows

JOB_COLUMNS = [
    "grid", "job_id", "rule", "schedule", "arch", "dataset", "seed", "status", "epochs", "train_error",
    "test_error", "top5_error", "final_test_error", "best_epoch", "epoch_time_s", "wall_time_s",
    "paper_train_error", "paper_test_error", "paper_top5_error", "delta", "paper_dataset", "paper_source",
    "paper_note", "second_test_error", "second_source", "setting", "error", "planned_epochs", "paper_setup",
    "ap", "ap50", "ap75", "stack",
]
"""One row per job (``bioscale report --format csv/json``). design.md's columns are a stable interface: new
columns go at the end, none is dropped or renamed. ``ap``/``ap50``/``ap75``: a detection job's COCO AP in % at
its best epoch (the highest AP; ``bioscale.tasks``). ``stack``: how many jobs it trained with as one stacked
model (``--stack``; 1: alone), whose shared epoch and wall times its ``epoch_time_s``/``wall_time_s`` are."""
DETECTION_METRICS = ("ap", "ap50", "ap75")
# Columns that name a job's cell; everything else that varies within a grid goes into `setting`.
CELL_KEYS = {"rule.name", "rule.params.schedule", "arch.name", "dataset.name", "seed"}
INTEGERS = ("seed", "epochs", "best_epoch", "planned_epochs", "stack")
FINISHED = ("done", "diverged")
"""Statuses whose numbers are final: the only ones in means, unless ``include_running``."""
PARTIAL = ("running", "pending")
"""Jobs with (possibly) some epochs that will go on: in means only with ``include_running``. A failed job's
partial numbers never are (its error is in the report's notes; it is retried)."""
DECIMALS = 10
"""Numbers are rounded to this many decimals: far below any meaningful digit of an error in % or a time in
seconds, far above float noise (60.0 - 1.83 prints 58.17, not 58.169999999999995)."""


def in_means(frame: pd.DataFrame, include_running: bool = False) -> pd.Series:
    """Which jobs' numbers an aggregate (a mean, a curve over seeds) may use: the finished ones, and with
    ``include_running`` also those still running or interrupted."""
    allowed = FINISHED + (PARTIAL if include_running else ())
    return frame["status"].isin(allowed)


def clean(value: Any) -> Any:
    """A float without float noise (see ``DECIMALS``); anything else unchanged."""
    return round(value, DECIMALS) if isinstance(value, float) else value


def load_frame(store: Store, grid: str | None = None) -> pd.DataFrame:
    """One row per job. A damaged job (see ``JobDir.inspect``) is a row too, never skipped: status ``failed``
    (the stable set has no other word for "needs a re-run"; ``bioscale run`` re-runs it from its last
    consistent point) with ``error`` "damaged store: <what>", and whatever of its spec and metrics could be
    read; where its spec cannot be read at all, rule, arch and dataset are "?" and seed is empty."""
    return frame_from_rows(load_rows(store, grid))


def spec_flats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's spec as dotted keys (``{}`` where it cannot be read), without the keys that do not change
    what a job computes (``bioscale.select.setting_flat``)."""
    return [setting_flat(r["spec"]) if r["spec"] is not None else {} for r in rows]


def frame_from_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``load_frame`` for rows already read with ``bioscale.store.load_rows``."""
    flats = spec_flats(rows)
    varying = varying_keys(rows, flats)
    records = [_record(r, flat, varying) for r, flat in zip(rows, flats, strict=True)]
    records.sort(key=row_order)
    frame = pd.DataFrame.from_records(records, columns=JOB_COLUMNS)
    for col in INTEGERS:  # integers print as integers (10, not 10.0), a missing one as empty / null
        if frame[col].isna().any():
            frame[col] = frame[col].astype("Int64")
    return frame


def row_order(rec: dict[str, Any]) -> tuple[Any, ...]:
    """Grid, then dataset and arch column in registration order (the conv net after the LC net whose
    column it shares), then the papers' row order (rules, their schedules), setting and seed."""
    return (rec["grid"], column_rank(rec["dataset"], rec["arch"]), arch_rank(rec["arch"]),
            method_rank(rec["rule"], rec["schedule"], rec["arch"]), rec["setting"], rec["seed"] is None,
            rec["seed"] or 0)


UNKNOWN = "?"
"""Rule, arch or dataset of a job whose spec.json cannot be read."""


def _names(row: dict[str, Any]) -> dict[str, Any]:
    """rule, schedule, arch, dataset and seed of a job: from its spec, or as much as a damaged one gives."""
    spec = row["spec"]
    if spec is not None:
        return {"rule": spec.rule.name, "schedule": spec.rule.params.get("schedule", "") or "",
                "arch": spec.arch.name, "dataset": spec.dataset.name, "seed": spec.seed}
    data = row.get("spec_data") or {}

    def name(value: Any) -> str:
        if isinstance(value, dict):
            value = value.get("name")
        return value if isinstance(value, str) and value else UNKNOWN

    rule = data.get("rule")
    params = rule.get("params") if isinstance(rule, dict) else None
    schedule = params.get("schedule") if isinstance(params, dict) else None
    seed = data.get("seed")
    return {"rule": name(rule), "schedule": schedule if isinstance(schedule, str) else "",
            "arch": name(data.get("arch")), "dataset": name(data.get("dataset")),
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None}


def _record(row: dict[str, Any], flat: dict[str, Any], varying: dict[str, list[str]]) -> dict[str, Any]:
    result, metrics = row["result"], row["metrics"]
    names = _names(row)
    rec: dict[str, Any] = {"grid": row["grid"], "job_id": row["job_id"], **names, "status": row["status"],
                           "epochs": len(metrics)}
    if row["spec"] is not None:
        rec["planned_epochs"] = row["spec"].train.epochs
    dataset, arch, rule, schedule = names["dataset"], names["arch"], names["rule"], names["schedule"]
    if metrics:  # the metrics are the truth, also for a job that is still running; the task picks the best
        summary = JobResult(job_id=row["job_id"], grid=row["grid"], status="running")
        tasks.scoring(dataset).summarize(summary, metrics)
        rec.update(train_error=summary.train_error, test_error=summary.test_error, top5_error=summary.top5_error,
                   final_test_error=summary.final_test_error, best_epoch=summary.best_epoch,
                   epoch_time_s=summary.epoch_time_s, **{k: summary.metrics.get(k) for k in DETECTION_METRICS})
    if result is not None:
        rec["wall_time_s"] = result.wall_time_s
        stack = result.provenance.stack if result.provenance is not None else None
        rec["stack"] = len(stack) if stack else 1
        rec["error"] = (result.error or "").strip().splitlines()[0] if result.error else None
    if row.get("problems"):
        rec["error"] = f"damaged store: {'; '.join(row['problems'])} (running the grid again repairs it)"
    ref = find_reference(dataset, arch, rule, schedule)
    if ref is not None:
        rec.update(paper_train_error=ref.get("train_error"), paper_test_error=ref.get("test_error"),
                   paper_top5_error=ref.get("top5_error"), paper_dataset=paper_dataset(dataset),
                   paper_source=ref["source"], paper_note=ref.get("note"), paper_setup=ref.get("setup"))
        if rec.get("test_error") is not None and ref.get("test_error") is not None:
            rec["delta"] = rec["test_error"] - ref["test_error"]
    second = find_reference(dataset, arch, rule, schedule, role="secondary")
    if second is not None:
        rec.update(second_test_error=second.get("test_error"), second_source=second["source"])
    rec["setting"] = setting_of(flat, varying.get(row["grid"], []))
    return {k: clean(v) for k, v in rec.items()}


def setting_of(flat: dict[str, Any], keys: list[str]) -> str:
    """The ``setting`` of a job: ``key=value`` for each of ``keys`` it has ("rule.params.last_layer_bp=true")."""
    return ", ".join(f"{k}={_text(flat[k])}" for k in keys if k in flat)


def _text(value: Any) -> str:
    """A setting's value as it is written in a grid file or after ``--set``: true, null, [512, 512]."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def varying_keys(rows: list[dict[str, Any]], flats: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per grid, the spec keys whose values differ between jobs of the same cell (rule, schedule, arch,
    dataset): a sweep's hyperparameters. Keys that differ only between cells (Table 5's per-cell
    hyperparameters) stay out, or every row would repeat them."""
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row, flat in zip(rows, flats, strict=True):
        cell = (row["grid"], *(flat.get(k) for k in sorted(CELL_KEYS - {"seed"})))
        cells.setdefault(cell, []).append(flat)
    out: dict[str, set[str]] = {}
    for cell, items in cells.items():
        keys = {k for f in items for k in f} - CELL_KEYS
        out.setdefault(cell[0], set()).update(k for k in keys if len({repr(f.get(k)) for f in items}) > 1)
    return {grid: sorted(keys) for grid, keys in out.items()}


def load_curves(store: Store, grid: str | None = None) -> pd.DataFrame:
    """Per-epoch metrics in long form (one row per job and epoch), diagnostics as extra columns (keyed by
    module path, as recorded) and ``layer_names``: the paper's name of each module path, where the arch has
    them (``bioscale.report.layers``)."""
    records = []
    for row in load_rows(store, grid):
        base = {"grid": row["grid"], "job_id": row["job_id"], **_names(row), "status": row["status"],
                "layer_names": layer_names(row["spec"])}
        for m in row["metrics"]:
            records.append({**base, "epoch": m.epoch, "train_error": m.train_error, "test_error": m.test_error,
                            "train_loss": m.train_loss, **{k: m.metrics.get(k) for k in DETECTION_METRICS},
                            **m.diagnostics})
    return pd.DataFrame.from_records(records)
