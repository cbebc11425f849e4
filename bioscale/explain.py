"""Validation errors in words: one sentence per problem, naming the key path, what is wrong and what is
allowed (with a did-you-mean). Shared by grid files, jobs and their keys."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(exc: ValidationError, model: type[BaseModel], prefix: str = "", most: int = 8) -> str:
    """One readable sentence per problem (the first ``most``): the key path, what is wrong, what is allowed."""
    parts = []
    errors = exc.errors()
    if len(errors) > most:
        parts.append(f"{len(errors)} problems; the first {most}:")
    for err in errors[:most]:
        loc = [str(p) for p in err["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            parts.append(f"unknown key {path!r}.{hint} Allowed here: {', '.join(allowed) or 'nothing'}.")
        else:
            parts.append(f"{path}: {err['msg']} (got {short(err.get('input'))}).")
    return " ".join(parts)


def fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the (nested) model at ``loc``, for 'allowed keys' messages."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = model_of(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = model_of(arg)
        if found is not None:
            return found
    return None
