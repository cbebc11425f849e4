"""``--where KEY=VALUE`` and ``--only SEL``: the subset of a grid's jobs that ``run``, ``report``, ``status``,
``compare`` and ``grid expand`` work on.

``--where`` entries all hold (AND); a key is a dotted path into a job, like a grid's axes and ``exclude``
keys, checked the same way (``bioscale.gridkeys``): a misspelt key would silently select nothing, so it is
refused with the allowed keys. ``--only`` entries are alternatives (OR): a job id, a unique prefix of one (4
hex digits or more), or a piece of a job's label ("dtp/alt lc"). A selection that selects nothing is an
error (exit 2), never a silent success.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bioscale.errors import BioscaleError
from bioscale.grid import COMPONENTS, get_path
from bioscale.gridfile import parse_set
from bioscale.job import Job, job_label

if TYPE_CHECKING:
    from bioscale.spec import GridSpec, JobSpec
    from bioscale.store import Store

ID_PREFIX = re.compile(r"[0-9a-f]{4,}")
"""An ``--only`` that looks like this is tried as a job id prefix first (ids are 12 hex digits)."""
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
LABEL_KEYS = {"rule.name", "rule.params.schedule", "arch.name", "dataset.name", "seed"}
"""What ``job_label`` always shows; other keys that vary between a grid's jobs are appended to the label."""


class NothingSelected(BioscaleError):
    """The selection matched no job."""


@dataclass(frozen=True)
class Candidate:
    """A job a selection may pick: from a grid file (a ``Job``) or from a results folder."""

    grid: str
    job_id: str
    data: dict[str, Any] | None
    """The job's spec as JSON data; None when its spec.json cannot be read (then only its id selects it)."""
    label: str


@dataclass(frozen=True)
class Selection:
    where: dict[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.where or self.only)

    def describe(self) -> str:
        parts = [f"--where {k}={_text(v)}" for k, v in self.where.items()]
        return " ".join(parts + [f"--only {s!r}" for s in self.only])


def parse_selection(where: Sequence[str] | None = None, only: Sequence[str] | None = None) -> Selection:
    """``["rule.name=fa", "seed=0"]`` (values parsed as YAML, like ``--set``) and ``["dtp/alt lc"]``."""
    try:
        parsed = parse_set(list(where or []))
    except BioscaleError as exc:
        raise BioscaleError(str(exc).replace("--set", "--where")) from None
    picks = tuple(s.strip() for s in (only or []))
    if any(not s for s in picks):
        raise BioscaleError("--only needs a job id, an id prefix or a piece of a job's label, e.g. --only "
                            "'dtp/alt lc' (`bioscale grid expand GRID` lists them).")
    return Selection(parsed, picks)


def job_candidates(jobs: Iterable[Job]) -> list[Candidate]:
    return [Candidate(j.grid, j.job_id, j.spec.model_dump(mode="json"), j.label) for j in jobs]


def store_candidates(store: Store, grid: str | None = None) -> list[Candidate]:
    """Every job recorded in ``store``, labelled as a grid file would label it:
    the keys that vary between a grid's jobs stand in for its axes."""
    found = [(gname, jdir.job_id, jdir.read_spec()) for gname, jdir in store.jobs(grid)]
    flats = {(g, i): setting_flat(s) for g, i, s in found if s is not None}
    def cell(g: str, flat: dict[str, Any]) -> tuple[Any, ...]:  # what the label always shows, seed aside
        return (g, *(flat.get(k) for k in sorted(LABEL_KEYS - {"seed"})))

    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for (g, _), flat in flats.items():
        cells.setdefault(cell(g, flat), []).append(flat)
    # per cell, as the report's settings: a key that differs only between rules (their defaults) is no axis
    varying = {c: sorted(k for k in {k for f in items for k in f} - LABEL_KEYS
                         if len({repr(f.get(k)) for f in items}) > 1) for c, items in cells.items()}
    out = []
    for g, job_id, spec in found:
        if spec is None:
            out.append(Candidate(g, job_id, None, "?"))
            continue
        flat = flats[(g, job_id)]
        axes = {k: flat[k] for k in varying[cell(g, flat)] if k in flat}
        out.append(Candidate(g, job_id, spec.model_dump(mode="json"), job_label(spec, axes)))
    return out


def check_keys(selection: Selection, candidates: Sequence[Candidate], grid: GridSpec | None = None,
               sets: dict[str, Any] | None = None) -> None:
    """Refuse a ``--where`` key no job can have (with the allowed keys and a did-you-mean), or a value it can
    never take. With ``grid`` the grid's components are the reference, else the jobs'."""
    from bioscale.gridkeys import grid_key_problem, stored_key_problem

    names: dict[str, set[Any]] = {kind: set() for kind in COMPONENTS}
    for c in candidates:
        for kind in COMPONENTS:
            part = (c.data or {}).get(kind)
            if isinstance(part, dict) and isinstance(part.get("name"), str):
                names[kind].add(part["name"])
    for key, value in selection.where.items():
        problem = (grid_key_problem(grid, sets or {}, key, value) if grid is not None
                   else stored_key_problem(key, value, names))
        if problem:
            raise BioscaleError(f"--where {key}={_text(value)}: {problem} Keys are dotted paths into a job, like "
                                "a grid's axes: rule.name=fa, rule.params.schedule=alternating, arch.name=lc, "
                                "seed=0, optim.lr=1e-4.")


