"""Architectures: ``build_model(arch, info)`` for any registered architecture."""

from __future__ import annotations

from torch import nn

from bioscale.catalog import ARCHS, load_impl
from bioscale.data.base import DataInfo
from bioscale.spec import ArchSpec


def build_model(arch: ArchSpec, info: DataInfo) -> nn.Module:
    entry = ARCHS.get(arch.name)
    params = entry.params.model_validate(arch.params)
    return load_impl(entry.impl)(params, info)
