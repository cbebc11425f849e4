"""The one place the project learns what exists: every rule, architecture and dataset registers itself here
once, next to its code, with a decorator (``@register_rule``, ``@register_arch``, ``@register_dataset``).

A record carries everything the rest of the project needs: the parameter schema (defaults are recorded in
every job spec), the family or task, the display name and the order it takes in the papers' tables, and what
it is compatible with. Validation, ``bioscale list``, the report, the plots and the contract tests all read
the records; nothing else keeps a list of names.

Importing this package does not import torch, and neither does reading the records: the modules that
register components import torch lazily (``bioscale.lazy``), so ``bioscale grid validate`` stays fast.
Built-in components are discovered on first use (``bioscale.catalog.discover``); plugins register with the
same decorators (``bioscale --plugin``, entry-point group ``bioscale.plugins``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from bioscale.registry import Registry

Task = Literal["classification", "detection"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RuleRecord:
    """A learning rule. ``impl`` is a ``bioscale.rules.base.Rule`` subclass, built as
    ``impl(params, optim, inverse_optim)``."""

    name: str
    impl: type
    family: Literal["backward", "target"]
    params: type[BaseModel]
    summary: str
    display: str
    """The name the papers' tables use ("DTP", "FA", "brSF")."""
    order: float
    """Rank of the rule's rows in the papers' tables (Bartunov et al. Table 1: target rules, FA, DFA, BP)."""
    needs_layered: bool = False
    """Needs a sequential stack of layers (``LayeredNet``): target rules and DFA."""
    source: str = ""
    """The paper (and code) the rule and its defaults follow, for ``bioscale list rules``."""


