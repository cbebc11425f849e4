"""The keys of a grid's ``exclude``, ``where`` and ``set``, checked against the job schema and the named
components' parameters before any job is built: a misspelt key would silently match nothing."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bioscale.catalog import ARCHS, DATASETS, RULES
from bioscale.errors import GridError
from bioscale.explain import explain, model_of, short
from bioscale.spec import GridSpec, JobSpec, Resources

COMPONENTS = ("dataset", "arch", "rule")
"""The named parts of a job; ``rule: fa`` is shorthand for ``rule: {name: fa}``."""
# Backward rules have no forward/inverse schedule; they ignore `schedule` so that one axis
# `rule.params.schedule: [parallel, alternating]` can span every rule (design.md's Table 1 example), and
# the identical jobs this makes collapse into one.
IGNORED_BY_BACKWARD_RULES = ("schedule",)


_REGISTRIES = {"rule": RULES, "arch": ARCHS, "dataset": DATASETS}
_NO_VALUE = object()
_MATCH_TAIL = ("Keys in `exclude` and `where` are dotted paths into a job, like the axes' keys: one that no "
               "job has would silently match nothing.")


def check_match_keys(grid: GridSpec, sets: dict[str, Any], source: str) -> None:
    """A misspelt key or an impossible value in ``exclude``/``where`` would silently match nothing, and a
    misspelt key in an override's ``set`` would go unnoticed while its ``where`` matches no job: refuse both.

    Component parameters (``rule.params.schedule``) are checked against the parameters of the components the
    grid names anywhere (base, axes, overrides, --set): a key is allowed if one of them has it. Where one of
    those names is unknown (a misspelling, or a plugin that is not loaded) its parameters cannot be known, so
    that component's parameter keys are not checked here; the unknown name itself is reported when the jobs
    are validated."""
    components = _grid_components(grid, sets)
    for i, entry in enumerate(grid.exclude, 1):
        if not entry:
            raise GridError(f"{source}: exclude entry {i} is empty, so it would drop every job. Give the keys "
                            "a job must match to be dropped, e.g. {rule.name: bp, seed: 1}.")
        for key, value in entry.items():
            _raise_for(key, value, components, f"{source}: exclude entry {i}", _MATCH_TAIL)
    for i, override in enumerate(grid.overrides, 1):
        for key, value in override.where.items():
            _raise_for(key, value, components, f"{source}: overrides entry {i}, where", _MATCH_TAIL)
        for key in override.set:
            if is_resource_key(key):  # where the job runs (resources.gpus_per_job), checked against Resources
                problem = _walk(key, ["resources"], key.split(".")[1:], [Resources], _NO_VALUE)
                if problem:
                    raise GridError(f"{source}: overrides entry {i}, set: {problem}")
                continue
            _raise_for(key, _NO_VALUE, components, f"{source}: overrides entry {i}, set",
                       "Keys in `set` are dotted paths into a job, like the axes' keys.")


RESOURCES = "resources"
"""Keys under it in an override's ``set`` (or ``--set``) change what a job's scheduler task asks for, not the job."""


def is_resource_key(key: str) -> bool:
    return key == RESOURCES or key.startswith(RESOURCES + ".")


def job_resources(grid: GridSpec, sets: list[tuple[str, Any]], where: str) -> Resources | None:
    """The grid's ``resources:`` with one job's ``resources.*`` sets applied in order (a whole ``resources``
    mapping is merged), validated; raises ``GridError`` naming the key."""
    if not sets:
        return grid.resources
    raw: dict[str, Any] = grid.resources.model_dump(exclude_unset=True) if grid.resources else {}
    for key, value in sets:
        parts = key.split(".")[1:]
        if not parts:
            if not isinstance(value, dict):
                raise GridError(f"{where}: resources is a mapping of settings (partition, gpus_per_job, ...), not "
                                f"{short(value)}.")
            raw.update(value)
            continue
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    try:
        return Resources.model_validate(raw)
    except ValidationError as exc:
        raise GridError(f"{where}: {explain(exc, Resources, prefix='resources')}") from None


def grid_key_problem(grid: GridSpec, sets: dict[str, Any], key: str, value: Any) -> str | None:
    """Why ``key=value`` (a ``--where`` of a run, a key of a ``search:`` block) can match no job of ``grid``,
    or None: the checks of ``exclude``/``where`` entries."""
    return _path_problem(key, value, _grid_components(grid, sets))


def stored_key_problem(key: str, value: Any, names: Mapping[str, set[Any]]) -> str | None:
    """The same for jobs read from a results folder, whose rules, archs and datasets are ``names`` (kind ->
    names): ``bioscale report --where``, where there is no grid file."""
    return _path_problem(key, value, _records(names))


def _raise_for(key: str, value: Any, components: dict[str, list[Any] | None], where: str, tail: str) -> None:
    problem = _path_problem(key, value, components)
    if problem:
        raise GridError(f"{where}: {problem} {tail}")


def _grid_components(grid: GridSpec, sets: dict[str, Any]) -> dict[str, list[Any] | None]:
    """Per component kind, the records of every name the grid can give it; None if one is unknown."""
    names: dict[str, set[Any]] = {c: set() for c in COMPONENTS}

    def add(key: str, value: Any) -> None:
        parts = key.split(".")
        if parts[0] not in COMPONENTS or parts[1:] not in ([], ["name"]):
            return
        if not parts[1:] and isinstance(value, dict):
            value = value.get("name")
        names[parts[0]].add(value if isinstance(value, str) else repr(value))

    for key in COMPONENTS:
        if key in grid.base:
            add(key, grid.base[key])
    for block in grid.axes if isinstance(grid.axes, list) else [grid.axes]:
        for key, values in block.items():
            for value in values:
                add(key, value)
    for override in grid.overrides:
        for key, value in override.set.items():
            add(key, value)
    for key, value in sets.items():
        add(key, value)
    return _records(names)


def _records(names: Mapping[str, set[Any]]) -> dict[str, list[Any] | None]:
    out: dict[str, list[Any] | None] = {}
    for kind in COMPONENTS:
        found = names.get(kind, set())
        registry = _REGISTRIES[kind]
        known = bool(found) and all(name in registry for name in found)
        out[kind] = [registry.get(name) for name in sorted(found)] if known else None
    return out


def _path_problem(path: str, value: Any, components: dict[str, list[Any] | None]) -> str | None:
    """Why ``path`` is not a key of any job the grid can make (or ``value`` not one it can take), or None."""
    parts = path.split(".")
    if not all(parts):
        return f"{path!r} is not a dotted path of field names; write it like rule.params.schedule."
    top, rest = parts[0], parts[1:]
    if top not in COMPONENTS:
        return _walk(path, [], parts, [JobSpec], value)
    if not rest or rest == ["name"]:
        if not rest and not isinstance(value, str):
            return None  # a whole component mapping: compared as it is
        return _name_problem(top, path, value)
    if rest[0] != "params":
        return _unknown(path, [top], rest[0], ["name", "params"])
    records = components[top]
    if len(rest) == 1 or records is None:
        return None  # the whole params mapping, or the params of an unknown (plugin?) component: unknowable
    fields: dict[str, list[Any]] = {}
    for record in records:
        for name, info in record.params.model_fields.items():
            fields.setdefault(name, []).append(info.annotation)
    if top == "rule" and any(r.family == "backward" for r in records):
        for name in IGNORED_BY_BACKWARD_RULES:  # set on every rule by a shared axis, dropped for backward rules
            fields.setdefault(name, [Any])
    named = ", ".join(r.name for r in records)
    if rest[1] not in fields:
        return _unknown(path, [top, "params"], rest[1], list(fields), f" (the parameters of {top} {named})")
    return _walk(path, [top, "params", rest[1]], rest[2:], fields[rest[1]], value)


def _walk(path: str, done: list[str], parts: list[str], annotations: list[Any], value: Any) -> str | None:
    """Follow ``parts`` through the pydantic models of ``annotations``; then check ``value`` against them."""
    for i, part in enumerate(parts):
        if any(_is_open(a) for a in annotations):
            return None  # a free-form mapping (dict[str, Any]): any key may be in it
        fields: dict[str, list[Any]] = {}
        for annotation in annotations:
            model = model_of(annotation)
            for name, info in (model.model_fields.items() if model is not None else ()):
                fields.setdefault(name, []).append(info.annotation)
        here = [*done, *parts[:i]]
        if not fields:
            return (f"{path!r}: {'.'.join(here)!r} is a single value, not a mapping, so it has no key "
                    f"{part!r}.")
        if part not in fields:
            return _unknown(path, here, part, list(fields))
        annotations = fields[part]
    return _value_problem(path, value, annotations)


def _is_open(annotation: Any) -> bool:
    return annotation is Any or typing.get_origin(annotation) in (dict, Mapping)


def _unknown(path: str, parent: list[str], part: str, allowed: list[str], what: str = "") -> str:
    prefix = ".".join(parent) + "." if parent else ""
    close = difflib.get_close_matches(part, allowed, n=1)
    hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
    at = f"after {prefix!r}" if prefix else "at the top level"
    return f"unknown key {path!r}.{hint} Allowed {at}{what}: {', '.join(allowed)}."


def _name_problem(kind: str, path: str, value: Any) -> str | None:
    if value is _NO_VALUE:
        return None
    if not isinstance(value, str):
        return f"{path}: a {kind} name is a string, not {short(value)}."
    registry = _REGISTRIES[kind]
    if value in registry:
        return None
    return f"{path}: {registry.unknown_message(value)} A name from a plugin needs `--plugin PATH_OR_MODULE`."


def _value_problem(path: str, value: Any, annotations: list[Any]) -> str | None:
    """A value no job can have (``schedule: paralel``) would never match; None and unknown types pass."""
    if value is _NO_VALUE or value is None:
        return None
    first = None
    for annotation in annotations:
        try:
            TypeAdapter(annotation).validate_python(value)
            return None
        except ValidationError as exc:
            first = first or exc.errors()[0]["msg"]
        except Exception:  # an annotation pydantic cannot build an adapter for: cannot check, allow
            return None
    return f"{path}: {short(value)} is not a value this key can have ({first}), so it would never match."

