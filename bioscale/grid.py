"""Grid files -> validated, fully resolved jobs. Pure: no torch, deterministic order.

A job is resolved when every default is filled in (rule, arch and dataset parameters included), so its id,
a hash of the resolved spec, changes exactly when what the job computes changes.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from bioscale.catalog import ARCHS, DATASETS, RULES, compat
from bioscale.errors import GridError
from bioscale.job import Job
from bioscale.registry import UnknownNameError
from bioscale.spec import GridSpec, JobSpec

COMPONENTS = ("dataset", "arch", "rule")


MAX_GRID_BYTES = 1 << 20
"""A grid file is a few kB; a bigger one is a mistake (a data file given as the grid) and slow to parse."""
MAX_DEPTH = 50
"""Nesting levels a grid (or a --set value) may have; real grids use five or six."""
MAX_VALUES = 200_000
"""Values a grid may hold, YAML aliases counted each time they are used (a "billion laughs" file)."""
DEFAULT_MAX_JOBS = 10_000
"""Combinations a grid may expand to unless the user raises it (``--max-jobs``, ``max_jobs=``): an axis typed
as ``range(10**6)`` by mistake should be an error in a second, not a hang while a million jobs validate."""


def load_grid(path: str | Path) -> GridSpec:
    path = Path(path)
    if path.is_dir():
        raise GridError(f"{path}: is a folder, not a grid file. Give the path to a grid YAML file, for example "
                        "grids/smoke.yaml.")
    if not path.is_file():
        raise GridError(f"Grid file {str(path)!r} does not exist. Give the path to a grid YAML file, "
                        "for example grids/smoke.yaml.")
    try:
        size = path.stat().st_size
        if size > MAX_GRID_BYTES:
            raise GridError(f"{path}: is {size:,} bytes; a grid file is a few kB of YAML (at most "
                            f"{MAX_GRID_BYTES:,} bytes). Is it the right file?")
        data = path.read_bytes()
    except OSError as exc:
        raise GridError(f"{path}: cannot be read ({exc.strerror or exc}). Check the file and its "
                        "permissions.") from None
    raw = load_yaml(_decode(data, str(path)), f"{path}:", "Fix the file and run again.")
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid is a mapping with keys name, description, base, axes, exclude, "
                        "overrides, executor; this file holds something else.")
    try:
        grid = GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise GridError(f"{path}: {_explain(exc, GridSpec)}") from None
    if grid.executor is not None:
        from bioscale.executors import executor_problem  # torch-free

        problem = executor_problem(grid.executor)
        if problem:
            raise GridError(f"{path}: executor: {problem}")
    return grid


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (a BOM is allowed), or one sentence saying where it is not."""
    if b"\x00" in data[:8192]:
        raise GridError(f"{source}: is a binary file, not a grid. A grid is a YAML text file (UTF-8); give the "
                        "path to one, for example grids/smoke.yaml.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise GridError(f"{source}: is not UTF-8 text (byte {exc.start}, line {line}: "
                        f"{data[exc.start:exc.start + 4]!r}). A grid is a YAML file in UTF-8; save it as UTF-8 "
                        "(most editors: 'Save with encoding'), or check that it is the right file.") from None
    if "\x00" in text:
        raise GridError(f"{source}: holds NUL characters, so it is a binary file, not a YAML grid.")
    return text


def load_yaml(text: str, where: str, fix: str) -> Any:
    """``yaml.safe_load`` with every failure (syntax, a value YAML cannot build such as the date 2020-13-45,
    nesting too deep for the parser, alias bombs) as one ``GridError``: ``where`` (e.g. "grid.yaml:"), what
    is wrong, and ``fix``."""
    try:
        value = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = ", ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise GridError(f"{where} is not valid YAML: {what}{at}. {fix}") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{where} is not valid YAML ({' '.join(str(exc).split())}). {fix}") from None
    except RecursionError:
        raise GridError(f"{where} is nested too deeply to read (a grid needs about six levels; at most "
                        f"{MAX_DEPTH} are allowed). {fix}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise GridError(f"{where} holds a value YAML cannot build ({exc}); quote it if it is text "
                        f"(e.g. '2020-13-45'). {fix}") from None
    _check_structure(value, where, fix)
    return value


