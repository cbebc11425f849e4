"""Loaders behind the ``Loader`` protocol, all reseeded by ``set_epoch`` so a resumed job sees the same batches.

- ``TensorLoader``: the whole (small) dataset is one tensor on the job's device. Shuffling is one
  ``randperm`` per epoch, seeded by (seed, epoch); there is no DataLoader, no worker process and no
  host-to-device copy per batch.
- ``HostTensorLoader``: uint8 arrays in host RAM, batches gathered and copied as needed (downsampled ImageNet).
- ``DeviceDataLoader``: a torch DataLoader with workers for file-backed sets (ImageNet, COCO). Only the
  training loader keeps its workers between epochs (the evaluation loaders start theirs for each pass, so a
  job holds one pool, not three); ``num_workers: auto`` sizes the pool from the CPUs this process may use
  (``auto_workers``); images can travel as uint8 and become float on the device (``on_device``).

In a distributed job (``bioscale.distributed``) every loader is *sharded*: each rank gets its rows of the
global batch that a single process would get at the same step (``bioscale.data.base.batch_shard``), in the
same order and with the same augmentation, so N ranks train on exactly the batches one process trains on.
``TensorLoader`` and ``DeviceDataLoader`` shard natively (``sharded``); any other loader is wrapped in
``ShardedLoader``, which reads the global batch and keeps the rank's rows.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data
from torch import Tensor

from bioscale.data.base import BatchShard, batch_shard
from bioscale.threads import cpus_available

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
        self.shard: tuple[int, int] | None = None
        """(rank, world) once ``sharded``: every batch is then this rank's rows of the global batch."""
        self.current_shard: BatchShard | None = None
        """The shard of the batch last yielded (None when not sharded)."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def sharded(self, rank: int, world: int) -> TensorLoader:
        """This rank's view of the loader. Every rank keeps the whole (small) set on its device and gathers
        only its rows of each global batch: the order is the single process's, from the same (seed, epoch)
        permutation. With augmentation the whole global batch is augmented and the rank keeps its rows, so
        each example gets exactly the crop and flip one process would give it (augmenting a batch is a few
        tensor ops; the random draws depend on the batch's size, not on who reads it)."""
        other = copy.copy(self)
        other.shard, other.current_shard = (rank, world), None
        return other

    def first_batch(self) -> tuple[Tensor, Tensor]:
        """The first global batch (unsharded), for diagnostics every rank computes alike."""
        whole = copy.copy(self)
        whole.shard = None
        return next(iter(whole))

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
            part = batch_shard(sl.stop - sl.start, *self.shard) if self.shard is not None else None
            local = part is not None and self.augment is None  # gather only this rank's rows
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
                if local:
                    xb, yb = xb[part.rows], yb[part.rows]  # type: ignore[union-attr]
            else:
                idx = order[sl]
                if local:
                    idx = idx[part.rows]  # type: ignore[union-attr]
                xb, yb = self.x[idx], self.y[idx]
            xb, yb = self._to_device(xb, yb)
            if self.augment is not None:
                xb = self.augment(xb, aug_gen)  # type: ignore[arg-type]
                if part is not None:
                    xb, yb = xb[part.rows], yb[part.rows]
            self.current_shard = part
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


class ShardedBatchSampler(torch.utils.data.Sampler):
    """DistributedSampler's idea, made exact: the single process's global batches (``batch_size`` items of
    ``sampler`` in its order), of which this rank yields its rows (``batch_shard``). torch's
    ``DistributedSampler`` splits the whole epoch instead and pads it with repeated examples to a multiple of
    the world size, so its last batches differ from a single process's; this one never repeats or drops an
    example, and the union of the ranks' batches at step i is the single process's batch i."""

    def __init__(self, sampler: torch.utils.data.Sampler, batch_size: int, drop_last: bool, rank: int,
                 world: int) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[Any]]:
        items = iter(self.sampler)
        while batch := list(itertools.islice(items, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch[batch_shard(len(batch), self.rank, self.world).rows]


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


MAX_AUTO_WORKERS = 16
"""``num_workers: auto`` never starts more workers than this per process (per GPU): torchvision's ImageNet
reference uses 16 per GPU, and each worker holds two batches in shared memory."""
JOB_CPUS_ENV = "BIOSCALE_JOB_CPUS"
"""Set by the local executor for each job: the CPUs of this machine that are the job's share."""


def auto_workers(cpus: int | None = None, job_cpus: int | None = None, ranks_per_node: int | None = None) -> int:
    """How many DataLoader workers ``num_workers: auto`` starts in this process: its job's CPUs (``job_cpus``:
    the local executor's share of the machine, ``BIOSCALE_JOB_CPUS``; else this process's affinity ``cpus``)
    split over the job's ranks on this node (``LOCAL_WORLD_SIZE``, set by torchrun), one core left for the
    training process itself, at most ``MAX_AUTO_WORKERS``. A GPU job on a Slurm task of 32 CPUs: 16 workers
    with one rank, 3 per rank with 8 ranks; a job packed 4 to a GPU on a 16-core, 1-GPU machine: 3."""
    if job_cpus is None:
        value = os.environ.get(JOB_CPUS_ENV, "")
        job_cpus = int(value) if value.isdigit() and int(value) > 0 else None
    here = cpus if cpus is not None else cpus_available()
    share = min(job_cpus, here) if job_cpus is not None else here
    if ranks_per_node is None:
        value = os.environ.get("LOCAL_WORLD_SIZE", "")
        ranks_per_node = int(value) if value.isdigit() and int(value) > 0 else 1
    return max(0, min(MAX_AUTO_WORKERS, share // ranks_per_node - 1))


def resolve_workers(num_workers: int | str) -> int:
    """``train.num_workers`` as a number: ``auto`` through ``auto_workers``."""
    if num_workers == "auto":
        return auto_workers()
    return int(num_workers)


class DeviceDataLoader:
    """A torch ``DataLoader`` (worker processes, pinned memory) behind the ``Loader`` protocol: batches arrive
    on the job's device and ``set_epoch`` reseeds order and augmentation.

    ``persistent`` (default: the shuffled, i.e. training, loader) keeps the workers alive between epochs; an
    evaluation loader starts its workers for each pass and lets them go, so a job holds one pool, not three.
    ``on_device`` finishes each batch's first item (the images) on the device: the workers hand over uint8
    pixels (a quarter of float32's bytes through shared memory, pinned memory and the bus) and the float
    conversion and normalisation run there (``bioscale.data.imagenet.ToFloat``).
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int | str = 0,
        drop_last: bool = False,
        collate_fn: Callable[[list], Any] | None = None,
        shard: tuple[int, int] | None = None,
        persistent: bool | None = None,
        on_device: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.device = torch.device(device)
        num_workers = resolve_workers(num_workers)
        self._settings = dict(dataset=dataset, batch_size=batch_size, device=device, shuffle=shuffle, seed=seed,
                              num_workers=num_workers, drop_last=drop_last, collate_fn=collate_fn,
                              persistent=persistent, on_device=on_device)
        self.num_workers = num_workers
        self.on_device = on_device
        self.batch_size, self.size, self.collate_fn = batch_size, len(dataset), collate_fn  # type: ignore[arg-type]
        self.shard = shard
        """(rank, world) for a rank of a distributed job: batches are its rows of the global batches."""
        self.current_shard: BatchShard | None = None
        self.sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        batching: dict[str, Any] = {"batch_size": batch_size, "sampler": self.sampler, "drop_last": drop_last}
        if shard is not None:
            batching = {"batch_sampler": ShardedBatchSampler(self.sampler, batch_size, drop_last, *shard)}
        self.loader = torch.utils.data.DataLoader(
            SeededDataset(dataset, seed),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0 and (shuffle if persistent is None else persistent),
            collate_fn=collate_fn,
            # Its own generator: the workers' base seed is drawn from it, not from the global one.
            generator=torch.Generator().manual_seed(seed),
            **batching,
        )

    def sharded(self, rank: int, world: int) -> DeviceDataLoader:
        """This rank's loader: the same dataset and seeded order, batched by ``ShardedBatchSampler``. Each
        rank reads only its own images; random crops and flips are seeded per (seed, epoch, image)
        (``SeededDataset``), so an image is augmented alike whichever rank reads it."""
        return DeviceDataLoader(**self._settings, shard=(rank, world))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.loader):
            if self.shard is not None:
                total = min(self.batch_size, self.size - i * self.batch_size)
                self.current_shard = batch_shard(total, *self.shard)
            yield self._finish(to_device(batch, self.device))

    def _finish(self, batch: Any) -> Any:
        if self.on_device is None or not isinstance(batch, list | tuple):
            return batch
        return type(batch)((self.on_device(batch[0]), *batch[1:]))

    def first_batch(self) -> Any:
        """The first global batch, read in this process (no worker pool is started for it): what every rank
        of a distributed job computes its diagnostics on."""
        keys = list(itertools.islice(iter(self.sampler), self.batch_size))
        items = [self.loader.dataset[k] for k in keys]
        return self._finish(to_device((self.collate_fn or torch.utils.data.default_collate)(items), self.device))


class ShardedLoader:
    """Any ``Loader`` sharded from outside: it reads every global batch and keeps this rank's rows (a tuple
    or list of tensors or lists, e.g. ``(x, y)`` or detection ``(images, targets)``). Exact like the native
    sharding, at the price of each rank reading the whole batch; for loaders without ``sharded``."""

    def __init__(self, inner: Any, rank: int, world: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world
        self.current_shard: BatchShard | None = None

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.inner:
            part = batch_shard(len(batch[-1]), self.rank, self.world)
            self.current_shard = part
            yield type(batch)(item[part.rows] for item in batch)

    def first_batch(self) -> Any:
        return next(iter(self.inner))


def shard_loader(loader: Any, rank: int, world: int) -> Any:
    """``loader`` as rank ``rank`` of ``world`` sees it: its native ``sharded`` view, else ``ShardedLoader``."""
    sharded = getattr(loader, "sharded", None)
    return sharded(rank, world) if sharded is not None else ShardedLoader(loader, rank, world)


def first_batch(loader: Any) -> Any:
    """The first global batch of ``loader`` (for a sharded one, the whole batch, not the rank's rows)."""
    first = getattr(loader, "first_batch", None)
    return first() if first is not None else next(iter(loader))


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested tuples, lists and dicts (detection targets) to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
