"""The members' training batches as one [M, B, ...] batch: member m's solo loader's batch in row m.

Members share the dataset (splits and subsets are fixed by the dataset, never by the job's seed) and differ
only in the order (and augmentation) their job seed gives: ``member_loaders`` makes each member's loader from
one loaded set (the tensors are shared, not copied M times), and ``StackedLoader`` zips them. For
device-resident sets without augmentation it gathers all M batches with one [M, B] index, from the same
per-member permutations ``TensorLoader`` draws; otherwise it stacks the members' own batches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from bioscale.data.loaders import TensorLoader, epoch_seed
from bioscale.errors import BioscaleError


def member_loaders(loader: Any, seeds: list[int]) -> list[Any]:
    """One loader per member seed over ``loader``'s data (shallow copies: the data tensors are shared)."""
    if not isinstance(loader, TensorLoader) or loader.shard is not None:
        raise BioscaleError(
            f"stacked members need tensor-backed training loaders to share one loaded set; a "
            f"{type(loader).__name__}{' (sharded)' if isinstance(loader, TensorLoader) else ''} is not. Load "
            "the data once per member, or run these jobs unstacked (--stack 1)."
        )
    out = []
    for s in seeds:
        member = copy.copy(loader)
        member.seed = s
        out.append(member)
    return out


class StackedLoader:
    """Zips M member loaders of equal length: yields x [M, B, ...], y [M, B]."""

    def __init__(self, loaders: list[Any]) -> None:
        if len({len(loader) for loader in loaders}) != 1:
            raise BioscaleError(f"stacked members' loaders differ in length ({[len(x) for x in loaders]} batches): "
                                "they must hold the same data at the same batch size.")
        self.loaders = loaders

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    @property
    def gathers(self) -> bool:
        """Whether one [M, B] gather serves all members (same device-resident tensors, no augmentation)."""
        first = self.loaders[0]
        return all(type(x) is TensorLoader and x.x is first.x and x.y is first.y and x.augment is None
                   and x.shard is None and x.batch_size == first.batch_size and x.shuffle == first.shuffle
                   for x in self.loaders)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.gathers:
            for batches in zip(*self.loaders, strict=True):
                yield torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
            return
        first = self.loaders[0]
        n, bs = len(first.x), first.batch_size
        if first.shuffle:
            orders = []
            for loader in self.loaders:  # TensorLoader.__iter__'s permutation, member by member
                gen, _ = loader._generators(epoch_seed(loader.seed, loader.epoch))
                orders.append(torch.randperm(n, device=first.x.device, generator=gen))
            order = torch.stack(orders)
        else:
            order = torch.arange(n, device=first.x.device).expand(len(self.loaders), n)
        for i in range(len(first)):
            idx = order[:, i * bs:min((i + 1) * bs, n)]
            yield first.x[idx], first.y[idx]
