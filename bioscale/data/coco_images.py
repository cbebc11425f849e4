"""COCO images and boxes as a torch ``Dataset`` (the index it reads is ``bioscale.data.coco.CocoIndex``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bioscale.errors import DataError

if TYPE_CHECKING:
    from bioscale.data.coco import CocoIndex


class CocoDetection(torch.utils.data.Dataset):
    def __init__(self, index: CocoIndex, min_size: int | None = None) -> None:
        self.index, self.min_size = index, min_size

    def __len__(self) -> int:
        return len(self.index.image_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from PIL import Image, UnidentifiedImageError

        ix = self.index
        path = ix.image_dir / ix.files[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise DataError(f"coco: cannot read the image {path} ({e}). Replace it from the COCO "
                            "archive, or remove its entry from the annotation file.") from e
        orig = (img.height, img.width)
        boxes = torch.from_numpy(ix.boxes[i].copy())
        if self.min_size is not None:
            s = self.min_size / min(orig)
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
            boxes[:, 0::2] *= img.width / orig[1]
            boxes[:, 1::2] *= img.height / orig[0]
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        target = {"boxes": boxes, "labels": torch.from_numpy(ix.labels[i]),
                  "iscrowd": torch.from_numpy(ix.iscrowd[i]), "image_id": ix.image_ids[i], "orig_size": orig}
        return x, target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection images differ in size: keep lists, do not stack."""
    return [b[0] for b in batch], [b[1] for b in batch]
