"""``coco``: MS COCO 2017 object detection, for Xiao et al.'s RetinaNet experiments.

Layout (the standard one): ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/*.jpg``.
The json is read with the standard library (no pycocotools needed). It is NOT a classification set, so
``load`` returns a ``DetectionBundle``, not a ``DataBundle``:

- ``info``: ``DetectionInfo`` (family "coco", ``num_classes``, ``class_names``, ``category_ids``: the
  COCO category id of each contiguous label, for writing results back in COCO's ids; split sizes).
- ``train`` (shuffled, seeded by (seed, epoch)) and ``test``: loaders whose batches are
  ``(images, targets)``: ``images`` a list of float32 (3, H, W) tensors in [0, 1] (sizes differ), and
  ``targets`` a list of dicts with ``boxes`` (K, 4) float32 ``x1, y1, x2, y2`` in pixels of the returned
  image, ``labels`` (K,) int64 contiguous 0..num_classes-1, ``iscrowd`` (K,) bool, ``image_id`` (int) and
  ``orig_size`` (H, W) before resizing. This is what torchvision's detection models take (drop crowd boxes
  for training, as the COCO references do).

Boxes with zero or negative width or height are dropped. With ``min_size`` the image is resized so its
shorter side is ``min_size`` and the boxes are scaled to match; otherwise images keep their size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import PositiveInt

from bioscale.catalog import register_dataset
from bioscale.errors import DataError
from bioscale.lazy import lazy
from bioscale.spec import Strict

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings
    from bioscale.data.loaders import DeviceDataLoader

torch = lazy("torch")
loaders = lazy("bioscale.data.loaders")
coco_images = lazy("bioscale.data.coco_images")


class CocoParams(Strict):
    root: str | None = None
    """Directory with ``annotations/instances_{split}2017.json`` and ``{split}2017/`` images."""
    train_split: str = "train"
    test_split: str = "val"
    min_size: PositiveInt | None = None
    """Resize so the shorter side is this long (boxes scaled to match); None keeps the original size."""
    subset: PositiveInt | None = None
    """Use only the first N training images (in image-id order)."""


HOW_TO_GET = ("point `--set dataset.params.root=DIR` at the COCO folder holding annotations/ and "
              "train2017/ val2017/ (from cocodataset.org: 2017 train/val images and annotations)")


@dataclass(frozen=True)
class DetectionInfo:
    family: str
    num_classes: int
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    """COCO category id of each contiguous label."""
    train_size: int
    test_size: int


@dataclass
class DetectionBundle:
    info: DetectionInfo
    train: DeviceDataLoader
    test: DeviceDataLoader


@dataclass
class CocoIndex:
    """One annotation file, parsed and validated."""

    image_dir: Path
    image_ids: list[int]
    files: list[str]
    sizes: list[tuple[int, int]]
    """(height, width) from the json."""
    category_ids: list[int]
    class_names: list[str]
    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    iscrowd: list[np.ndarray] = field(default_factory=list)


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"coco: {path} {what}. Replace it with the original file: {HOW_TO_GET}.")


def _split_problem(root: Path, split: str) -> str | None:
    path = root / "annotations" / f"instances_{split}2017.json"
    image_dir = root / f"{split}2017"
    if not path.is_file() or not image_dir.is_dir():
        return (f"coco: expected the annotation file {path} and the image folder {image_dir}; "
                f"{'the file' if not path.is_file() else 'the folder'} is missing. To get them, {HOW_TO_GET}.")
    return None


def _no_root() -> str:
    return f"coco: no dataset.params.root given; {HOW_TO_GET}."


def check(params: CocoParams) -> str | None:
    """Preflight: ``root`` is given and holds both splits' annotation files and image folders (none is read)."""
    if params.root is None:
        return _no_root()
    root = Path(params.root).expanduser()
    problems = [p for split in dict.fromkeys((params.train_split, params.test_split))
                if (p := _split_problem(root, split))]
    return " ".join(problems) or None


def read_index(root: Path, split: str) -> CocoIndex:
    path = root / "annotations" / f"instances_{split}2017.json"
    image_dir = root / f"{split}2017"
    problem = _split_problem(root, split)
    if problem:
        raise DataError(problem)
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(path, f"is not valid JSON (truncated or damaged: {e})") from e
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        raise _fail(path, "lacks the 'images', 'annotations' and 'categories' lists of a COCO instances file")
    try:
        cats = sorted((int(c["id"]), str(c["name"])) for c in doc["categories"])
        images = sorted((int(im["id"]), str(im["file_name"]), int(im["height"]), int(im["width"]))
                        for im in doc["images"])
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(path, f"has a category or image entry without a valid {e}") from e
    cat_label = {cid: i for i, (cid, _) in enumerate(cats)}
    img_pos = {iid: i for i, (iid, *_) in enumerate(images)}
    if len(cat_label) != len(cats) or len(img_pos) != len(images):
        raise _fail(path, "repeats a category or image id")
    per_image: list[list[tuple[list[float], int, bool]]] = [[] for _ in images]
    for a in doc["annotations"]:
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            pos, label = img_pos[int(a["image_id"])], cat_label[int(a["category_id"])]
            crowd = bool(a.get("iscrowd", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(path, f"has an annotation ({str(a)[:80]}) with a missing or unknown {e}") from e
        if w > 0 and h > 0:
            per_image[pos].append(([x, y, x + w, y + h], label, crowd))
    index = CocoIndex(image_dir, [i[0] for i in images], [i[1] for i in images], [(i[2], i[3]) for i in images],
                      [c[0] for c in cats], [c[1] for c in cats])
    for anns in per_image:
        index.boxes.append(np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4))
        index.labels.append(np.array([a[1] for a in anns], dtype=np.int64))
        index.iscrowd.append(np.array([a[2] for a in anns], dtype=bool))
    return index


@register_dataset("coco", params=CocoParams, family="coco", order=70, task="detection", input_shape=(3, 800, 800),
                  num_classes=80, check=check,
                  summary="MS COCO 2017 detection (images, boxes, labels) under `root`; returns a DetectionBundle.")
def load(params: CocoParams, ctx: LoaderSettings) -> DetectionBundle:
    if params.root is None:
        raise DataError(_no_root())
    root = Path(params.root).expanduser()
    tr, te = read_index(root, params.train_split), read_index(root, params.test_split)
    if tr.category_ids != te.category_ids:
        raise DataError(f"coco: the {params.train_split} and {params.test_split} annotation files in "
                        f"{root / 'annotations'} list different categories; use files of the same COCO release.")
    train_ds: torch.utils.data.Dataset = coco_images.CocoDetection(tr, params.min_size)
    if params.subset is not None:
        train_ds = torch.utils.data.Subset(train_ds, range(min(params.subset, len(tr.image_ids))))
    info = DetectionInfo("coco", len(tr.category_ids), tuple(tr.class_names), tuple(tr.category_ids),
                         len(train_ds), len(te.image_ids))  # type: ignore[arg-type]

    def dl(ds: torch.utils.data.Dataset, bs: int, shuffle: bool) -> DeviceDataLoader:
        return loaders.DeviceDataLoader(ds, bs, ctx.device, shuffle=shuffle, seed=ctx.seed, num_workers=ctx.num_workers,
                                collate_fn=coco_images.collate)

    return DetectionBundle(info, dl(train_ds, ctx.batch_size, True),
                           dl(coco_images.CocoDetection(te, params.min_size), ctx.eval_batch_size, False))
