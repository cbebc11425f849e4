"""Deferred imports, so that the modules that register rules, architectures and datasets can be imported
without torch: `bioscale grid validate` and `bioscale list` read every registration in well under a second,
and torch is imported the first time a job actually touches it.

The standard library's ``importlib.util.LazyLoader`` would do the same by patching ``sys.modules``; it is
not used because a half-initialised ``torch`` left in ``sys.modules`` breaks torch's own submodule imports.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class LazyModule:
    """Stands for a module; imports it on first attribute access, then caches each attribute it hands out
    (after the first call ``lazy.attr`` is a plain instance-attribute lookup, so hot paths pay nothing)."""

    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__dict__["_lazy_name"]), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_name']}>"


def lazy(name: str) -> Any:
    """``torch = lazy("torch")``: the module, imported when first used."""
    return LazyModule(name)


def grad_mode(enabled: bool) -> Callable[[F], F]:
    """``@torch.no_grad()`` (False) / ``@torch.enable_grad()`` (True) for methods of modules that must not
    import torch when they are defined."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with torch.set_grad_enabled(enabled):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


torch = lazy("torch")
