"""``bioscale report --select best --by val_error``: one row per cell (rule x arch x dataset) with the
configuration a search selects, chosen on the validation hold-out only.

Bartunov et al. do not say how they chose the configuration behind each Table 1 number; bioscale chooses on
the validation set (``dataset.params.validation``) so the test set is never looked at. Per job, the selected
epoch is the one with the best validation metric; its test and train errors are the ones reported. Per
configuration (the jobs of one setting: its seeds) the metric is the mean over its jobs; the configuration with
the lowest wins (ties by setting text, so the choice is stable). Only configurations whose jobs all ran their
whole budget can be selected: those stopped by successive halving (``promotions.json``) and those still running
count as tried, not as candidates. ``choose`` is handed validation numbers only: nothing else could sway it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bioscale.errors import BioscaleError
from bioscale.report.frame import clean, load_frame
from bioscale.report.names import column_of, method_of, paper_dataset
from bioscale.select import flatten, setting_flat
from bioscale.spec import EpochMetrics
from bioscale.store import Store, load_rows

BY = ("val_error", "val_loss")
"""What a selection may rank by: validation metrics only."""
CELL = ["grid", "dataset", "arch", "rule", "schedule"]
CELL_COLUMNS = [*CELL, "configs", "finished", "stopped", "unfinished", "selected", "seeds", "by", "val_error",
                "val_loss", "val_epoch", "test_error", "train_error", "paper_test_error", "paper_train_error",
                "delta", "val_median", "val_worst", "job_ids"]
"""One row per cell. ``configs``: tried; ``finished``: ran their whole budget; ``stopped``: not promoted by
successive halving; ``val_median``/``val_worst``: the spread of the ``by`` metric over every configuration tried
(each at its best epoch so far); ``test_error``/``train_error``: the selected jobs' at their best validation epoch
(mean over seeds)."""
SHORT = {"optim.lr": "lr", "optim.betas": "betas", "optim.eps": "eps", "inverse_optim.lr": "inv lr",
         "inverse_optim.betas": "inv betas", "inverse_optim.eps": "inv eps", "rule.params.alpha": "alpha",
         "rule.params.sigma": "sigma"}


@dataclass
class Score:
    """One job at its best epoch by the selection metric."""

    value: float
    epoch: int
    test_error: float
    train_error: float
    val_error: float | None
    val_loss: float | None


def score(metrics: list[EpochMetrics], by: str) -> Score | None:
    """The job's epoch with the lowest ``by`` (the first such epoch), or None without validation metrics."""
    if by not in BY:
        raise BioscaleError(f"--by {by}: a selection ranks by {' or '.join(BY)} (the validation hold-out); it never "
                            "looks at the test set.")
    rows = [m for m in metrics if getattr(m, by) is not None]
    if not rows:
        return None
    best = min(rows, key=lambda m: getattr(m, by))
    return Score(getattr(best, by), best.epoch, best.test_error, best.train_error, best.val_error, best.val_loss)


def choose(candidates: dict[str, list[float]]) -> str | None:
    """The configuration with the lowest mean validation metric (ties: the first setting text). It is given
    validation numbers only."""
    means = {k: statistics.fmean(v) for k, v in candidates.items() if v}
    return min(means, key=lambda k: (means[k], k)) if means else None


@dataclass
class Selection:
    cells: pd.DataFrame
    """One row per cell (``CELL_COLUMNS`` and, per searched key, the selected value and Table 5's)."""
    jobs: pd.DataFrame
    """The selected configurations' jobs as ``load_frame`` rows, their errors at the best validation epoch:
    what ``--layout paper`` pivots."""
    configs: pd.DataFrame
    """One row per configuration tried: cell, setting, searched values, mean ``by`` metric and test error, and
    whether it finished, was stopped or selected (the sensitivity plot's points)."""
    keys: list[str]
    """The searched keys (those whose values differ within a cell)."""


