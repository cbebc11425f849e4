"""``bioscale compare``: two results (two stores, or two grids of one store) side by side, a row per setting,
with the difference B - A.

A setting is matched across the two sides by rule, schedule, arch, dataset and every key that varies within
either side (the report's ``setting``, e.g. ``rule.params.last_layer_bp=true``); each side's seeds are
aggregated as in the report (``bioscale.report.summary``: mean ± sample std over finished jobs). Keys that
are constant on each side but differ between them (two conventions: ``optim.lr`` 1e-4 vs 1e-3; two versions
of a grid) are what is being compared: they do not split rows, a note names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from bioscale.report.cells import fmt_delta, is_number, mean_std, setting_label
from bioscale.report.frame import clean, frame_from_rows, row_order, setting_of, spec_flats, varying_keys
from bioscale.report.render import DEFAULT_WIDTH, TextTable, emit, epochs_cell, machine
from bioscale.report.summary import means_note, summarize

KEYS = ["rule", "schedule", "arch", "dataset", "setting"]
METRICS = ("test_error", "train_error")
HEADERS = {"test_error": "test %", "train_error": "train %"}
MISSING = "—"
"""The cell of a side that has no job of the setting."""
MAX_DIFFERENCES = 8


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the store's rows (``bioscale.store.load_rows``) of one grid."""

    name: str
    """"A" or "B"."""
    where: str
    """What it is, for the notes: "runs (grid table1-mnist5k)"."""
    rows: list[dict[str, Any]]


@dataclass
class Comparison:
    numbers: pd.DataFrame
    """One row per setting: ``KEYS``, ``present`` (both, A only, B only), per side ``seeds``, ``status``,
    ``epochs``, ``<metric>``, ``<metric>_std`` (suffix ``_a``/``_b``), ``<metric>_delta`` (B - A) and
    ``epochs_delta``; the paper's test error."""
    text: pd.DataFrame
    """The same rows as the table prints them."""
    notes: list[str]


def compare(a: Side, b: Side, include_running: bool = False) -> Comparison:
    """Match the settings of ``a`` and ``b`` and put their seeds' means side by side."""
    flats = {s.name: spec_flats(s.rows) for s in (a, b)}
    keys = sorted({k for s in (a, b) for ks in varying_keys(s.rows, flats[s.name]).values() for k in ks})
    frames, summaries = {}, {}
    for side in (a, b):
        frame = frame_from_rows(side.rows)
        setting = {r["job_id"]: setting_of(f, keys) for r, f in zip(side.rows, flats[side.name], strict=True)}
        frame["setting"] = frame["job_id"].map(setting).fillna("")
        frame["grid"] = side.name  # the two sides' grids may differ in name: rows match across them
        frames[side.name] = frame
        summaries[side.name] = summarize(frame, include_running) if len(frame) else None
    numbers = _merge(summaries[a.name], summaries[b.name])
    notes = [f"A: {a.where}; B: {b.where}.",
             "Cells: best error in %, mean ± sample std over the seeds of one setting; Δ = B − A of the means; "
             "[status] where a setting has no finished job; epochs: A / B where they differ."]
    notes += _shared_note(numbers) + _differences(a, b, flats, keys)
    one_sided = numbers["present"].value_counts()
    for label in ("A only", "B only"):
        if one_sided.get(label):
            other = "B" if label == "A only" else "A"
            notes.append(f"{one_sided[label]} setting(s) only in {label[0]} ({MISSING} under {other}).")
    for side in (a, b):
        notes += [f"{side.name}: {n}" for n in means_note(frames[side.name], include_running)]
    return Comparison(numbers, _text(numbers), notes)


