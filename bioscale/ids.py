"""Job ids that survive upgrades.

A job id is a hash of the resolved job (every default filled in), so it changes exactly when what the job
computes changes. Hashing every field as it is today would also change it whenever a release *adds* a
parameter, even one whose default reproduces the old behaviour, and a re-run after an upgrade would train
every finished job again. So:

- The fields that existed when ids were first defined are frozen in ``id_fields_v1.json`` (per scope: ``job``
  for ``JobSpec`` and its parts, ``rule:fa``, ``arch:fc``, ``dataset:mnist``, ...). They are always hashed,
  exactly as before: changing the default of one changes the ids of the jobs that get the new value, so old
  and new results never share an id.
- A field added later declares its *baseline* with ``added(...)``: the value that reproduces what the code did
  before the field existed. A job whose value equals the baseline hashes as if the field did not exist, so
  it keeps its old id; any other value (set by a grid, or a later default that differs from the baseline) is
  hashed and gives a new id.
- A field that is neither frozen nor declares a baseline is always hashed (safe; the tests refuse it for the
  built-ins). Components missing from the file (plugins) follow the same rules with nothing frozen.

A result written before a field existed lacks it in its ``spec.json``; ``fill_baselines`` puts back the
value it was computed under (the baseline, not today's default), so the report shows old and new results
with the values that made them. The file is append-only: ``python -m bioscale.ids freeze`` adds new
built-in components and records each added field's baseline, and refuses to change what is there.

Torch-free; imports the catalog and the spec lazily (``spec.py`` imports ``added`` from here).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, Field, TypeAdapter
from pydantic_core import PydanticUndefined, to_jsonable_python

if TYPE_CHECKING:
    from bioscale.spec import JobSpec

ID_FIELDS_FILE = "id_fields_v1.json"
ADDED_IN = "added_in"
ID_BASELINE = "id_baseline"
JOB_SCOPE = "job"
COMPONENTS = ("dataset", "arch", "rule")  # the order of today's payload does not matter: keys are sorted

ABOUT = ("Job-id schema, frozen (bioscale.ids). fields: per scope, the field paths that existed when ids were "
         "frozen; always hashed. baselines: per scope, each field added later and the value that reproduces the "
         "behaviour from before it existed; a job at that value keeps its old id. Append-only: never edit or "
         "remove an entry; `python -m bioscale.ids freeze` appends.")
_NOT_GIVEN: Any = object()
S = TypeVar("S", dict, BaseModel)


def added(default: Any = PydanticUndefined, *, since: str | None = None, baseline: Any = _NOT_GIVEN,
          **field_kwargs: Any) -> Any:
    """A pydantic ``Field`` for a parameter introduced after results exist.

    ``baseline`` is the value that reproduces the behaviour from before the field existed; it defaults to
    ``default`` (the usual case: a new knob whose default changes nothing). Give it explicitly when the
    default does something new (``added(True, baseline=False)``) and when a later release changes the
    default (``added(1.0, baseline=0.0)``): never change a baseline once released, or results computed
    without the field would share ids with jobs computed differently. ``since`` is documentation (the
    release that added it); other keyword arguments go to ``Field`` (``ge=0``, ``description=...``).
    """
    factory = field_kwargs.get("default_factory")
    if default is PydanticUndefined and factory is None:
        raise TypeError("an added field needs a default: grids and results written before it existed lack it")
    if baseline is _NOT_GIVEN:
        baseline = factory() if default is PydanticUndefined else default
    extra = dict(field_kwargs.pop("json_schema_extra", None) or {})
    extra.update({ADDED_IN: since, ID_BASELINE: to_jsonable_python(baseline)})
    return Field(default, json_schema_extra=extra, **field_kwargs)


# ---- the hash ----------------------------------------------------------------------------------------------


def job_id(spec: JobSpec) -> str:
    """``JobSpec.job_id``: 12 hex digits of the sha256 of ``id_payload(spec)`` as canonical JSON."""
    text = json.dumps(id_payload(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def id_payload(spec: JobSpec) -> dict[str, Any]:
    """What the id hashes: the spec minus runtime fields and minus added fields at their baseline.

    With no added field this is exactly the spec's JSON dump, which keeps every id from before this module.
    """
    from bioscale.spec import ID_PINNED, RUNTIME_FIELDS

    data = spec.model_dump(mode="json", exclude=RUNTIME_FIELDS)  # type: ignore[arg-type]
    for key, pinned in ID_PINNED.items():  # run-time now, hashed when frozen: hash the value of then
        data.setdefault(key, {}).update(pinned)
    _prune(data, type(spec), frozen_paths(JOB_SCOPE), "")
    for key, model, scope in _components(data):
        _prune(data[key]["params"], model, frozen_paths(scope), "")
    return data


def _prune(data: dict[str, Any], model: type[BaseModel], frozen: frozenset[str] | None, prefix: str) -> None:
    """Drop, in place, the non-frozen fields whose value is their declared baseline (at any depth)."""
    for name in model.model_fields:
        if name not in data:
            continue
        path = prefix + name
        value = data[name]
        if (frozen is None or path not in frozen) and _at_baseline(model, name, value):
            del data[name]
            continue
        for sub, sub_prefix, item in _children(model, name, value, path):
            _prune(item, sub, frozen, sub_prefix)


def _children(model: type[BaseModel], name: str, value: Any,
              path: str) -> Iterator[tuple[type[BaseModel], str, dict[str, Any]]]:
    """The nested models' data under one field value: a model, or each model of a list."""
    inner = _field_model(model, name)
    if inner is None:
        return
    sub, many = inner
    if many and isinstance(value, list):
        yield from ((sub, f"{path}[].", item) for item in value if isinstance(item, dict))
    elif not many and isinstance(value, dict):
        yield sub, f"{path}.", value


