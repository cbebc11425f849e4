"""``--layout paper``: rows are methods, columns are dataset x architecture x train/test, as in Bartunov
et al.'s Table 1. Each cell is our mean ± std over seeds, then the paper's number and the difference."""

from __future__ import annotations

import pandas as pd

from bioscale.report.cells import mean_std
from bioscale.report.names import column_of, method_of, method_rank


def _cell(values: pd.Series, paper: pd.Series, note: pd.Series | None = None) -> str:
    ours = mean_std(values)
    ref = paper.dropna()
    text = next((n for n in (note if note is not None else []) if isinstance(n, str) and n), "")
    if not len(ref):
        return f"{ours or '–'} ({text})" if text else ours
    if not ours:
        return f"– ({ref.iloc[0]:.2f})"
    delta = values.dropna().astype(float).mean() - float(ref.iloc[0])
    return f"{ours} ({ref.iloc[0]:.2f}, {delta:+.2f})"


def paper_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The pivoted table; columns like "mnist-5k FC test"; top-1/top-5 where train error is not reported."""
    keys = list(zip(frame.rule, frame.schedule, frame.arch, strict=True))
    frame = frame.assign(method=[method_of(*k) for k in keys], rank=[method_rank(*k) for k in keys],
                         column=[f"{d} {column_of(a)}" for d, a in zip(frame.dataset, frame.arch, strict=True)])
    columns: list[str] = []
    for col in dict.fromkeys(frame["column"]):
        group = frame[frame["column"] == col]
        paper_train = group["paper_train_error"].notna().any()
        paper_top5 = group["paper_top5_error"].notna().any()
        # the paper's own columns (Table 1: train/test; Table 2: top-1/top-5); ours alone: all we have
        metrics = ["train"] if paper_train or not paper_top5 else []
        metrics.append("test")
        if paper_top5 or (group["top5_error"].notna().any() and not paper_train):
            metrics.append("top-5")
        columns += [f"{col} {m}" for m in metrics]
    rows = []
    ranks = dict(zip(frame["method"], frame["rank"], strict=True))
    for method in sorted(ranks, key=ranks.__getitem__):
        row = {"method": method}
        for col in dict.fromkeys(frame["column"]):
            cell = frame[(frame["method"] == method) & (frame["column"] == col)]
            if cell.empty:
                continue
            row[f"{col} train"] = _cell(cell["train_error"], cell["paper_train_error"])
            row[f"{col} test"] = _cell(cell["test_error"], cell["paper_test_error"], cell["paper_note"])
            row[f"{col} top-5"] = _cell(cell["top5_error"], cell["paper_top5_error"])
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method", *columns])
    return out.fillna("")