def select_best(store: Store, grid: str | None = None, by: str = "val_error") -> Selection:
    from bioscale.promote import eliminated

    frame = load_frame(store, grid)
    rows = {(r["grid"], r["job_id"]): r for r in load_rows(store, grid)}
    stopped = {g: eliminated(store, g) for g in frame["grid"].unique()}
    cells, jobs, configs = [], [], []
    keys_all: list[str] = []
    for cell_key, cell in frame.groupby(CELL, sort=False):
        keys = _searched(cell, rows)
        keys_all += [k for k in keys if k not in keys_all]
        per_config: dict[str, list[tuple[Any, Score | None]]] = {}
        for job in cell.itertuples(index=False):
            per_config.setdefault(job.setting, []).append(
                (job, score(rows[(job.grid, job.job_id)]["metrics"], by)))
        candidates: dict[str, list[float]] = {}
        summary: dict[str, dict[str, Any]] = {}
        for setting, members in per_config.items():
            out = any(job.job_id in stopped[job.grid] for job, _ in members)
            finished = not out and all(job.status == "done" and s is not None for job, s in members)
            values = [s.value for _, s in members if s is not None]
            summary[setting] = {"finished": finished, "stopped": out, "value": statistics.fmean(values) if values
                                else None, "test_error": _mean([s.test_error for _, s in members if s is not None])}
            if finished:
                candidates[setting] = values
        chosen = choose(candidates)
        spread = [v["value"] for v in summary.values() if v["value"] is not None]
        first = cell.iloc[0]
        row: dict[str, Any] = dict(zip(CELL, cell_key, strict=True))
        row.update(configs=len(per_config), finished=len(candidates),
                   stopped=sum(v["stopped"] for v in summary.values()),
                   unfinished=sum(not v["finished"] and not v["stopped"] for v in summary.values()),
                   by=by, paper_test_error=first["paper_test_error"], paper_train_error=first["paper_train_error"],
                   val_median=statistics.median(spread) if spread else None, val_worst=max(spread, default=None))
        spec_values: dict[str, Any] = {}
        if chosen is not None:
            members = per_config[chosen]
            scores = [s for _, s in members if s is not None]
            row.update(selected=chosen, seeds=len(members), val_epoch=scores[0].epoch if len(scores) == 1 else None,
                       val_error=_mean([s.val_error for s in scores]), val_loss=_mean([s.val_loss for s in scores]),
                       test_error=_mean([s.test_error for s in scores]),
                       train_error=_mean([s.train_error for s in scores]),
                       job_ids=" ".join(job.job_id for job, _ in members))
            if row["test_error"] is not None and pd.notna(row["paper_test_error"]):
                row["delta"] = row["test_error"] - row["paper_test_error"]
            spec = rows[(members[0][0].grid, members[0][0].job_id)]["spec"]
            spec_values = {k: _get(spec, k) for k in keys}
            for job, s in members:
                assert s is not None
                jobs.append({**job._asdict(), "test_error": s.test_error, "train_error": s.train_error,
                             "best_epoch": s.epoch, "setting": "",
                             "delta": s.test_error - job.paper_test_error if pd.notna(job.paper_test_error) else None})
        paper = table5(row["dataset"], row["arch"], row["rule"], row["schedule"])
        for key in keys:
            row[key] = _text(spec_values.get(key))
            row[f"{key} (paper)"] = _text(paper.get(key)) if paper else None
        cells.append({k: clean(v) for k, v in row.items()})
        for setting, members in per_config.items():
            spec = rows[(members[0][0].grid, members[0][0].job_id)]["spec"]
            configs.append({**dict(zip(CELL, cell_key, strict=True)), "setting": setting,
                            **{k: _get(spec, k) for k in keys}, "value": summary[setting]["value"],
                            "test_error": summary[setting]["test_error"], "finished": summary[setting]["finished"],
                            "stopped": summary[setting]["stopped"], "selected": setting == chosen})
    if configs and all(c["value"] is None for c in configs):
        raise BioscaleError(f"--select ranks by {by}, but no job{' of grid ' + repr(grid) if grid else ''} recorded "
                            "it: their datasets have no validation set. Give the grid dataset.params.validation "
                            "(e.g. 10000 for MNIST, 5000 for CIFAR-10) and run it; bioscale never selects on the "
                            "test set.")
    columns = CELL_COLUMNS + [c for k in keys_all for c in (k, f"{k} (paper)")]
    job_frame = pd.DataFrame(jobs, columns=list(frame.columns)) if jobs else frame.iloc[0:0]
    return Selection(pd.DataFrame(cells, columns=columns), job_frame, pd.DataFrame(configs), keys_all)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _searched(cell: pd.DataFrame, rows: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The spec keys whose values differ between the cell's jobs, seed aside: the searched hyperparameters."""
    flats = []
    for job in cell.itertuples(index=False):
        spec = rows[(job.grid, job.job_id)]["spec"]
        if spec is not None:
            flats.append({k: v for k, v in setting_flat(spec).items() if k != "seed"})
    keys = sorted({k for f in flats for k in f if len({repr(f.get(k)) for f in flats}) > 1})
    return sorted(keys, key=lambda k: (list(SHORT).index(k) if k in SHORT else len(SHORT), k))


def _get(spec: Any, key: str) -> Any:
    if spec is None:
        return None
    return flatten(spec.model_dump(mode="json")).get(key)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) or "" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table5(dataset: str, arch: str, rule: str, schedule: str) -> dict[str, Any] | None:
    """Bartunov et al.'s Table 5 values for a cell (``references/bartunov2018_table5.yaml``), or None."""
    for entry in _table5():
        if (entry["dataset"], entry["arch"], entry["rule"], entry["schedule"]) == (
                paper_dataset(dataset), arch, rule, schedule):
            return entry["values"]
    return None


