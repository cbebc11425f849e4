"""Datasets: ``load_data(spec, settings)`` gives the trainer a ``DataBundle`` for any registered dataset.

Three names, three jobs: ``bioscale.catalog.DatasetRecord`` is what a dataset registers (what exists);
``LoaderSettings`` is what a loader is told about the job (batch sizes, device, seed); ``DataShape`` is
what a loaded dataset tells the model builder (family, input shape, classes, sizes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bioscale.catalog import DATASETS
from bioscale.spec import DatasetSpec

if TYPE_CHECKING:
    from bioscale.data.base import DataBundle

__all__ = ["LoaderSettings", "load_data"]


@dataclass(frozen=True)
class LoaderSettings:
    """What a dataset's loader needs to know about the job."""

    batch_size: int
    eval_batch_size: int
    device: Any
    """A ``torch.device``: where batches are delivered."""
    seed: int
    num_workers: int | str = 0
    """Worker processes per loader, or ``"auto"`` (``bioscale.data.loaders.auto_workers``)."""


def load_data(spec: DatasetSpec, settings: LoaderSettings) -> DataBundle:
    record = DATASETS.get(spec.name)
    return record.impl(record.params.model_validate(spec.params), settings)
