"""Report formats. ``csv`` and ``json`` give one row per job (``--layout paper``: one row per method and
setting, numbers as numbers); the table formats aggregate the seeds of one setting as mean ± sample standard
deviation, next to the paper's number and the difference. Means are over finished jobs unless
``include_running``; every setting still shows its unfinished jobs."""

from __future__ import annotations

import difflib
import html
import io
import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tabulate import tabulate

from bioscale.errors import BioscaleError
from bioscale.report.cells import fmt_delta, fmt_number, is_number, mean_std, setting_label
from bioscale.report.frame import JOB_COLUMNS
from bioscale.report.paper_layout import PaperTable, paper_legend, paper_table
from bioscale.report.summary import means_note, summarize

FORMATS = ("table", "markdown", "csv", "latex", "html", "json")
LAYOUTS = ("settings", "paper")

TABLE_COLUMNS = ("grid", "rule", "schedule", "arch", "dataset", "setting", "seeds", "status", "epochs",
                 "train_error", "paper_train_error", "test_error", "paper_test_error", "delta", "top5_error",
                 "paper_top5_error", "second_test_error", "paper_dataset", "epoch_time_s", "ap", "ap50", "ap75")
"""What ``--columns`` may name in the settings tables (the csv/json names where the meaning is the same)."""
DEFAULT_COLUMNS = ("rule", "arch", "dataset", "status", "epochs", "test_error", "paper_test_error", "delta")
"""The default table: what a reader compares, within 100 terminal columns (arch and dataset only where they
vary; a note names them otherwise). ``--columns +train_error`` or ``all`` for more."""
DEFAULT_WIDTH = 100
ROW_KEYS = ("grid", "rule", "arch", "dataset", "setting")
"""Columns that tell settings apart: always shown where they vary, whatever ``--columns`` says, so that no
two rows look alike."""

HEADERS = {
    "train_error": "train err %", "test_error": "test err %", "top5_error": "top-5 err %",
    "paper_train_error": "paper train %", "paper_test_error": "paper test %", "delta": "Δ test",
    "paper_top5_error": "paper top-5 %", "second_test_error": "BioTorch test %",
    "paper_dataset": "paper data", "epoch_time_s": "s/epoch", "ap": "AP %", "ap50": "AP50 %", "ap75": "AP75 %",
}
TEXT_COLUMNS = {"grid", "rule", "schedule", "arch", "dataset", "setting", "status", "paper_dataset"}


@dataclass
class TextTable:
    """A table as strings, with what each format needs to print it well."""

    headers: list[str]
    rows: list[list[str]]
    align: list[str]
    """"l" or "r" per column."""
    notes: list[str] = field(default_factory=list)
    """What the table means and where its numbers come from (a LaTeX table's default caption)."""
    problems: list[str] = field(default_factory=list)
    """Failed, diverged and damaged jobs (a LaTeX table keeps them as comments, out of the paper)."""
    groups: list[tuple[str, int]] = field(default_factory=list)
    """A header row above ``headers``: (label, columns spanned); LaTeX only (the paper's dataset x arch)."""
    sub_headers: list[str] = field(default_factory=list)
    """``headers`` as they read under ``groups`` ("train" under "mnist-5k FC")."""
    label: str = "tab:bioscale"