def _table5() -> list[dict[str, Any]]:
    from importlib import resources

    import yaml

    text = resources.files("bioscale.references").joinpath("bartunov2018_table5.yaml").read_text()
    return yaml.safe_load(text)["entries"]


# ---- text --------------------------------------------------------------------------------------------------


def selection_text(sel: Selection) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) of the cell table."""
    from bioscale.report.cells import fmt_delta, fmt_number

    headers = ["method", "data / net", "tried", "selected job", "val err %", "test err %", "paper test %", "Δ test",
               "val median", "val worst"]
    rows = []
    for r in sel.cells.itertuples(index=False):
        tried = f"{r.configs}" + (f" ({r.stopped} stopped)" if r.stopped else "") + (
            f" ({r.unfinished} unfinished)" if r.unfinished else "")
        rows.append([method_of(r.rule, r.schedule, r.arch), f"{r.dataset} {column_of(r.arch)}", tried,
                     r.job_ids if isinstance(r.selected, str) else "none finished yet",
                     fmt_number(r.val_error), fmt_number(r.test_error), fmt_number(r.paper_test_error),
                     fmt_delta(r.delta) if pd.notna(r.delta) else "", fmt_number(r.val_median),
                     fmt_number(r.val_worst)])
    by = sel.cells["by"].iloc[0] if not sel.cells.empty else "val_error"
    notes = [f"Selected on {by} (the validation hold-out, dataset.params.validation), never on the test set: per "
             "job the epoch with the best validation metric, per configuration the mean over its seeds; test "
             "and train errors are the selected jobs' at that epoch. 'tried': configurations; 'stopped': not "
             "promoted by successive halving; val median/worst: over every configuration tried. The selected "
             "values are in the next table."]
    return headers, rows, notes


def hyperparameter_text(sel: Selection) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) of the companion table: each selected value next to Table 5's."""
    keys = [k for k in sel.keys if k in sel.cells.columns]
    headers = ["method", "data / net", *(SHORT.get(k, k) for k in keys)]
    rows = []
    for r in sel.cells.to_dict("records"):
        cells = []
        for key in keys:
            ours, paper = r.get(key), r.get(f"{key} (paper)")
            ours_t = ours if isinstance(ours, str) else ("–" if isinstance(r["selected"], str) else "")
            cells.append(f"{ours_t} ({paper})" if isinstance(paper, str) else ours_t)
        rows.append([method_of(r["rule"], r["schedule"], r["arch"]), f"{r['dataset']} {column_of(r['arch'])}",
                     *cells])
    notes = ["Selected hyperparameters (Bartunov et al. 2018, Table 5's in parentheses; Table 5 has no AO-SDTP "
             "column, and several of its values lie outside Table 4's ranges)."]
    return headers, rows, notes


def render_selection(sel: Selection, fmt: str, layout: str = "settings", *, caption: str | None = None,
                     label: str | None = None, width: int | None = None) -> str:
    """The cell table (``paper``: Table 1's layout of the selected configurations) and the companion table of
    selected hyperparameters next to Table 5's; csv/json: the cell table only, one row per cell (``paper``: the
    pivoted numbers), the selected and Table 5 values as columns."""
    from bioscale.report.render import TextTable, emit, machine, paper_table, paper_text

    if fmt in ("csv", "json"):
        return machine(paper_table(sel.jobs).numbers if layout == "paper" else sel.cells, fmt)
    if sel.cells.empty:
        return "No jobs in the results directory.\n"
    headers, rows, notes = selection_text(sel)
    if layout == "paper":
        main = paper_text(sel.jobs, False) if not sel.jobs.empty else TextTable(["method"], [], ["l"])
        main.notes.insert(0, notes[0])
    else:
        main = TextTable(headers, rows, ["l"] * 4 + ["r"] * (len(headers) - 4), notes=notes)
    main.label = label or "tab:select"
    out = emit(main, fmt, caption=caption, width=width)
    if sel.keys:
        h, r, n = hyperparameter_text(sel)
        hyper = TextTable(h, r, ["l"] * len(h), notes=n, label=f"{main.label}-hyperparameters")
        out += "\n" + emit(hyper, fmt, width=width)
    return out
