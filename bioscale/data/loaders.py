"""Loaders behind the ``Loader`` protocol, all reseeded by ``set_epoch`` so a resumed job sees the same batches.

- ``TensorLoader``: the whole (small) dataset is one tensor on the job's device. Shuffling is one
  ``randperm`` per epoch, seeded by (seed, epoch); there is no DataLoader, no worker process and no
  host-to-device copy per batch.
- ``HostTensorLoader``: uint8 arrays in host RAM, batches gathered and copied as needed (downsampled ImageNet).
- ``DeviceDataLoader``: a torch DataLoader with workers for file-backed sets (ImageNet, COCO).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data
from torch import Tensor

Augment = Callable[[Tensor, torch.Generator], Tensor]


class TensorLoader:
    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generators(self, seed: int) -> tuple[torch.Generator | None, torch.Generator | None]:
        """(for the order, for augmentation): one generator on the data's device, used for both."""
        if not (self.shuffle or self.augment):
            return None, None
        g = torch.Generator(device=self.x.device)
        g.manual_seed(seed)
        return g, g

    def _to_device(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """The batch as the rule gets it (already there for a device-resident set)."""
        return xb, yb

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        order_gen, aug_gen = self._generators(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(n, device=self.x.device, generator=order_gen) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
            else:
                idx = order[sl]
                xb, yb = self.x[idx], self.y[idx]
            xb, yb = self._to_device(xb, yb)
            if self.augment is not None:
                xb = self.augment(xb, aug_gen)  # type: ignore[arg-type]
            yield xb, yb


def epoch_seed(seed: int, epoch: int) -> int:
    """The one seed of (job seed, epoch), shared by every loader so they shuffle alike."""
    return seed * 1_000_003 + epoch


class HostTensorLoader(TensorLoader):
    """Like ``TensorLoader``, but the uint8 images stay in host memory and each batch is gathered, pinned
    and copied to the device as it is needed: for sets too big for the device (downsampled ImageNet) that
    still fit in RAM. Images reach the rule as float32 divided by ``scale``; ``augment`` runs on the device.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, device: torch.device, *, scale: float = 255.0,
                 **kwargs: Any) -> None:
        super().__init__(x, y, batch_size, **kwargs)
        self.device = torch.device(device)
        self.scale = scale

    def _generators(self, seed: int) -> tuple[torch.Generator | None, torch.Generator | None]:
        """The order is drawn on the host, the augmentation on the device, both from the epoch's seed."""
        order = torch.Generator().manual_seed(seed) if self.shuffle else None
        aug = torch.Generator(device=self.device).manual_seed(seed) if self.augment is not None else None
        return order, aug

    def _to_device(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        if self.device.type == "cuda":
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb = xb.to(self.device, non_blocking=True).to(torch.float32) / self.scale
        return xb, yb.to(self.device, non_blocking=True)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` pairs: the order is a permutation seeded by (seed, epoch), and the epoch
    travels with each index into the workers, so ``SeededDataset`` can make augmentation reproducible even
    with persistent workers."""

    def __init__(self, n: int, *, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        return ((self.epoch, i) for i in order)


class SeededDataset(torch.utils.data.Dataset):
    """Seeds torch's CPU generator from (seed, epoch, index) before reading example ``index``, so random
    transforms (torchvision's use that generator) give the same crop for the same (seed, epoch, index)
    whichever worker reads it."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> object:
        epoch, index = key
        # Restore the generator afterwards: with num_workers=0 this runs in the training process, whose
        # own randomness (noise of target rules, ...) must not become a function of the last image read.
        state = torch.random.get_rng_state()
        torch.random.default_generator.manual_seed((epoch_seed(self.seed, epoch) * 7_919 + index) % 2**63)
        try:
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(state)


class DeviceDataLoader:
    """A torch ``DataLoader`` (worker processes, pinned memory, persistent workers) behind the ``Loader``
    protocol: batches arrive on the job's device and ``set_epoch`` reseeds order and augmentation."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
        collate_fn: Callable[[list], Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        self.loader = torch.utils.data.DataLoader(
            SeededDataset(dataset, seed),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            drop_last=drop_last,
            collate_fn=collate_fn,
            # Its own generator: the workers' base seed is drawn from it, not from the global one.
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield to_device(batch, self.device)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested tuples, lists and dicts (detection targets) to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