def render(frame: pd.DataFrame, fmt: str, layout: str = "settings", *, include_running: bool = False,
           columns: str | list[str] | None = None, caption: str | None = None, label: str | None = None,
           width: int | None = None) -> str:
    """``settings``: one row per setting (seeds aggregated); ``paper``: the paper's table layout. With the
    default layout, csv and json give one row per job instead (``columns``: which of their columns).
    ``columns`` picks the settings tables' columns (see ``choose_columns``); ``caption`` and ``label`` are
    LaTeX, used as given; ``width`` caps the ``table`` format (a terminal's width; None: its natural width)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "paper" and columns:
        raise BioscaleError("--columns chooses the columns of the settings layout; the paper layout has the "
                            "paper's columns. Leave out --columns, or use --layout settings.")
    if layout == "settings" and fmt in ("csv", "json"):
        chosen = choose_columns(columns, JOB_COLUMNS, JOB_COLUMNS)
        return machine(frame[chosen], fmt)
    if layout == "paper" and fmt in ("csv", "json"):
        return machine(paper_table(frame, include_running).numbers, fmt)
    if frame.empty:
        return "No jobs in the results directory.\n"
    table = paper_text(frame, include_running) if layout == "paper" else \
        settings_text(frame, include_running, columns)
    table.label = label or _default_label(frame, layout)
    if layout == "settings" and not columns:  # the default table is never wider than 100 columns
        width = min(width or DEFAULT_WIDTH, DEFAULT_WIDTH)
    return emit(table, fmt, caption=caption, width=width)


def machine(data: pd.DataFrame, fmt: str) -> str:
    """csv or json: numbers as numbers (rounded, see ``frame.DECIMALS``), missing as empty / null."""
    if fmt == "csv":
        return data.to_csv(index=False)
    return json.dumps(json.loads(data.to_json(orient="records", double_precision=10)), indent=2,
                      ensure_ascii=False) + "\n"


def choose_columns(spec: str | list[str] | None, default: tuple[str, ...] | list[str],
                   allowed: tuple[str, ...] | list[str]) -> list[str]:
    """``--columns``: "test_error,delta" (these), "+top5_error,-epochs" (the default plus or minus these),
    "all"; comma-separated, in the order given."""
    if not spec:
        return list(default)
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    first = tokens[0] if tokens else "default"
    out: list[str] = [] if first not in ("all", "default") and first[0] not in "+-" else list(default)
    for token in tokens:
        if token in ("all", "default"):
            out += [c for c in (allowed if token == "all" else default) if c not in out]
            continue
        name = token.lstrip("+-")
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BioscaleError(f"--columns: unknown column {name!r}.{hint} Columns: {', '.join(allowed)}; "
                                "or all, default, +NAME (add to the default), -NAME (leave out).")
        if token.startswith("-"):
            out = [c for c in out if c != name]
        elif name not in out:
            out.append(name)
    return out


def aggregate(frame: pd.DataFrame, include_running: bool = False, columns: str | list[str] | None = None
              ) -> pd.DataFrame:
    """One row per setting (the seeds of one setting together), as the strings the settings table prints;
    the columns are ``TABLE_COLUMNS`` names."""
    s = summarize(frame, include_running)
    if s.empty:
        return pd.DataFrame(columns=list(DEFAULT_COLUMNS))
    chosen = choose_columns(columns, _default(s), TABLE_COLUMNS)
    for key in ROW_KEYS:  # a column that tells rows apart is shown where it varies
        if key not in chosen and _varies(s, key):
            chosen.insert(_position(chosen, key), key)
    if not columns:  # the default leaves out what has nothing to say (see `constant_note`)
        chosen = [c for c in chosen if (c not in ("arch", "dataset") or _varies(s, c))
                  and (c not in ("paper_test_error", "delta") or s[c].notna().any()
                       or (c == "paper_test_error" and s["paper_note"].notna().any()))]
    fold = "schedule" not in chosen  # then rule says "dtp/alternating"
    cells = {c: [_value(r, c, fold) for r in s.itertuples(index=False)] for c in chosen}
    return pd.DataFrame(cells, columns=chosen)


def constant_note(frame: pd.DataFrame, columns: str | list[str] | None) -> list[str]:
    """The default table leaves out a grid, arch or dataset that every row shares: this note names them."""
    if columns or frame.empty:
        return []
    shared = [(k, frame[k].iloc[0]) for k in ("grid", "arch", "dataset") if frame[k].nunique() == 1]
    return [f"All rows: {', '.join(f'{k} {v}' for k, v in shared)}."] if shared else []


def _default(s: pd.DataFrame) -> list[str]:
    """The default columns, plus top-5 where the paper reports it (ImageNet) and the second reference where
    there is one (BioTorch's ResNet-18 numbers, where Xiao et al. tabulate none); detection's COCO AP, AP50
    and AP75 where there are detection jobs (their test error column then only where classification jobs
    have one too)."""
    out = list(DEFAULT_COLUMNS)
    if s["ap"].notna().any():
        at = out.index("test_error")
        out[at:at] = ["ap", "ap50", "ap75"]
        if not s["test_error"].notna().any():
            out.remove("test_error")
    if s["paper_top5_error"].notna().any():
        out += ["top5_error", "paper_top5_error"]
    if s["second_test_error"].notna().any():
        out.append("second_test_error")
    return out


def _varies(s: pd.DataFrame, key: str) -> bool:
    values = s[key] if key != "rule" else s["rule"] + "/" + s["schedule"]
    return values.nunique() > 1 or (key == "setting" and (s["setting"] != "").any())


def _position(chosen: list[str], key: str) -> int:
    """Where a row key goes: after the row keys before it in ``ROW_KEYS`` that are shown."""
    before = ROW_KEYS[:ROW_KEYS.index(key)]
    return max((chosen.index(k) + 1 for k in before if k in chosen), default=0)


def _value(r: Any, col: str, fold: bool) -> str:
    if col == "rule":
        return f"{r.rule}/{r.schedule}" if fold and r.schedule else r.rule
    if col == "setting":
        return setting_label(r.setting)
    if col == "seeds":
        return str(r.seeds)
    if col == "epochs":
        return epochs_cell(r.epochs_min, r.epochs_max, r.planned_epochs)
    if col in ("train_error", "test_error", "top5_error", "ap", "ap50", "ap75"):
        return mean_std(getattr(r, col), getattr(r, f"{col}_std"))
    if col == "delta":
        return fmt_delta(r.delta)
    if col == "paper_test_error":
        return fmt_number(r.paper_test_error) or (r.paper_note if isinstance(r.paper_note, str) else "")
    if col in ("paper_train_error", "paper_top5_error", "second_test_error", "epoch_time_s"):
        return fmt_number(getattr(r, col))
    value = getattr(r, col)
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def epochs_cell(lo: int, hi: int, planned: Any) -> str:
    """"10" (every job at its planned 10), "1/3" (at epoch 1 of 3), "4-10" (some jobs further than others;
    the status says which are unfinished)."""
    if lo != hi:
        return f"{lo}-{hi}"
    return f"{lo}/{int(planned)}" if is_number(planned) and lo != planned else str(lo)


def settings_text(frame: pd.DataFrame, include_running: bool, columns: str | list[str] | None) -> TextTable:
    table = aggregate(frame, include_running, columns)
    text = [c for c in table.columns if c in TEXT_COLUMNS]
    return TextTable([HEADERS.get(c, c) for c in table.columns], table.values.tolist(),
                     ["l" if c in text else "r" for c in table.columns],
                     notes=[*constant_note(frame, columns), *source_notes(frame),
                            *means_note(frame, include_running)],
                     problems=problem_notes(frame))


def paper_text(frame: pd.DataFrame, include_running: bool) -> TextTable:
    table: PaperTable = paper_table(frame, include_running)
    groups = [("", len(table.keys))] + [(p, len(ms)) for p, ms in table.panels]
    sub = [*table.keys, *(m for _, ms in table.panels for m in ms)]
    return TextTable(table.columns, table.text[table.columns].values.tolist(), ["l"] * len(table.columns),
                     notes=[paper_legend(table, include_running), *source_notes(frame),
                            *means_note(frame, include_running)],
                     problems=problem_notes(frame), groups=groups, sub_headers=sub)


def emit(table: TextTable, fmt: str, caption: str | None = None, width: int | None = None) -> str:
    headers, rows, notes = table.headers, table.rows, [*table.notes, *table.problems]
    if fmt == "markdown":
        text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
        return text + "\n" + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    if fmt == "latex":
        return latex(table, caption)
    if fmt == "html":
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        return pd.DataFrame(rows, columns=headers).to_html(index=False, escape=True) + \
            (f"\n<ul>{items}</ul>" if notes else "") + "\n"
    return _rich(table, width) + "".join(textwrap.fill(n, width or 100, subsequent_indent="  ") + "\n"
                                         for n in notes)


def _default_label(frame: pd.DataFrame, layout: str) -> str:
    grids = sorted(set(frame["grid"]))
    name = grids[0] if len(grids) == 1 else "bioscale"
    return "tab:" + re.sub(r"[^A-Za-z0-9:.-]+", "-", name) + ("-paper" if layout == "paper" else "")


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "≥": r"$\geq$"}


def tex(text: str) -> str:
    """Plain text as LaTeX source."""
    text = str(text)
    # "--include-running" stays two hyphens ("-{}-"), not an en dash; "–" itself becomes "--" on purpose
    return "".join("-{}" if ch == "-" and text[i + 1:i + 2] == "-" else TEX_SPECIAL.get(ch, ch)
                   for i, ch in enumerate(text))


def latex(table: TextTable, caption: str | None = None) -> str:
    """A ``table`` float a paper can ``\\input``: booktabs rules, the caption (by default what the cells mean
    and where the paper's numbers come from), the label; failed and diverged jobs as comments."""
    caption = caption if caption is not None else tex(" ".join(table.notes))
    lines = ["% bioscale report; needs \\usepackage{booktabs}", r"\begin{table}[htbp]", r"\centering",
             rf"\caption{{{caption}}}", rf"\label{{{table.label}}}",
             rf"\begin{{tabular}}{{{''.join(table.align)}}}", r"\toprule"]
    headers = table.headers
    if any(label for label, _ in table.groups):
        cells, rules, start = [], [], 1
        for label, span in table.groups:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{tex(label)}}}" if label and span > 1 else tex(label)
                         if span == 1 else " & ".join([""] * span))
            if label:
                rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
        headers = table.sub_headers
    lines += [" & ".join(tex(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(v) for v in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    lines += [f"% {n}" for n in table.problems]
    return "\n".join(lines) + "\n"


def source_notes(frame: pd.DataFrame) -> list[str]:
    """Where the reference numbers come from, what they were trained on, and when our dataset is not the
    paper's."""
    notes = []
    sources = frame[["paper_source", "paper_setup"]].dropna(subset=["paper_source"]).drop_duplicates()
    for source, setup in sorted(sources.itertuples(index=False, name=None)):
        notes.append(f"Paper numbers: {source}" + (f" ({setup})." if isinstance(setup, str) and setup else "."))
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
            seed = "?" if row.seed is None or pd.isna(row.seed) else row.seed
            notes.append(f"{row.status}: {row.job_id} ({row.rule} {row.schedule} {row.arch} {row.dataset} "
                         f"seed {seed}): {what}".replace("  ", " "))
    return notes


def _rich(table: TextTable, width: int | None) -> str:
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    for i, (h, a) in enumerate(zip(table.headers, table.align, strict=True)):
        widest = max((len(str(row[i])) for row in table.rows), default=0)
        if " " in h and widest < len(h):  # narrow values: two short header lines ("paper\ntest %")
            h = h.replace(" ", "\n", 1)
        # only these wrap (at their ", "), in a terminal too narrow for the table; nothing is cut off
        wraps = table.headers[i] in ("status", "setting", "grid")
        out.add_column(Text(h), justify="right" if a == "r" else "left", no_wrap=not wraps, overflow="fold")
    for row in table.rows:
        out.add_row(*(Text(str(v)) for v in row))  # Text: "[1 running]" is not markup
    buf = io.StringIO()
    Console(file=buf, width=width or 1000, force_terminal=False, color_system=None).print(out)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
