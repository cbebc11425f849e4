"""Grid files -> validated, fully resolved jobs. Pure: no torch, deterministic order.

A job is resolved when every default is filled in (rule, arch and dataset parameters included), so its id,
a hash of the resolved spec, changes exactly when what the job computes changes.
"""

from __future__ import annotations

import copy
import difflib
import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bioscale.catalog import ARCHS, DATASETS, RULES, compat
from bioscale.errors import GridError
from bioscale.job import Job
from bioscale.registry import UnknownNameError
from bioscale.spec import GridSpec, JobSpec

COMPONENTS = ("dataset", "arch", "rule")


def load_grid(path: str | Path) -> GridSpec:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"Grid file {str(path)!r} does not exist. Give the path to a grid YAML file, "
                        "for example grids/smoke.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: is not valid YAML ({exc}). Fix the syntax and run again.") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid is a mapping with keys name, description, base, axes, exclude, "
                        "overrides, executor; this file holds something else.")
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise GridError(f"{path}: {_explain(exc, GridSpec)}") from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=2", "optim.betas=[0.9, 0.99]"]`` -> dotted-path dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--set {item!r}: expected PATH=VALUE, for example --set train.epochs=2.")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def expand(grid: GridSpec, sets: dict[str, Any] | None = None, source: str = "<grid>") -> list[Job]:
    """The cartesian product of the axes, minus excludes, with overrides and ``sets`` applied, validated."""
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
    return all(_get_path(raw, k) == v for k, v in where.items())


def _explain(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One readable sentence per problem: the key path, what is wrong, and what is allowed."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            parts.append(f"unknown key {path!r}.{hint} Allowed here: {', '.join(allowed) or 'nothing'}.")
        else:
            parts.append(f"{path}: {err['msg']} (got {err.get('input')!r}).")
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