def _components(data: dict[str, Any]) -> Iterator[tuple[str, type[BaseModel], str]]:
    """(key, params model, scope) for each component of a job dump whose name is registered."""
    from bioscale.catalog import ARCHS, DATASETS, RULES

    registries = {"dataset": DATASETS, "arch": ARCHS, "rule": RULES}
    for key in COMPONENTS:
        component = data.get(key)
        if not isinstance(component, dict) or not isinstance(component.get("params"), dict):
            continue
        name = component.get("name")
        if isinstance(name, str) and name in registries[key]:
            yield key, registries[key].get(name).params, f"{key}:{name}"


def _at_baseline(model: type[BaseModel], name: str, value: Any) -> bool:
    has, baseline = declared_baseline(model, name)
    return has and _same(value, baseline)


@functools.cache
def declared_baseline(model: type[BaseModel], name: str) -> tuple[bool, Any]:
    """(declares one?, the baseline as the field's JSON dump would write it: ``0`` for a float is ``0.0``)."""
    field = model.model_fields[name]
    extra = field.json_schema_extra
    if not isinstance(extra, dict) or ID_BASELINE not in extra:
        return False, None
    value = extra[ID_BASELINE]
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata
                                                else field.annotation)
        return True, adapter.dump_python(adapter.validate_python(value), mode="json")
    except (TypeError, ValueError):  # a baseline outside today's type (e.g. None: "no such thing before")
        return True, to_jsonable_python(value)