def _merge(sa: pd.DataFrame | None, sb: pd.DataFrame | None) -> pd.DataFrame:
    cols = [*KEYS, "jobs", "seeds", "status", "epochs_min", "epochs_max", "planned_epochs", "paper_test_error",
            *(m for metric in METRICS for m in (metric, f"{metric}_std"))]
    empty = pd.DataFrame(columns=cols)
    sa = empty if sa is None else sa[cols]
    sb = empty if sb is None else sb[cols]
    merged = pd.merge(sa, sb, on=KEYS, how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    merged["present"] = merged["_merge"].map({"both": "both", "left_only": "A only", "right_only": "B only"})
    merged["paper_test_error"] = merged["paper_test_error_a"].combine_first(merged["paper_test_error_b"])
    for metric in (*METRICS, "epochs"):
        left, right = (f"{metric}_max_a", f"{metric}_max_b") if metric == "epochs" else (f"{metric}_a", f"{metric}_b")
        merged[f"{metric}_delta"] = [clean(float(y) - float(x)) if is_number(x) and is_number(y) else None
                                     for x, y in zip(merged[left], merged[right], strict=True)]
    merged = merged.rename(columns={"epochs_max_a": "epochs_a", "epochs_max_b": "epochs_b"})
    order = sorted(range(len(merged)), key=lambda i: row_order({"grid": "", "seed": 0, **{
        k: merged[k].iloc[i] for k in KEYS}}))
    merged = merged.iloc[order].reset_index(drop=True)
    out = [*KEYS, "present", "seeds_a", "seeds_b", "status_a", "status_b",
           *(c for metric in METRICS for c in (f"{metric}_a", f"{metric}_a_std", f"{metric}_b", f"{metric}_b_std",
                                               f"{metric}_delta")),
           "epochs_a", "epochs_b", "epochs_delta", "planned_epochs_a", "planned_epochs_b", "epochs_min_a",
           "epochs_min_b", "paper_test_error"]
    merged = merged.rename(columns={f"{m}_std_{s}": f"{m}_{s}_std" for m in METRICS for s in "ab"})
    numbers = merged[out].astype(object).where(merged[out].notna(), None)
    for col in ("seeds_a", "seeds_b", "epochs_a", "epochs_b", "epochs_delta", "planned_epochs_a",
                "planned_epochs_b", "epochs_min_a", "epochs_min_b"):
        numbers[col] = pd.Series([int(v) if is_number(v) else None for v in numbers[col]], dtype=object)
    return numbers


def _cell(r: pd.Series, metric: str, side: str) -> str:
    if r["present"] not in ("both", f"{side.upper()} only"):
        return MISSING
    value = mean_std(r[f"{metric}_{side}"], r[f"{metric}_{side}_std"])
    return value or f"[{r[f'status_{side}']}]"


def _text(numbers: pd.DataFrame) -> pd.DataFrame:
    """The table's cells: rule (with its schedule), arch and dataset where they vary, the setting where
    there is one, then A, B and Δ per metric and each side's epochs."""
    rows = []
    for _, r in numbers.iterrows():
        row: dict[str, str] = {"rule": f"{r['rule']}/{r['schedule']}" if r["schedule"] else str(r["rule"]),
                               "arch": str(r["arch"]), "dataset": str(r["dataset"]),
                               "setting": setting_label(r["setting"])}
        for metric in METRICS:
            row[f"A {HEADERS[metric]}"] = _cell(r, metric, "a")
            row[f"B {HEADERS[metric]}"] = _cell(r, metric, "b")
            row[f"Δ {HEADERS[metric].split()[0]}"] = fmt_delta(r[f"{metric}_delta"])
        row["epochs"] = _epochs(r)
        rows.append(row)
    order = ["rule", "arch", "dataset", "setting"]
    for m in METRICS:
        order += [f"A {HEADERS[m]}", f"B {HEADERS[m]}", f"Δ {HEADERS[m].split()[0]}"]
    text = pd.DataFrame(rows, columns=[*order, "epochs"])
    keep = [c for c in text.columns if c not in ("arch", "dataset", "setting")
            or text[c].nunique() > 1 or (c == "setting" and (text[c] != "").any())]
    return text[keep]


def _epochs(r: pd.Series) -> str:
    """Each side's epochs ("10", "1/3" while unfinished) as "A / B", or once where they read the same."""
    cells = [epochs_cell(r[f"epochs_min_{s}"], r[f"epochs_{s}"], r[f"planned_epochs_{s}"])
             if r["present"] in ("both", f"{s.upper()} only") else MISSING for s in "ab"]
    return cells[0] if cells[0] == cells[1] else f"{cells[0]} / {cells[1]}"


def _shared_note(numbers: pd.DataFrame) -> list[str]:
    shared = [f"{k} {numbers[k].iloc[0]}" for k in ("arch", "dataset") if len(numbers) and numbers[k].nunique() == 1]
    return [f"All rows: {', '.join(shared)}."] if shared else []


def _differences(a: Side, b: Side, flats: dict[str, list[dict[str, Any]]], varying: list[str]) -> list[str]:
    """Keys constant within each side whose values differ between the sides: what A and B compare."""
    skip = set(varying) | {"rule.name", "rule.params.schedule", "arch.name", "dataset.name", "seed"}
    values: dict[str, dict[str, set[str]]] = {}
    for side in (a, b):
        for flat in flats[side.name]:
            for k, v in flat.items():
                if k not in skip:
                    values.setdefault(k, {"A": set(), "B": set()})[side.name].add(setting_of({k: v}, [k]))
    diffs = [(k, v) for k, v in sorted(values.items()) if v["A"] and v["B"] and v["A"] != v["B"]]
    if not diffs:
        return []
    items = [f"{k} (A {' / '.join(sorted(v['A'])).replace(k + '=', '')}, B "
             f"{' / '.join(sorted(v['B'])).replace(k + '=', '')})" for k, v in diffs[:MAX_DIFFERENCES]]
    more = f" and {len(diffs) - MAX_DIFFERENCES} more" if len(diffs) > MAX_DIFFERENCES else ""
    return [f"A and B differ in {', '.join(items)}{more}: rows are matched without these keys."]


def render_comparison(c: Comparison, fmt: str, width: int | None = None) -> str:
    """csv/json: ``numbers`` (numbers as numbers); the table formats: ``text`` with the notes."""
    if fmt in ("csv", "json"):
        return machine(c.numbers, fmt)
    if c.numbers.empty:
        return "Nothing to compare: neither side has jobs.\n"
    texts = [str(col) for col in c.text.columns]
    align = ["l" if col in ("rule", "arch", "dataset", "setting") else "r" for col in texts]
    table = TextTable(texts, c.text.values.tolist(), align, notes=c.notes, label="tab:compare")
    return emit(table, fmt, width=min(width or DEFAULT_WIDTH, DEFAULT_WIDTH) if fmt == "table" else width)
