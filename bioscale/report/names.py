"""Names and order of rows, columns and panels, read from the registrations (``bioscale.catalog``): the
paper's method names ("DTP, parallel", "BP ConvNet"), its columns ("MNIST FC", where the conv net sits in
LC's column) and the papers' row order. Names that are not registered here (results of a plugin that is
not loaded) keep their raw name and sort last."""

from __future__ import annotations

import typing

from bioscale.catalog import ARCHS, DATASETS, RULES

LAST = 1e9


def method_of(rule: str, schedule: str, arch: str) -> str:
    """The paper's row name: "DTP, parallel", "FA", "BP ConvNet"."""
    name = RULES.get(rule).display if rule in RULES else rule
    suffix = ARCHS.get(arch).row_suffix if arch in ARCHS else ""
    if suffix:
        name = f"{name} {suffix}"
    return f"{name}, {schedule}" if schedule else name


def method_rank(rule: str, schedule: str, arch: str) -> tuple[float, int, int, str]:
    """Sort key of a row: the rule's paper order, its schedules in declared order (parallel first), and
    rows with an arch suffix (BP ConvNet) after the plain ones."""
    order = RULES.get(rule).order if rule in RULES else LAST
    suffix = ARCHS.get(arch).row_suffix if arch in ARCHS else ""
    return (order, _schedule_rank(rule, schedule), int(bool(suffix)), method_of(rule, schedule, arch))


def _schedule_rank(rule: str, schedule: str) -> int:
    if not schedule or rule not in RULES:
        return -1
    field = RULES.get(rule).params.model_fields.get("schedule")
    choices = typing.get_args(field.annotation) if field is not None else ()
    return choices.index(schedule) if schedule in choices else len(choices)


def column_of(arch: str) -> str:
    """The paper column an arch is reported under ("FC", "LC"; the conv net under "LC")."""
    return ARCHS.get(arch).paper_column if arch in ARCHS else arch


def column_rank(dataset: str, arch: str) -> tuple[float, str, float]:
    """Sort key of a dataset x column panel: datasets and columns in registration order."""
    d = DATASETS.get(dataset).order if dataset in DATASETS else LAST
    column = column_of(arch)
    a = min((r.order for r in ARCHS.values() if r.display == column), default=LAST)
    return (d, dataset, a)


def arch_rank(arch: str) -> tuple[float, str]:
    """Sort key of an arch within its column: registration order (LC, then the ConvNet in LC's column)."""
    return (ARCHS.get(arch).order if arch in ARCHS else LAST, arch)


def paper_dataset(dataset: str) -> str | None:
    """Whose published numbers a dataset is compared with (mnist-5k: MNIST's), or None."""
    return DATASETS.get(dataset).paper_dataset if dataset in DATASETS else None
