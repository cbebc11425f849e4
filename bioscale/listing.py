"""``bioscale list rules|archs|datasets``: every registration with its summary, parameters and what it runs
with, all read from the records and the one compatibility check (``bioscale.catalog.compat``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from bioscale.catalog import ARCHS, DATASETS, RULES, ArchRecord, DatasetRecord, RuleRecord, compat

KINDS = ("rules", "archs", "datasets")


def params_text(params: type[BaseModel]) -> str:
    return ", ".join(f"{k}={f.default!r}" for k, f in params.model_fields.items())


def rule_notes(r: RuleRecord) -> str:
    archs = compat.archs_for_rule(r)
    note = f"[{r.family}; archs: {', '.join(archs)}]"
    return f"{note} follows: {r.source}" if r.source else note


def arch_notes(a: ArchRecord) -> str:
    rules = compat.rules_for_arch(a)
    every = len(rules) == len(RULES.names())
    note = f"[{a.task}; rules: {'all' if every else ', '.join(rules)}; datasets: "
    return note + f"{', '.join(compat.datasets_for_arch(a)) or 'none'} with default params]"


def dataset_notes(d: DatasetRecord) -> str:
    shape = "x".join(map(str, d.input_shape))
    parts = [d.task, f"{shape}, {d.num_classes} classes"]
    if d.paper_dataset:
        parts.append(f"compared with the papers' {d.paper_dataset}")
    parts += list(d.tags)
    return f"[{'; '.join(parts)}]"


def rows(what: str) -> list[tuple[str, str, str]]:
    """(name, summary with its notes, parameters) per registration, in the papers' order."""
    if what not in KINDS:
        raise ValueError(f"unknown listing {what!r}; use one of {', '.join(KINDS)}")
    registry: Any = {"rules": RULES, "archs": ARCHS, "datasets": DATASETS}[what]
    notes: Any = {"rules": rule_notes, "archs": arch_notes, "datasets": dataset_notes}[what]
    return [(name, f"{rec.summary} {notes(rec)}", params_text(rec.params)) for name, rec in registry.items()]


def list_table(what: str) -> Table:
    """A rich table; every cell is escaped, so text in square brackets prints as written."""
    table = Table(header_style="bold")
    for col in ("name", "summary", "params"):
        table.add_column(col)
    for row in rows(what):
        table.add_row(*(escape(cell) for cell in row))
    return table
