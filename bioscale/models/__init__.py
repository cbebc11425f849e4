"""Architectures: ``build_model(arch, shape)`` for any registered architecture (``bioscale.catalog``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bioscale.catalog import ARCHS
from bioscale.spec import ArchSpec

if TYPE_CHECKING:
    from torch import nn

    from bioscale.data.base import DataShape


def build_model(arch: ArchSpec, shape: DataShape) -> nn.Module:
    record = ARCHS.get(arch.name)
    return record.impl(record.params.model_validate(arch.params), shape)
