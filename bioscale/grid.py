"""Grid files -> validated, fully resolved jobs. Pure: no torch, deterministic order.

A job is resolved when every default is filled in (rule, arch and dataset parameters included), so its id,
a hash of the resolved spec, changes exactly when what the job computes changes.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from bioscale.catalog import ARCHS, DATASETS, RULES, compat
from bioscale.errors import GridError
from bioscale.explain import explain
from bioscale.gridfile import load_grid, load_yaml, parse_set
from bioscale.gridkeys import COMPONENTS, IGNORED_BY_BACKWARD_RULES, check_match_keys, is_resource_key, job_resources
from bioscale.job import Job, job_label
from bioscale.registry import UnknownNameError
from bioscale.search import check_search, configurations
from bioscale.spec import GridSpec, JobSpec

__all__ = ["COMPONENTS", "DEFAULT_MAX_JOBS", "combination_count", "expand", "load_grid", "load_yaml", "parse_set",
           "resolve"]

DEFAULT_MAX_JOBS = 10_000
"""Combinations a grid may expand to unless the user raises it (``--max-jobs``, ``max_jobs=``): an axis typed
as ``range(10**6)`` by mistake should be an error in a second, not a hang while a million jobs validate."""


def combination_count(axes: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> int:
    """How many combinations ``expand`` would build (before excludes), computed without building them."""
    blocks = axes if isinstance(axes, list) else [axes]
    return sum(math.prod(len(values) for values in block.values()) for block in blocks)


def _check_size(grid: GridSpec, max_jobs: int | None, source: str) -> None:
    limit = DEFAULT_MAX_JOBS if max_jobs is None else max_jobs
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise GridError(f"max_jobs (--max-jobs) is a positive integer, not {limit!r}.")
    configs = grid.search.n if grid.search is not None else 1
    count = combination_count(grid.axes) * configs
    if count <= limit:
        return
    blocks = grid.axes if isinstance(grid.axes, list) else [grid.axes]
    sizes = " + ".join(" x ".join(f"{k} ({len(v):,})" for k, v in block.items()) or "1" for block in blocks)
    if configs > 1:
        sizes = f"({sizes}) x {configs:,} search configurations"
    raise GridError(f"{source}: the axes make {count:,} combinations ({sizes}), more than the limit of "
                    f"{limit:,} jobs. Shorten the axes or split the grid; if you do mean to run that many, raise "
                    f"the limit with --max-jobs {count} (Python: max_jobs={count}).")


def expand(grid: GridSpec, sets: dict[str, Any] | None = None, source: str = "<grid>",
           max_jobs: int | None = None) -> list[Job]:
    """The cartesian product of the axes, minus excludes, with overrides and ``sets`` applied, validated.
    More than ``max_jobs`` combinations (default ``DEFAULT_MAX_JOBS``) is an error, found before any is built."""
    _check_size(grid, max_jobs, source)
    check_match_keys(grid, sets or {}, source)
    check_search(grid, sets or {}, source)
    base = _normalise(copy.deepcopy(grid.base))
    jobs: list[Job] = []
    seen: set[str] = set()
    for combo in _combinations(grid.axes):
        cell = copy.deepcopy(base)
        for key, value in combo.items():
            _set_path(cell, key, value, source)
        if any(matches(cell, entry) for entry in grid.exclude):
            continue
        drawn = configurations(grid.search, lambda where, c=cell: matches(c, where)) if grid.search else [None]
        for index, values in enumerate(drawn):
            raw = copy.deepcopy(cell)
            for key, value in (values or {}).items():
                _set_path(raw, key, value, source)
            axes = combo if values is None else {**combo, "cfg": index}
            job = _job(grid, raw, axes, sets, source)
            if job.job_id in seen:  # an axis (or a draw) that does not change the resolved job
                continue
            seen.add(job.job_id)
            jobs.append(job)
    if grid.promote is not None:
        from bioscale.promote import check_jobs

        check_jobs(grid, jobs, source)
    return jobs


def _job(grid: GridSpec, raw: dict[str, Any], combo: dict[str, Any], sets: dict[str, Any] | None, source: str) -> Job:
    """One job: the overrides and ``sets`` applied to ``raw`` (a combination of the axes, with its draws)."""
    resources: list[tuple[str, Any]] = []  # `resources.*` keys: where the job runs, not part of its spec
    for override in grid.overrides:
        if matches(raw, override.where):
            for key, value in override.set.items():
                if is_resource_key(key):
                    resources.append((key, value))
                    continue
                _set_path(raw, key, copy.deepcopy(value), source)
    for key, value in (sets or {}).items():
        if is_resource_key(key):
            resources.append((key, value))
            continue
        _set_path(raw, key, copy.deepcopy(value), source)
    label = ", ".join(f"{k}={v}" for k, v in combo.items()) or "the base job"
    spec = resolve(raw, f"{source} ({label})")
    return Job(grid.name, spec, job_label(spec, combo), job_resources(grid, resources, f"{source} ({label})"),
               logging=tuple(grid.logging))


def _combinations(axes: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    blocks = axes if isinstance(axes, list) else [axes]
    out = []
    for block in blocks:
        keys = list(block)
        out += [dict(zip(keys, values, strict=True)) for values in itertools.product(*(block[k] for k in keys))]
    return out


def resolve(raw: dict[str, Any], where: str = "<job>") -> JobSpec:
    """Validate one job and fill in every default, including the rule/arch/dataset parameters."""
    try:
        spec = JobSpec.model_validate(_normalise(raw))
    except ValidationError as exc:
        raise GridError(f"{where}: {explain(exc, JobSpec)}") from None
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
                            f"{explain(exc, record.params, prefix=f'{key}.params')}"
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


def get_path(raw: dict[str, Any], path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if isinstance(node, str) and part == "name":
            return node
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def matches(raw: dict[str, Any], where: dict[str, Any]) -> bool:
    """Every key of ``where`` has its value in ``raw``; ``rule: fa`` is shorthand for ``rule.name: fa``."""
    return all(get_path(raw, f"{k}.name" if k in COMPONENTS and isinstance(v, str) else k) == v
               for k, v in where.items())