def _same(a: Any, b: Any) -> bool:
    """JSON equality where ``0 == 0.0`` but ``False != 0``: a bool never matches a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    return type(a) is type(b) and a == b


@functools.cache
def _field_model(model: type[BaseModel], name: str) -> tuple[type[BaseModel], bool] | None:
    return _inner_model(model.model_fields[name].annotation)


def _inner_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds, and whether it holds a list of them (``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (dict, Mapping):
        return None
    if origin in (list, tuple, set, frozenset):
        for arg in args:
            found = _inner_model(arg)
            if found is not None and not found[1]:
                return found[0], True
        return None
    for arg in args:  # Union, Optional, Annotated
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


# ---- the frozen file ---------------------------------------------------------------------------------------


def _default_file() -> Path:
    return Path(str(resources.files("bioscale").joinpath(ID_FIELDS_FILE)))


@functools.lru_cache(maxsize=4)
def load_table(path: Path | None = None) -> dict[str, Any]:
    """The frozen file: ``{"fields": {scope: [path, ...]}, "baselines": {scope: {path: value}}}``."""
    path = path or _default_file()
    if not path.is_file():
        return {"version": 1, "fields": {}, "baselines": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def frozen_paths(scope: str, table: dict[str, Any] | None = None) -> frozenset[str] | None:
    """The paths frozen for ``scope``; None for a scope the file does not know (a plugin, a new component)."""
    if table is None:
        return _default_index().get(scope)
    fields = table["fields"].get(scope)
    return None if fields is None else frozenset(fields)


@functools.cache
def _default_index() -> dict[str, frozenset[str]]:
    return {scope: frozenset(paths) for scope, paths in load_table()["fields"].items()}


def walk(model: type[BaseModel], prefix: str = "",
         _seen: tuple[type, ...] = ()) -> Iterator[tuple[str, type[BaseModel], str]]:
    """(path, owning model, field name) for every field of ``model``, nested models included."""
    for name, field in model.model_fields.items():
        path = prefix + name
        yield path, model, name
        inner = _inner_model(field.annotation)
        if inner is not None and inner[0] not in _seen:
            yield from walk(inner[0], f"{path}[]." if inner[1] else f"{path}.", (*_seen, model))


def builtin_scopes() -> list[tuple[str, type[BaseModel]]]:
    """("job", JobSpec) and ("rule:fa", its params model), ... for every component that ships with bioscale."""
    from bioscale.catalog import ARCHS, DATASETS, RULES
    from bioscale.spec import JobSpec

    scopes: list[tuple[str, type[BaseModel]]] = [(JOB_SCOPE, JobSpec)]
    for kind, registry in (("rule", RULES), ("arch", ARCHS), ("dataset", DATASETS)):
        for name, record in registry.items():
            if getattr(record.impl, "__module__", "").startswith("bioscale."):
                scopes.append((f"{kind}:{name}", record.params))
    return scopes


def _runtime_paths() -> set[str]:
    from bioscale.spec import RUNTIME_FIELDS

    def flat(spec: Any, prefix: str) -> Iterator[str]:
        if isinstance(spec, Mapping):
            for key, sub in spec.items():
                yield from flat(sub, f"{prefix}{key}.") if sub is not True else [f"{prefix}{key}"]
        else:
            yield from (f"{prefix}{key}" for key in spec)

    return set(flat(RUNTIME_FIELDS, ""))


def problems(table: dict[str, Any] | None = None) -> list[str]:
    """What would make an upgrade move ids or mix results, for every built-in field; empty when all is well."""
    table = table or load_table()
    runtime = _runtime_paths()
    out = []
    for scope, model in builtin_scopes():
        frozen = frozen_paths(scope, table)
        if frozen is None:
            out.append(f"{scope}: not in {ID_FIELDS_FILE}. A new built-in component is frozen when it is added: "
                       "run `python -m bioscale.ids freeze`.")
            continue
        recorded = table.get("baselines", {}).get(scope, {})
        for path, owner, name in walk(model):
            if scope == JOB_SCOPE and path in runtime:
                continue
            has, baseline = declared_baseline(owner, name)
            if path in frozen:
                if has:
                    out.append(f"{scope} {path}: existed before ids were frozen and is always hashed; remove its "
                               "added(...) (a baseline would not apply to it).")
            elif not has:
                out.append(f"{scope} {path}: a field added after ids were frozen must declare the value that "
                           "reproduces the old behaviour: `= added(<default>)`, or `added(<default>, "
                           "baseline=<old behaviour>)` (bioscale.ids.added). Without it every existing result "
                           "of this component would be trained again.")
            elif path not in recorded:
                out.append(f"{scope} {path}: its baseline {baseline!r} is not recorded yet: run "
                           "`python -m bioscale.ids freeze`.")
            elif not _same(recorded[path], baseline):
                out.append(f"{scope} {path}: its baseline changed from {recorded[path]!r} to {baseline!r}. "
                           "The baseline is what results computed before the field existed used, so it never "
                           f"changes: to change the default, write added(<new default>, "
                           f"baseline={recorded[path]!r}).")
    return out


def freeze(path: Path | None = None) -> list[str]:
    """Append to the frozen file: every field of a built-in component it does not know yet, and the baseline of
    every added field not recorded yet. Never changes an entry. Returns the problems left (see ``problems``)."""
    path = path or _default_file()
    load_table.cache_clear()
    table = copy.deepcopy(load_table(path))
    fields, baselines = table.setdefault("fields", {}), table.setdefault("baselines", {})
    for scope, model in builtin_scopes():
        new_scope = scope not in fields
        known = set(fields.get(scope, []))
        recorded = baselines.setdefault(scope, {})
        introduced: list[str] = []  # added fields recorded now: the fields of their models are frozen with them
        for field_path, owner, name in walk(model):
            has, baseline = declared_baseline(owner, name)
            if has and field_path not in known:
                if field_path not in recorded:
                    recorded[field_path] = baseline
                    introduced.append(field_path)
            elif new_scope or any(field_path.startswith((f"{p}.", f"{p}[].")) for p in introduced):
                known.add(field_path)
        fields[scope] = sorted(known)
    out = {"version": 1, "about": ABOUT, "fields": dict(sorted(fields.items())),
           "baselines": {scope: dict(sorted(v.items())) for scope, v in sorted(baselines.items()) if v}}
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    load_table.cache_clear()
    _default_index.cache_clear()
    return problems(load_table(path))


# ---- reading old results -----------------------------------------------------------------------------------


def fill_baselines(spec: S, schema: type[BaseModel] | None = None) -> S:
    """A spec read from a store, with every added field it lacks set to its baseline: the value the job was
    computed under (the code had no such field then), not today's default.

    Give the raw ``spec`` mapping of a ``spec.json`` (before ``JobSpec.model_validate``, which would fill
    today's defaults); a ``JobSpec`` works too, judged by the fields it was validated with. Never give it a
    freshly resolved job: there a field left out by the grid means today's default. ``schema`` is the job
    model (``JobSpec`` unless given, or the ``JobSpec`` subclass given). Returns a new object.
    """
    from bioscale.spec import JobSpec

    if isinstance(spec, BaseModel):
        model = type(spec)
        filled = fill_baselines(spec.model_dump(mode="json", exclude_unset=True), model)
        return model.model_validate(filled)  # type: ignore[return-value]
    model = schema or JobSpec
    data = copy.deepcopy(dict(spec))
    for key in COMPONENTS:  # shorthand (``rule: fa``) as the schema reads it
        if isinstance(data.get(key), str):
            data[key] = {"name": data[key]}
        if isinstance(data.get(key), dict):
            data[key].setdefault("params", {})
    _fill(data, model, frozen_paths(JOB_SCOPE), "")
    for key, params_model, scope in _components(data):
        _fill(data[key]["params"], params_model, frozen_paths(scope), "")
    return data  # type: ignore[return-value]


def _fill(data: dict[str, Any], model: type[BaseModel], frozen: frozenset[str] | None, prefix: str) -> None:
    for name in model.model_fields:
        path = prefix + name
        if name not in data:
            has, baseline = declared_baseline(model, name)
            if has and (frozen is None or path not in frozen):
                data[name] = copy.deepcopy(baseline)
            continue
        for sub, sub_prefix, item in _children(model, name, data[name], path):
            _fill(item, sub, frozen, sub_prefix)


def main(argv: list[str]) -> int:
    """``python -m bioscale.ids check|freeze``: list the problems, or append new fields and baselines first."""
    if argv not in (["check"], ["freeze"]):
        print("usage: python -m bioscale.ids check|freeze", file=sys.stderr)
        return 2
    found = freeze() if argv == ["freeze"] else problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