def select(candidates: Sequence[Candidate], selection: Selection, what: str = "jobs") -> list[Candidate]:
    """The candidates the selection picks, in their order; all of them for an empty selection. Raises
    ``NothingSelected`` (one paragraph: what each part matched) when it picks none, and ``BioscaleError`` for
    an ``--only`` that matches nothing or an ambiguous id prefix."""
    if not selection:
        return list(candidates)
    kept = [c for c in candidates if _where_holds(c, selection.where)]
    if selection.only:
        picked: set[str] = set()
        for sel in selection.only:
            found = _only(sel, candidates)
            if not found:
                raise NothingSelected(f"--only {sel!r} matches no job id and no job label of the {len(candidates)} "
                                      f"{what}.{_close_labels(sel, candidates)} `bioscale grid expand GRID` or "
                                      "`bioscale status` lists ids and labels.")
            picked.update(c.job_id for c in found)
        kept = [c for c in kept if c.job_id in picked]
    if not kept:
        raise NothingSelected(f"{selection.describe()} selects none of the {len(candidates)} {what}."
                              f"{_where_hints(selection.where, candidates)} Nothing was done.")
    return kept


def select_jobs(jobs: Sequence[Job], selection: Selection, grid: GridSpec | None = None,
                sets: dict[str, Any] | None = None) -> list[Job]:
    """``select`` for a grid's jobs (checked against ``grid``'s keys first)."""
    if not selection:
        return list(jobs)
    candidates = job_candidates(jobs)
    check_keys(selection, candidates, grid, sets)
    ids = {c.job_id for c in select(candidates, selection, f"jobs of grid {grid.name}" if grid else "jobs")}
    return [j for j in jobs if j.job_id in ids]


def _where_holds(c: Candidate, where: dict[str, Any]) -> bool:
    if not where:
        return True
    if c.data is None:
        return False
    return all(_equal(_value_at(c.data, key, value), value) for key, value in where.items())


def _value_at(data: dict[str, Any], key: str, value: Any) -> Any:
    """``rule=fa`` is shorthand for ``rule.name=fa``, as in a grid's ``exclude``."""
    return get_path(data, f"{key}.name" if key in COMPONENTS and isinstance(value, str) else key)


def _equal(have: Any, want: Any) -> bool:
    """Equal as a grid would mean it: ``optim.lr=1e-4`` (YAML reads 1e-4 as text) matches 0.0001; true is
    not 1."""
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    if isinstance(want, str) and _NUMBER.fullmatch(want) and _is_number(have):
        want = float(want)
    if _is_number(have) and _is_number(want):
        return math.isclose(float(have), float(want), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
        return len(have) == len(want) and all(_equal(a, b) for a, b in zip(have, want, strict=True))
    return bool(have == want)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _only(sel: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    low = sel.lower()
    if ID_PREFIX.fullmatch(low):
        by_id = [c for c in candidates if c.job_id.startswith(low)]
        if len({c.job_id for c in by_id}) > 1 and not any(c.job_id == low for c in by_id):
            ids = ", ".join(sorted({c.job_id for c in by_id})[:6])
            raise BioscaleError(f"--only {sel!r} is the start of {len({c.job_id for c in by_id})} job ids ({ids}"
                                f"{', ...' if len(by_id) > 6 else ''}): give more of the id.")
        if by_id:
            return [c for c in by_id if c.job_id == low] or by_id
    return [c for c in candidates if low in c.label.lower()]


def _close_labels(sel: str, candidates: Sequence[Candidate]) -> str:
    labels = sorted({c.label for c in candidates})
    close = difflib.get_close_matches(sel, labels, n=3, cutoff=0.4)
    if close:
        return " Close labels: " + "; ".join(repr(x) for x in close) + "."
    return (" Labels look like " + "; ".join(repr(x) for x in labels[:3]) + ".") if labels else ""


def _where_hints(where: dict[str, Any], candidates: Sequence[Candidate]) -> str:
    """The values each ``--where`` key has among the jobs: what the user could have asked for."""
    hints = []
    for key, value in where.items():
        values = sorted({_text(_value_at(c.data, key, value)) for c in candidates if c.data is not None})
        shown = ", ".join(values[:10]) + (", ..." if len(values) > 10 else "")
        hints.append(f"{key} is {shown} there" if values else f"no job has {key}")
    return (" " + "; ".join(hints) + ".") if hints else ""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_flat(spec: JobSpec) -> dict[str, Any]:
    """A job's spec as dotted keys without its run-time fields (``spec.RUNTIME_FIELDS``: device, loader workers,
    optimiser implementation, checkpoint and diagnostics cadence): what it computes, which is what a label, a
    report's ``setting`` and a search's varied keys are made of."""
    from bioscale.spec import RUNTIME_FIELDS

    return flatten(spec.model_dump(mode="json", exclude=RUNTIME_FIELDS))  # type: ignore[arg-type]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A job's spec data as ``{"rule.params.schedule": ..., "optim.lr": ...}``; lists become tuples (hashable)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = tuple(value) if isinstance(value, list) else value
    return out
