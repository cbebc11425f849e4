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


@dataclass
class DataBundle:
    info: DataShape
    train: Loader
    """Shuffled and augmented: what the rule trains on."""
    train_eval: Loader
    """The training set in order, without augmentation: for the train error."""
    test: Loader