@dataclass(frozen=True)
class ArchRecord:
    """An architecture. ``impl(params, shape)`` builds the model for a ``bioscale.data.base.DataShape``."""

    name: str
    impl: Callable[..., Any]
    params: type[BaseModel]
    summary: str
    display: str
    """Column name in the papers' tables ("FC", "LC", "ResNet-18")."""
    order: float
    layered: bool
    """Builds a ``LayeredNet`` (what target rules and DFA need)."""
    task: Task = "classification"
    column: str | None = None
    """The paper column the arch is reported under when it is not its own (the BP ConvNet sits in LC's)."""
    row_suffix: str = ""
    """Appended to the method's row name in the paper layout ("ConvNet": "BP ConvNet")."""
    presets: Callable[[BaseModel], tuple[str, ...] | None] | None = None
    """Dataset families this arch can be built for with these params; None: any family."""
    source: str = ""

    @property
    def paper_column(self) -> str:
        return self.column or self.display


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset. ``impl(params, settings)`` returns a ``DataBundle`` for ``bioscale.data.LoaderSettings``."""

    name: str
    impl: Callable[..., Any]
    params: type[BaseModel]
    summary: str
    family: str
    """The paper dataset it resembles ("mnist", "cifar10", "imagenet", "coco"): picks arch presets."""
    order: float
    task: Task = "classification"
    input_shape: tuple[int, int, int] = (1, 28, 28)
    """(C, H, W) a model sees with the default parameters: `bioscale arch summary` sizes a net without
    loading the data."""
    num_classes: int = 10
    paper_dataset: str | None = None
    """Whose published numbers it is compared with (mnist-5k, a subset of MNIST: "mnist"); None: none."""
    tags: tuple[str, ...] = field(default=())
    """Free-form labels ("bundled": ships inside an installed package, needs no files; "tests-only")."""
    check: Callable[[BaseModel], str | None] | None = None
    """``check(params)``: what stops the data being found, in one paragraph that says how to get it, or None.
    Cheap and torch-free (looks for files, reads none): ``bioscale run`` calls it once per distinct
    parameters before any job starts (``bioscale.preflight``). None: nothing to check."""


def _paper_order(record: RuleRecord | ArchRecord | DatasetRecord) -> tuple[float, str]:
    return (record.order, record.name)


RULES: Registry[RuleRecord] = Registry("rule", _paper_order)
ARCHS: Registry[ArchRecord] = Registry("arch", _paper_order)
DATASETS: Registry[DatasetRecord] = Registry("dataset", _paper_order)


def register_rule(name: str, *, family: Literal["backward", "target"], params: type[BaseModel], summary: str,
                  display: str, order: float, needs_layered: bool = False, source: str = "") -> Callable[[F], F]:
    """Class decorator: register a ``Rule`` subclass under ``name``."""
    def add(impl: F) -> F:
        _check("rule", name, impl, params)
        RULES.register(name, RuleRecord(name, impl, family, params, summary, display, order,  # type: ignore[arg-type]
                                        needs_layered, source))
        return impl
    return add


def register_arch(name: str, *, params: type[BaseModel], summary: str, display: str, order: float,
                  layered: bool, task: Task = "classification", column: str | None = None,
                  row_suffix: str = "", presets: Callable[[Any], tuple[str, ...] | None] | None = None,
                  source: str = "") -> Callable[[F], F]:
    """Function decorator: register a model builder ``fn(params, shape) -> nn.Module`` under ``name``."""
    def add(impl: F) -> F:
        _check("arch", name, impl, params)
        ARCHS.register(name, ArchRecord(name, impl, params, summary, display, order, layered, task, column,
                                        row_suffix, presets, source))
        return impl
    return add


def register_dataset(name: str, *, params: type[BaseModel], summary: str, family: str, order: float,
                     task: Task = "classification", input_shape: tuple[int, int, int] = (1, 28, 28),
                     num_classes: int = 10, paper_dataset: str | None = None, tags: tuple[str, ...] = (),
                     check: Callable[[Any], str | None] | None = None) -> Callable[[F], F]:
    """Function decorator: register a loader ``fn(params, settings) -> DataBundle`` under ``name``;
    ``check(params)`` is its preflight (see ``DatasetRecord.check``)."""
    def add(impl: F) -> F:
        _check("dataset", name, impl, params)
        if check is not None and not callable(check):
            raise TypeError(f"dataset {name!r} is registered wrongly: check must be a function, got {check!r}.")
        DATASETS.register(name, DatasetRecord(name, impl, params, summary, family, order, task, input_shape,
                                              num_classes, paper_dataset, tags, check))
        return impl
    return add


def _check(kind: str, name: str, impl: Any, params: Any) -> None:
    """Refuse a registration that could not run, when it is made (so at `grid validate`, not mid-run): a
    rule must be a concrete ``Rule`` subclass, a builder or loader a callable taking two arguments, and
    the parameters a pydantic model."""
    problems = []
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.append(f"params must be a pydantic model class, got {params!r}")
    if kind == "rule":
        from bioscale.rules.base import Rule

        if not (isinstance(impl, type) and issubclass(impl, Rule)):
            problems.append(f"it must decorate a subclass of bioscale.rules.base.Rule, got {impl!r}")
        elif inspect.isabstract(impl):
            problems.append(f"{impl.__name__} does not implement {', '.join(sorted(impl.__abstractmethods__))}")
    elif not callable(impl):
        problems.append(f"it must decorate a function, got {impl!r}")
    else:
        try:
            inspect.signature(impl).bind(None, None)
        except (TypeError, ValueError):
            second = "shape" if kind == "arch" else "settings"
            problems.append(f"{getattr(impl, '__name__', impl)} must take two arguments (params, {second})")
    if problems:
        raise TypeError(f"{kind} {name!r} is registered wrongly: {'; '.join(problems)}.")


# Discovery fills the registries on first use; import last, it needs the registries above.
from bioscale.catalog.discover import load_builtins, load_plugins, plugins  # noqa: E402

for _registry in (RULES, ARCHS, DATASETS):
    _registry.on_first_use(load_builtins)

__all__ = ["ARCHS", "DATASETS", "RULES", "ArchRecord", "DatasetRecord", "RuleRecord", "load_builtins",
           "load_plugins", "plugins", "register_arch", "register_dataset", "register_rule"]
