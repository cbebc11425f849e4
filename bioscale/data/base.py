"""The contract between datasets and the trainer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class DataShape:
    family: str
    """The paper dataset it resembles ("mnist", "cifar10", "imagenet"): picks the arch preset."""
    input_shape: tuple[int, int, int]
    """(channels, height, width) of one example as the model sees it."""
    num_classes: int
    train_size: int
    test_size: int


class Loader(Protocol):
    """Batches ``(x, y)`` already on the job's device."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int:
        """Batches per pass."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling and augmentation for ``epoch``, so a resumed job sees the same batches."""
        ...


@dataclass(frozen=True)
class BatchShard:
    """This rank's part of one global batch in a distributed job (``bioscale.distributed``).

    ``rows`` picks the rank's examples out of the batch a single process would train on (every ``world``-th
    row from ``rank``, DistributedSampler's interleaving); ``total`` is that batch's size. ``weight`` is the
    rank's share of the batch-mean gradient, ``len(rows) / total``, so that the weighted sum over ranks of
    their own batch means is the mean over the whole batch even when it does not split evenly. A batch too
    small to give every rank an example is held whole by every rank (weight ``1 / world``) and counted in
    the metrics by rank 0 only (``counts``), so no rank ever steps on an empty batch."""

    rows: slice
    total: int
    weight: float
    counts: bool = True


def batch_shard(total: int, rank: int, world: int) -> BatchShard:
    """Rank ``rank``'s share of a global batch of ``total`` examples among ``world`` ranks (see ``BatchShard``)."""
    if total >= world:
        rows = slice(rank, total, world)
        return BatchShard(rows, total, len(range(rank, total, world)) / total)
    return BatchShard(slice(0, total), total, 1.0 / world, counts=rank == 0)


@dataclass
class DataBundle:
    info: DataShape
    train: Loader
    """Shuffled and augmented: what the rule trains on."""
    train_eval: Loader
    """The training set in order, without augmentation: for the train error."""
    test: Loader
    validation: Loader | None = None
    """The held-out part of the training set (``dataset.params.validation``), in order, without augmentation."""
