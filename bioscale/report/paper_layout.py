"""``--layout paper``: rows are methods, columns are dataset x architecture x train/test, as in Bartunov
et al.'s Table 1. A row is one setting of one method (seeds of different settings or grids are never
merged; the setting and the grid are shown where they vary). A cell is our mean ± std over the setting's
seeds, then the paper's number and the difference, then the jobs that are not finished."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bioscale import tasks
from bioscale.report.cells import fmt_delta, fmt_number, is_number, mean_std, setting_label
from bioscale.report.names import column_of, method_of, method_rank
from bioscale.report.summary import summarize

METRIC_COLUMNS = {"train": "train_error", "test": "test_error", "top-5": "top5_error", "AP": "ap", "AP50": "ap50",
                  "AP75": "ap75"}
HEADLINE = ("test", "AP")
"""The column a paper note ("not tabulated") goes in: the test error, or a detection's AP."""
NOT_FINISHED = ("diverged", "running", "pending", "failed")


@dataclass
class PaperTable:
    """The layout once, for text (``text``: strings) and machine formats (``numbers``: numbers as numbers).
    ``keys`` are the leading columns (grid where there are several, method, setting where any), ``panels``
    the dataset x column groups with their metrics ("mnist-5k FC", ["train", "test"])."""

    keys: list[str]
    panels: list[tuple[str, list[str]]]
    text: pd.DataFrame
    numbers: pd.DataFrame
    seeds: int | None = None
    """The most seeds in a cell (what a grid's settings usually all have); cells with fewer say [n=k]."""
    statuses: list[str] = field(default_factory=list)
    """The unfinished statuses the cells mention."""

    @property
    def columns(self) -> list[str]:
        return [*self.keys, *(f"{p} {m}" for p, ms in self.panels for m in ms)]


def paper_table(frame: pd.DataFrame, include_running: bool = False) -> PaperTable:
    """The pivoted table; columns like "mnist-5k FC test"; top-1/top-5 where train error is not reported."""
    s = summarize(frame, include_running)
    if s.empty:
        return PaperTable(["method"], [], pd.DataFrame(columns=["method"]), pd.DataFrame(columns=["method"]))
    keys3 = list(zip(s.rule, s.schedule, s.arch, strict=True))
    s = s.assign(method=[method_of(*k) for k in keys3], _rank=[method_rank(*k) for k in keys3],
                 panel=[f"{d} {column_of(a)}" for d, a in zip(s.dataset, s.arch, strict=True)],
                 label=[setting_label(x) for x in s.setting])
    # two archs in one paper column under one row name (a plugin's): the arch joins the row name, so that
    # one cell never stands for two settings
    clash = s.duplicated(["grid", "method", "setting", "panel"], keep=False)
    s.loc[clash, "method"] = [f"{m} ({a})" for m, a in zip(s.loc[clash, "method"], s.loc[clash, "arch"],
                                                             strict=True)]
    panels = [(p, _metrics(s[s["panel"] == p])) for p in dict.fromkeys(s["panel"])]
    usual = int(s["seeds"].max()) or None  # a grid's settings have as many seeds; fewer is worth a mark
    keys = (["grid"] if s["grid"].nunique() > 1 else []) + ["method"] + (["setting"] if (s["label"] != "").any()
                                                                          else [])
    order = sorted(dict.fromkeys(zip(s.grid, s.method, s.setting, s.label, strict=True)),
                   key=lambda k: (k[0], _rank_of(s, k[1]), k[2]))
    text_rows, number_rows = [], []
    for grid, method, setting, label in order:
        rows = s[(s["grid"] == grid) & (s["method"] == method) & (s["setting"] == setting)]
        text: dict[str, Any] = {"grid": grid, "method": method, "setting": label}
        numbers: dict[str, Any] = {"grid": grid, "method": method, "setting": setting}
        for panel, metrics in panels:
            cell = rows[rows["panel"] == panel]
            if cell.empty:
                continue
            c = cell.iloc[0]
            for m in metrics:
                text[f"{panel} {m}"] = _cell(c, m, usual)
                numbers.update(_numbers(c, f"{panel} {m}", m))
            numbers[f"{panel} seeds"] = c["seeds"]
            numbers[f"{panel} status"] = c["status"]
        text_rows.append(text)
        number_rows.append(numbers)
    columns = [*keys, *(f"{p} {m}" for p, ms in panels for m in ms)]
    number_columns = ["grid", "method", "setting"] + [
        c for p, ms in panels
        for c in [*(f"{p} {m}{x}" for m in ms for x in ("", " std", " paper", " delta")), f"{p} seeds", f"{p} status"]]
    statuses = [st for st in NOT_FINISHED if s[st].sum()]
    numbers = pd.DataFrame(number_rows, columns=number_columns)
    for p, _ in panels:  # counts stay integers where a row has no cell in a panel (1, not 1.0)
        numbers[f"{p} seeds"] = numbers[f"{p} seeds"].astype("Int64")
    return PaperTable(keys, panels, pd.DataFrame(text_rows, columns=columns).fillna(""), numbers, usual, statuses)


