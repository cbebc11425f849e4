"""COCO images and boxes as a torch ``Dataset``, and the detection loader (the index it reads is
``bioscale.data.coco.CocoIndex``)."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.utils.data

from bioscale.data.base import BatchShard, batch_shard
from bioscale.data.loaders import EpochSampler, SeededDataset, to_device

if TYPE_CHECKING:
    from bioscale.data.coco import CocoIndex

log = logging.getLogger("bioscale.data.coco")


class CocoDetection(torch.utils.data.Dataset):
    """The images at ``positions`` of ``index``. ``hflip``: probability of a horizontal flip, drawn from torch's
    generator (which ``SeededDataset`` seeds per (seed, epoch, image)). An image that cannot be decoded gives
    None (warned with its path); ``collate`` leaves it out and counts it."""

    def __init__(self, index: CocoIndex, positions: list[int] | None = None, min_size: int | None = None,
                 hflip: float = 0.0) -> None:
        self.index, self.min_size, self.hflip = index, min_size, hflip
        self.positions = list(range(len(index.image_ids))) if positions is None else list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def image_ids(self) -> list[int]:
        return [self.index.image_ids[p] for p in self.positions]

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, from the annotation file (no image is opened)."""
        return [self.index.sizes[p][1] / self.index.sizes[p][0] for p in self.positions]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        from PIL import Image

        ix, pos = self.index, self.positions[i]
        path = ix.image_dir / ix.files[pos]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            log.warning("coco: skipped the image %s, which cannot be read (%s: %s); replace it from the COCO "
                        "archive or remove its entry from %s", path, type(e).__name__, e, ix.annotation_file)
            return None
        orig = ix.sizes[pos]
        boxes = torch.from_numpy(ix.boxes[pos].copy())
        if (img.height, img.width) != orig:  # boxes are in the json's pixels
            boxes[:, 0::2] *= img.width / orig[1]
            boxes[:, 1::2] *= img.height / orig[0]
        if self.min_size is not None:
            s = self.min_size / min(img.height, img.width)
            w0, h0 = img.width, img.height
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
            boxes[:, 0::2] *= img.width / w0
            boxes[:, 1::2] *= img.height / h0
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            x = x.flip(-1)
            boxes = torch.stack([x.shape[-1] - boxes[:, 2], boxes[:, 1], x.shape[-1] - boxes[:, 0], boxes[:, 3]], 1)
        target = {"boxes": boxes, "labels": torch.from_numpy(ix.labels[pos].copy()), "image_id": ix.image_ids[pos],
                  "orig_size": orig}
        return x, target


def collate(batch: list[tuple[torch.Tensor, dict] | None]) -> tuple[list[torch.Tensor], list[dict], int]:
    """Detection images differ in size: keep lists, do not stack. Unreadable images (None) are left out and
    counted (the third item)."""
    kept = [b for b in batch if b is not None]
    return [b[0] for b in kept], [b[1] for b in kept], len(batch) - len(kept)


def aspect_ratio_groups(ratios: list[float], k: int) -> list[int]:
    """Each image's aspect-ratio bin: 2k+1 edges spaced evenly in log2 between 1/2 and 2, as torchvision's
    reference (``create_aspect_ratio_groups`` with factor k), so bins are 0..2k+1."""
    edges = [2.0 ** (-1 + 2 * i / (2 * k)) for i in range(2 * k + 1)] if k > 0 else []
    return [bisect.bisect_right(edges, r) for r in ratios]


class AspectRatioBatches:
    """Batches of images of one aspect-ratio group, in the sampler's order: an image joins its group's open
    batch, which is yielded when full; at the end each group's partial batch is yielded (in group order).

    torchvision's ``GroupedBatchSampler`` instead yields len(sampler) // batch_size batches, filling the last
    ones with images repeated from their group; here no image is ever repeated or dropped (as everywhere in
    bioscale's loaders), at the price of a few smaller batches per epoch."""

    def __init__(self, sampler: EpochSampler, groups: list[int], batch_size: int) -> None:
        self.sampler, self.groups, self.batch_size = sampler, groups, batch_size

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for g in self.groups:
            counts[g] = counts.get(g, 0) + 1
        return sum(math.ceil(n / self.batch_size) for n in counts.values())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        open_: dict[int, list[tuple[int, int]]] = {}
        for key in self.sampler:
            g = self.groups[key[1]]
            open_.setdefault(g, []).append(key)
            if len(open_[g]) == self.batch_size:
                yield open_.pop(g)
        for g in sorted(open_):
            yield open_[g]


class _Plan(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: the batches ``CocoLoader`` planned for this pass."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)


class CocoLoader:
    """A torch ``DataLoader`` (workers, pinned memory) behind the ``Loader`` protocol for detection: batches
    of ``(images, targets)`` on the job's device, reseeded by ``set_epoch``, optionally grouped by aspect ratio.
    Each pass's batches are planned first (indices only), so a rank of a distributed job (``sharded``) reads
    exactly its rows of the global batches one process would read. ``skipped`` counts unreadable images."""

    def __init__(self, dataset: CocoDetection, batch_size: int, device: Any, *, shuffle: bool = False,
                 seed: int = 0, num_workers: int = 0, aspect_groups: int = 0,
                 shard: tuple[int, int] | None = None) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self._settings = dict(dataset=dataset, batch_size=batch_size, device=device, shuffle=shuffle, seed=seed,
                              num_workers=num_workers, aspect_groups=aspect_groups)
        self.sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
        groups = aspect_ratio_groups(dataset.aspect_ratios(), aspect_groups) if aspect_groups > 0 else None
        self.batcher: Any = (AspectRatioBatches(self.sampler, groups, batch_size) if groups is not None
                             else torch.utils.data.BatchSampler(self.sampler, batch_size, drop_last=False))
        self.shard = shard
        self.current_shard: BatchShard | None = None
        self.skipped = 0
        self._plan = _Plan()
        self.loader = torch.utils.data.DataLoader(
            SeededDataset(dataset, seed), batch_sampler=self._plan, num_workers=num_workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed))

    # what the detection task reads to score the model
    @property
    def annotation_file(self) -> Any:
        return self.dataset.index.annotation_file

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(self.dataset.index.category_ids)

    @property
    def image_ids(self) -> list[int]:
        return self.dataset.image_ids

    def sharded(self, rank: int, world: int) -> CocoLoader:
        return CocoLoader(**self._settings, shard=(rank, world))  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batcher)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
        planned = list(self.batcher)
        shards = [batch_shard(len(b), *self.shard) for b in planned] if self.shard is not None else None
        self._plan.batches = [b[s.rows] for b, s in zip(planned, shards, strict=True)] if shards else planned
        for i, (images, targets, skipped) in enumerate(self.loader):
            self.current_shard = shards[i] if shards else None
            if skipped:
                self.skipped += skipped
                log.warning("coco: %d unreadable images skipped so far", self.skipped)
            if images:
                yield to_device((images, targets), self.device)

    def first_batch(self) -> tuple[list[torch.Tensor], list[dict]]:
        """The first global batch, read in this process (no worker pool is started for it)."""
        keys = next(iter(self.batcher), [])
        images, targets, _ = collate([self.loader.dataset[k] for k in keys])
        return to_device((images, targets), self.device)
