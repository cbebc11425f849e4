"""Reading a grid file (or a ``--set`` value) safely: UTF-8 text of a sane size and depth, YAML that
parses, a mapping that validates as a ``GridSpec``; every failure one ``GridError`` that says what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bioscale.errors import GridError
from bioscale.explain import explain, short
from bioscale.spec import GridSpec

MAX_GRID_BYTES = 1 << 20
"""A grid file is a few kB; a bigger one is a mistake (a data file given as the grid) and slow to parse."""
MAX_DEPTH = 50
"""Nesting levels a grid (or a --set value) may have; real grids use five or six."""
MAX_VALUES = 200_000
"""Values a grid may hold, YAML aliases counted each time they are used (a "billion laughs" file)."""


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
        raise GridError(f"{path}: a grid is a mapping with keys {', '.join(GridSpec.model_fields)}; this file "
                        "holds something else.")
    try:
        grid = GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise GridError(f"{path}: {explain(exc, GridSpec)}") from None
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
        out[key] = load_yaml(value, f"--set {short(item)}: the value", fix) if value.strip() else None
    return out