def _rank_of(s: pd.DataFrame, method: str) -> tuple[Any, ...]:
    return min(s.loc[s["method"] == method, "_rank"])


def _metrics(group: pd.DataFrame) -> list[str]:
    """The paper's own columns (Table 1: train/test; Table 2: top-1/top-5); ours alone: all we have. A
    detection panel (COCO AP of ours, or the paper's row of a detection dataset) shows AP, AP50, AP75."""
    if group["ap"].notna().any() or any(_detection(d) for d in group["dataset"]):
        return ["AP", "AP50", "AP75"]
    paper_train = group["paper_train_error"].notna().any()
    paper_top5 = group["paper_top5_error"].notna().any()
    metrics = ["train"] if paper_train or not paper_top5 else []
    metrics.append("test")
    if paper_top5 or (group["top5_error"].notna().any() and not paper_train):
        metrics.append("top-5")
    return metrics


def _detection(dataset: str) -> bool:
    try:
        return tasks.for_dataset(dataset).name == "detection"
    except Exception:  # a dataset no longer registered
        return False


def _paper_value(c: pd.Series, metric: str) -> Any:
    return c.get(f"paper_{METRIC_COLUMNS[metric]}")  # no paper tabulates a detection number


def _cell(c: pd.Series, metric: str, usual: int | None) -> str:
    """"2.60 ± 0.14 (1.48, +1.12)"; nothing of ours yet: "– (2.75)"; then what is not plain: [n=1] (seeds
    other than the usual number), [1 running] (the setting's jobs that are not done)."""
    col = METRIC_COLUMNS[metric]
    ours = mean_std(c[col], c[f"{col}_std"])
    paper = _paper_value(c, metric)
    note = c["paper_note"] if metric in HEADLINE and isinstance(c["paper_note"], str) else ""
    if is_number(paper):
        delta = fmt_delta(c[col] - paper) if is_number(c[col]) else ""
        text = f"{ours or '–'} ({fmt_number(paper)}{', ' + delta if delta else ''})"
    elif note:
        text = f"{ours or '–'} ({note})"
    else:
        text = ours or "–"
    marks = [f"n={c['seeds']}"] if c["seeds"] and usual and c["seeds"] != usual else []
    marks += [f"{c[st]} {st}" for st in NOT_FINISHED if c[st]]
    return f"{text} [{', '.join(marks)}]" if marks else text


def _numbers(c: pd.Series, name: str, metric: str) -> dict[str, Any]:
    col = METRIC_COLUMNS[metric]
    paper = _paper_value(c, metric)
    delta = c[col] - paper if is_number(c[col]) and is_number(paper) else None
    return {name: c[col], f"{name} std": c[f"{col}_std"], f"{name} paper": paper,
            f"{name} delta": None if delta is None else round(delta, 10)}


def paper_legend(table: PaperTable, include_running: bool = False) -> str:
    """What a cell means, in the words of this table (its seeds, the brackets its cells hold)."""
    marked = any("[n=" in v for col in table.text.columns for v in table.text[col].astype(str))
    n = table.seeds
    if n == 1:
        text = "Cells: our best error in %, one seed per setting"
    else:
        text = (f"Cells: our best error in % as mean ± sample std over the {f'{n} ' if n else ''}seeds of one "
                "setting" + (" ([n=k]: over k seeds)" if marked else ""))
    text += "; in parentheses the paper's number and ours minus the paper's."
    if any("AP" in metrics for _, metrics in table.panels):
        text += " Detection cells (AP, AP50, AP75): COCO AP in % at the epoch of the highest AP, higher is better."
    if table.statuses:
        counted = "done, diverged, running and interrupted" if include_running else "done and diverged"
        text += (f" [1 {table.statuses[0]}] and the like: the cell's jobs that are not done; means are over "
                 f"its {counted} jobs.")
    return text
