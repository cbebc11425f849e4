"""Datasets: ``load_data(spec, ctx)`` gives the trainer a ``DataBundle`` for any registered dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bioscale.catalog import DATASETS, load_impl
from bioscale.data.base import DataBundle, DataInfo, Loader
from bioscale.spec import DatasetSpec

__all__ = ["DataBundle", "DataInfo", "LoadContext", "Loader", "load_data"]


@dataclass(frozen=True)
class LoadContext:
    """What a dataset's loader needs to know about the job."""

    batch_size: int
    eval_batch_size: int
    device: torch.device
    seed: int
    num_workers: int = 0


def load_data(spec: DatasetSpec, ctx: LoadContext) -> DataBundle:
    info = DATASETS.get(spec.name)
    params = info.params.model_validate(spec.params)
    return load_impl(info.impl)(params, ctx)
