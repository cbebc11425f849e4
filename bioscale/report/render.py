"""Report formats. ``csv`` and ``json`` give one row per job; the table formats aggregate the seeds of one
setting as mean ± sample standard deviation, next to the paper's number and the difference."""

from __future__ import annotations

import html
import io
import json
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from tabulate import tabulate

from bioscale.report.cells import fmt_number, mean_std
from bioscale.report.paper_layout import paper_table

FORMATS = ("table", "markdown", "csv", "latex", "html", "json")
GROUP = ["grid", "rule", "schedule", "arch", "dataset", "setting"]
STATUS_ORDER = ("done", "running", "pending", "diverged", "failed")


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (all seeds together), errors as 'mean ± std' strings ready to print."""
    rows = []
    for key, group in frame.groupby(GROUP, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row["seeds"] = len(group)
        counts = group["status"].value_counts()
        row["status"] = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if s in counts)
        row["epochs"] = _int_range(group["epochs"])
        row["train_error"] = mean_std(group["train_error"])
        row["paper_train_error"] = _first(group["paper_train_error"])
        row["test_error"] = mean_std(group["test_error"])
        row["paper_test_error"] = _first(group["paper_test_error"]) or _first_text(group["paper_note"])
        delta = group["delta"].dropna()
        row["delta"] = f"{delta.mean():+.2f}" if len(delta) else ""
        row["top5_error"] = mean_std(group["top5_error"])
        row["paper_top5_error"] = _first(group["paper_top5_error"])
        row["second_test_error"] = _first(group["second_test_error"])
        row["paper_dataset"] = next((d for d in group["paper_dataset"] if isinstance(d, str)), "")
        t = group["epoch_time_s"].dropna()
        row["epoch_time_s"] = f"{t.median():.2f}" if len(t) else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    return _drop_constant(out)


def _drop_constant(out: pd.DataFrame) -> pd.DataFrame:
    """Leave out columns with nothing to say (every cell empty; one grid; no setting sweeps)."""
    keep = []
    for col in out.columns:
        values = out[col].astype(str)
        if col == "grid" and values.nunique() <= 1:
            continue
        if col in ("setting", "schedule", "top5_error", "paper_train_error", "paper_test_error", "delta",
                   "paper_top5_error", "paper_dataset", "second_test_error") and (values == "").all():
            continue
        keep.append(col)
    return out[keep]


def _first_text(values: pd.Series) -> str:
    return next((v for v in values if isinstance(v, str) and v), "")


def _first(values: pd.Series) -> str:
    v = values.dropna()
    return fmt_number(v.iloc[0]) if len(v) else ""


def _int_range(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


HEADERS = {
    "train_error": "train err %", "test_error": "test err %", "top5_error": "top-5 err %",
    "paper_train_error": "paper train %", "paper_test_error": "paper test %", "delta": "Δ test",
    "paper_top5_error": "paper top-5 %", "second_test_error": "BioTorch test %",
    "paper_dataset": "paper data", "epoch_time_s": "s/epoch",
}


LAYOUTS = ("settings", "paper")


def render(frame: pd.DataFrame, fmt: str, layout: str = "settings") -> str:
    """``settings``: one row per setting (seeds aggregated); ``paper``: the paper's table layout.
    With the default layout, csv and json give one row per job instead."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "settings" and fmt == "csv":
        return frame.to_csv(index=False)
    if layout == "settings" and fmt == "json":
        return json.dumps(json.loads(frame.to_json(orient="records")), indent=2) + "\n"
    if frame.empty:
        return "No jobs in the results directory.\n"
    if layout == "paper":
        table = paper_table(frame)
        headers = list(table.columns)
        return emit(table, headers, fmt, [*paper_legend(frame), *problem_notes(frame)])
    else:
        table = aggregate(frame)
        headers = [HEADERS.get(c, c) for c in table.columns]
    return emit(table, headers, fmt, [*source_notes(frame), *problem_notes(frame)])


def emit(table: pd.DataFrame, headers: list[str], fmt: str, notes: list[str]) -> str:
    rows = table.values.tolist()
    if fmt == "csv":
        return table.set_axis(headers, axis=1).to_csv(index=False)
    if fmt == "json":
        return json.dumps(table.set_axis(headers, axis=1).to_dict(orient="records"), indent=2) + "\n"
    if fmt == "markdown":
        text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
        return text + "\n" + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    if fmt == "latex":
        text = tabulate(rows, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)
        text = text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--")
        return text + "\n" + "".join(f"% {n}\n" for n in notes)
    if fmt == "html":
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        return table.set_axis(headers, axis=1).to_html(index=False, escape=True) + \
            (f"\n<ul>{items}</ul>" if notes else "") + "\n"
    return _rich(table, headers) + "".join(f"{n}\n" for n in notes)


def paper_legend(frame: pd.DataFrame) -> list[str]:
    """What a paper-layout cell means and where the paper's numbers come from."""
    notes = ["Cells: our best error in %, mean ± sample std over seeds (paper's number, ours minus paper's)."]
    return notes + source_notes(frame)


def source_notes(frame: pd.DataFrame) -> list[str]:
    """Where the reference numbers come from, and when our dataset is not the paper's."""
    notes = []
    for source in sorted({s for s in frame["paper_source"].dropna()}):
        notes.append(f"Paper numbers: {source}.")
    for source in sorted({s for s in frame["second_source"].dropna()}):
        notes.append(f"Second reference (not the paper's numbers): {source}.")
    pairs = sorted({(d, p) for d, p in zip(frame["dataset"], frame["paper_dataset"], strict=True)
                    if isinstance(p, str) and d != p})
    for ours, paper in pairs:
        notes.append(f"{ours} is compared with the paper's {paper}: a subset of it, so expect higher errors.")
    return notes


def problem_notes(frame: pd.DataFrame) -> list[str]:
    """One line per failed or diverged job, with its error: a report must say what went wrong."""
    notes = []
    for row in frame.itertuples(index=False):
        if row.status in ("failed", "diverged"):
            what = row.error if isinstance(row.error, str) and row.error else "no error recorded"
            notes.append(f"{row.status}: {row.job_id} ({row.rule} {row.schedule} {row.arch} {row.dataset} "
                         f"seed {row.seed}): {what}".replace("  ", " "))
    return notes


def _rich(table: pd.DataFrame, headers: list[str]) -> str:
    out = Table(show_lines=False, header_style="bold")
    for h in headers:
        out.add_column(h, justify="right" if ("%" in h or h in ("Δ test", "s/epoch", "seeds")) else "left")
    for row in table.itertuples(index=False):
        out.add_row(*(str(v) for v in row))
    buf = io.StringIO()
    Console(file=buf, width=240, force_terminal=False, color_system=None).print(out)
    return buf.getvalue()