def _check_structure(value: Any, where: str, fix: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` (also catches self-referencing aliases) and more than
    ``MAX_VALUES`` values; iterative, so a deep document cannot exhaust the stack here."""
    stack, seen = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise GridError(f"{where} is nested more than {MAX_DEPTH} levels deep (or an alias refers to "
                            f"itself); a grid needs about six. {fix}")
        if seen > MAX_VALUES:
            raise GridError(f"{where} holds more than {MAX_VALUES:,} values (YAML aliases counted each time they "
                            f"are used); a grid holds a few hundred. {fix}")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=2", "optim.betas=[0.9, 0.99]"]`` -> dotted-path dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise GridError(f"--set {item!r}: expected a string PATH=VALUE, for example 'train.epochs=2'.")
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GridError(f"--set {item!r}: expected PATH=VALUE, for example --set train.epochs=2.")
        if not all(part.strip() for part in key.split(".")):
            raise GridError(f"--set {item!r}: {key!r} is not a dotted path of field names; write it like "
                            "train.epochs or rule.params.schedule.")
        fix = ("The value is parsed as YAML: quote text holding ':', '#', brackets or quotes, e.g. "
               "--set 'dataset.params.root=\"/data/a: b\"', and write lists like optim.betas=[0.9,0.99].")
        out[key] = load_yaml(value, f"--set {_short(item)}: the value", fix) if value.strip() else None
    return out


def combination_count(axes: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> int:
    """How many combinations ``expand`` would build (before excludes), computed without building them."""
    blocks = axes if isinstance(axes, list) else [axes]
    return sum(math.prod(len(values) for values in block.values()) for block in blocks)


def _check_size(grid: GridSpec, max_jobs: int | None, source: str) -> None:
    limit = DEFAULT_MAX_JOBS if max_jobs is None else max_jobs
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise GridError(f"max_jobs (--max-jobs) is a positive integer, not {limit!r}.")
    count = combination_count(grid.axes)
    if count <= limit:
        return
    blocks = grid.axes if isinstance(grid.axes, list) else [grid.axes]
    sizes = " + ".join(" x ".join(f"{k} ({len(v):,})" for k, v in block.items()) or "1" for block in blocks)
    raise GridError(f"{source}: the axes make {count:,} combinations ({sizes}), more than the limit of "
                    f"{limit:,} jobs. Shorten the axes or split the grid; if you do mean to run that many, raise "
                    f"the limit with --max-jobs {count} (Python: max_jobs={count}).")


def expand(grid: GridSpec, sets: dict[str, Any] | None = None, source: str = "<grid>",
           max_jobs: int | None = None) -> list[Job]:
    """The cartesian product of the axes, minus excludes, with overrides and ``sets`` applied, validated.
    More than ``max_jobs`` combinations (default ``DEFAULT_MAX_JOBS``) is an error, found before any is built."""
    _check_size(grid, max_jobs, source)
    _check_match_keys(grid, sets or {}, source)
    base = _normalise(copy.deepcopy(grid.base))
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for combo in _combinations(grid.axes):
        raw = copy.deepcopy(base)
        for key, value in combo.items():
            _set_path(raw, key, value, source)
        if any(_matches(raw, entry) for entry in grid.exclude):
            continue
        for override in grid.overrides:
            if _matches(raw, override.where):
                for key, value in override.set.items():
                    _set_path(raw, key, copy.deepcopy(value), source)
        for key, value in (sets or {}).items():
            _set_path(raw, key, copy.deepcopy(value), source)
        label = ", ".join(f"{k}={v}" for k, v in combo.items()) or "the base job"
        spec = resolve(raw, f"{source} ({label})")
        job = Job(grid.name, spec, label)
        if job.job_id in seen:  # an axis that does not change the resolved job (e.g. a default value)
            continue
        seen[job.job_id] = label
        jobs.append(job)
    return jobs


def _combinations(axes: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    blocks = axes if isinstance(axes, list) else [axes]
    out = []
    for block in blocks:
        keys = list(block)
        out += [dict(zip(keys, values, strict=True)) for values in itertools.product(*(block[k] for k in keys))]
    return out


# Backward rules have no forward/inverse schedule; they ignore `schedule` so that one axis
# `rule.params.schedule: [parallel, alternating]` can span every rule (design.md's Table 1 example), and
# the identical jobs this makes collapse into one.
IGNORED_BY_BACKWARD_RULES = ("schedule",)


def resolve(raw: dict[str, Any], where: str = "<job>") -> JobSpec:
    """Validate one job and fill in every default, including the rule/arch/dataset parameters."""
    try:
        spec = JobSpec.model_validate(_normalise(raw))
    except ValidationError as exc:
        raise GridError(f"{where}: {_explain(exc, JobSpec)}") from None
    try:
        rule = RULES.get(spec.rule.name)
        arch = ARCHS.get(spec.arch.name)
        data = DATASETS.get(spec.dataset.name)
    except UnknownNameError as exc:
        raise GridError(f"{where}: {exc} Run `bioscale list rules|archs|datasets` to see them all; a name "
                        "from a plugin needs `--plugin PATH_OR_MODULE`.") from None
    updates: dict[str, Any] = {}
    if rule.family == "backward":
        params = {k: v for k, v in spec.rule.params.items() if k not in IGNORED_BY_BACKWARD_RULES}
        spec = spec.model_copy(update={"rule": spec.rule.model_copy(update={"params": params})})
    validated: dict[str, BaseModel] = {}
    for key, record in (("rule", rule), ("arch", arch), ("dataset", data)):
        component = getattr(spec, key)
        try:
            validated[key] = record.params.model_validate(component.params)
        except ValidationError as exc:
            raise GridError(f"{where}: {key} {component.name!r}: "
                            f"{_explain(exc, record.params, prefix=f'{key}.params')}"
                            f"{_owners_hint(exc, key)}") from None
        updates[key] = component.model_copy(update={"params": validated[key].model_dump(mode="json")})
    problems = compat.problems(rule, arch, data, validated["arch"])
    if problems:
        raise GridError(f"{where}: {'; '.join(problems)}. What would work: {compat.alternatives(rule, arch, data)}. "
                        "Change the grid, or drop this combination with an `exclude:` entry.")
    if rule.family == "target":
        updates["inverse_optim"] = spec.inverse_optim or spec.optim.model_copy()
    else:
        updates["inverse_optim"] = None  # only target rules have inverses; keep it out of the job id
    return spec.model_copy(update=updates)


def _owners_hint(exc: ValidationError, key: str) -> str:
    """For a parameter this component lacks but others have (``schedule`` on ``fa``), say which have it."""
    registry = {"rule": RULES, "arch": ARCHS, "dataset": DATASETS}[key]
    hints = []
    for err in exc.errors():
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][-1])
            owners = [n for n, info in registry.items() if name in info.params.model_fields]
            if owners:
                hints.append(f" {name!r} is a parameter of {key}s {', '.join(owners)} only: restrict that "
                             f"axis to them, or drop the other {key}s with an `exclude:` entry.")
    return "".join(hints)


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Expand ``rule: fa`` shorthand to ``rule: {name: fa}`` so dotted paths reach into it."""
    for key in (*COMPONENTS, "executor"):
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
    return raw


def _set_path(raw: dict[str, Any], path: str, value: Any, source: str) -> None:
    _normalise(raw)
    parts = path.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part in COMPONENTS:
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise GridError(f"{source}: cannot set {path!r}: {'.'.join(parts[: i + 1])!r} is "
                            f"{child!r}, not a mapping.")
        node = child
    node[parts[-1]] = value


def _get_path(raw: dict[str, Any], path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if isinstance(node, str) and part == "name":
            return node
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _matches(raw: dict[str, Any], where: dict[str, Any]) -> bool:
    """Every key of ``where`` has its value in ``raw``; ``rule: fa`` is shorthand for ``rule.name: fa``."""
    return all(_get_path(raw, f"{k}.name" if k in COMPONENTS and isinstance(v, str) else k) == v
               for k, v in where.items())


# ---- keys of `exclude`, `where` and `set`: checked against the schema before any job is built ------------

_REGISTRIES = {"rule": RULES, "arch": ARCHS, "dataset": DATASETS}
_NO_VALUE = object()
_MATCH_TAIL = ("Keys in `exclude` and `where` are dotted paths into a job, like the axes' keys: one that no "
               "job has would silently match nothing.")


def _check_match_keys(grid: GridSpec, sets: dict[str, Any], source: str) -> None:
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
            _raise_for(key, _NO_VALUE, components, f"{source}: overrides entry {i}, set",
                       "Keys in `set` are dotted paths into a job, like the axes' keys.")


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
    out: dict[str, list[Any] | None] = {}
    for kind, found in names.items():
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
            model = _model_of(annotation)
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
        return f"{path}: a {kind} name is a string, not {_short(value)}."
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
    return f"{path}: {_short(value)} is not a value this key can have ({first}), so it would never match."


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(exc: ValidationError, model: type[BaseModel], prefix: str = "", most: int = 8) -> str:
    """One readable sentence per problem (the first ``most``): the key path, what is wrong, what is allowed."""
    parts = []
    errors = exc.errors()
    if len(errors) > most:
        parts.append(f"{len(errors)} problems; the first {most}:")
    for err in errors[:most]:
        loc = [str(p) for p in err["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            parts.append(f"unknown key {path!r}.{hint} Allowed here: {', '.join(allowed) or 'nothing'}.")
        else:
            parts.append(f"{path}: {err['msg']} (got {_short(err.get('input'))}).")
    return " ".join(parts)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the (nested) model at ``loc``, for 'allowed keys' messages."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_of(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
