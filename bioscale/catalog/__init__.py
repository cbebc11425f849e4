"""What exists, without importing torch: names, parameter schemas and compatibility of rules,
architectures and datasets. Grid validation reads this; the torch implementations are imported lazily
from ``impl`` ("module:attribute") only when a job runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from bioscale.registry import Registry


def load_impl(path: str) -> Any:
    """Import ``"package.module:attribute"``."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class RuleInfo:
    name: str
    family: Literal["backward", "target"]
    params: type[BaseModel]
    impl: str
    summary: str
    needs_layered: bool = False
    """Target rules and DFA need a sequential stack of layers (``LayeredNet``)."""


@dataclass(frozen=True)
class ArchInfo:
    name: str
    params: type[BaseModel]
    impl: str
    summary: str
    layered: bool
    datasets: tuple[str, ...] = field(default=())
    """Dataset families the preset is defined for; empty means any."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    params: type[BaseModel]
    impl: str
    summary: str
    family: str
    """The paper dataset it resembles ("mnist", "cifar10", "imagenet", "coco"): picks arch presets."""
    input_shape: tuple[int, int, int] = (1, 28, 28)
    """(C, H, W) a model sees with the default parameters: `bioscale arch summary` sizes a net without
    loading the data."""
    num_classes: int = 10


RULES: Registry[RuleInfo] = Registry("rule")
ARCHS: Registry[ArchInfo] = Registry("arch")
DATASETS: Registry[DatasetInfo] = Registry("dataset")

# Importing these fills the registries.
from bioscale.catalog import archs, datasets, rules  # noqa: E402, F401
