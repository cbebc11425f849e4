"""``coco``: MS COCO 2017 object detection, for Xiao et al.'s RetinaNet experiment.

Layout (the standard one): ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/*.jpg``.
The json is read with the standard library; scoring reads it again with pycocotools (``bioscale.tasks``).
``load`` returns a ``DetectionBundle``:

- ``info``: ``DetectionInfo`` (family "coco", ``num_classes``, ``class_names``, ``category_ids``: the COCO
  category id of each contiguous label, for writing results back in COCO's ids; split sizes; the input shape
  the model is built for).
- ``train`` (shuffled, seeded by (seed, epoch), horizontally flipped with probability ``hflip``, batches
  grouped by aspect ratio), ``train_eval`` (the same images in order, unflipped) and ``test``: loaders whose
  batches are ``(images, targets)``: ``images`` a list of float32 (3, H, W) tensors in [0, 1] (sizes differ),
  ``targets`` a list of dicts with ``boxes`` (K, 4) float32 ``x1, y1, x2, y2`` in pixels of the returned
  image, ``labels`` (K,) int64 contiguous 0..num_classes-1, ``image_id`` (int) and ``orig_size`` (H, W) in
  the annotation file. The test loader also carries ``annotation_file``, ``category_ids`` and ``image_ids``.

As torchvision's detection reference (references/detection: coco_utils, transforms, group_by_aspect_ratio):
crowd annotations are left out of the targets (pycocotools still counts them when scoring); boxes are
clamped to their image and dropped when empty after that; training images without a usable annotation
(none, or only boxes 1 pixel wide or high) are left out of training, while every validation image is
scored; the model resizes images itself (``retinanet``'s ``min_size``), the loader only with ``min_size``.

Bad input: a missing annotation file or image folder, a json that is not a COCO instances file, an empty
category list or an annotation naming an unknown image or category is one ``DataError`` before training;
boxes outside their image are clamped and counted in a warning; an image that cannot be decoded is skipped
(warned with its path) and counted in the loader's ``skipped``, never a crash mid-epoch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import PositiveInt

from bioscale.catalog import register_dataset
from bioscale.errors import DataError
from bioscale.ids import added
from bioscale.lazy import lazy
from bioscale.spec import Strict

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings

coco_images = lazy("bioscale.data.coco_images")
log = logging.getLogger(__name__)


class CocoParams(Strict):
    root: str | None = None
    """Directory with ``annotations/instances_{split}2017.json`` and ``{split}2017/`` images."""
    train_split: str = "train"
    test_split: str = "val"
    min_size: PositiveInt | None = None
    """Resize in the loader so the shorter side is this long (boxes scaled to match); None keeps the original
    size (the model resizes: torchvision's reference does it there)."""
    subset: PositiveInt | None = None
    """Use only the first N training images (in image-id order, after leaving out those without annotations)."""
    test_subset: PositiveInt | None = added(None)
    """Score only the first N validation images (in image-id order); None: all of them."""
    hflip: float = added(0.5, baseline=0.0, ge=0.0, le=1.0)
    """Probability of a horizontal flip of each training image (torchvision's reference: 0.5)."""
    aspect_groups: int = added(3, baseline=0, ge=0)
    """Group training batches by aspect ratio into 2k+2 bins (torchvision's --aspect-ratio-group-factor, 3);
    0: no grouping."""


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
    input_shape: tuple[int, int, int] = (3, 800, 800)
    """(C, H, W) the model is built for: its resize target is the shorter side (``retinanet``'s min_size)."""


@dataclass
class DetectionBundle:
    info: DetectionInfo
    train: Any
    train_eval: Any
    """The training images in order, unflipped (for diagnostics)."""
    test: Any


@dataclass
class CocoIndex:
    """One annotation file, parsed and validated."""

    annotation_file: Path
    image_dir: Path
    image_ids: list[int]
    files: list[str]
    sizes: list[tuple[int, int]]
    """(height, width) from the json."""
    category_ids: list[int]
    class_names: list[str]
    boxes: list[np.ndarray] = field(default_factory=list)
    """Per image, (K, 4) x1 y1 x2 y2 of its non-crowd boxes, clamped to the image, empty ones dropped."""
    labels: list[np.ndarray] = field(default_factory=list)
    trainable: list[bool] = field(default_factory=list)
    """Whether the image has a usable annotation (torchvision's reference keeps only those for training)."""
    clamped: int = 0
    """Boxes that reached outside their image and were clamped to it."""
    dropped: int = 0
    """Non-crowd boxes left out because they are empty (after clamping)."""


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


def scorer_problem() -> str | None:
    """Detection jobs are scored with pycocotools (the ``detection`` extra): missing, say so before training."""
    if importlib.util.find_spec("pycocotools") is None:
        return ("detection jobs are scored with pycocotools, which is not installed; install it with "
                "`pip install 'bioscale[detection]'` (or `pip install pycocotools`).")
    return None


def check(params: CocoParams) -> str | None:
    """Preflight: pycocotools is installed, and ``root`` is given and holds both splits' annotation files and
    image folders (none is read)."""
    if scorer_problem():
        return scorer_problem()
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
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise _fail(path, f"is not valid JSON (truncated or damaged: {e})") from e
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        raise _fail(path, "lacks the 'images', 'annotations' and 'categories' lists of a COCO instances file")
    if not doc["categories"]:
        raise _fail(path, "lists no categories (its 'categories' list is empty), so there is nothing to detect")
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
    if any(h <= 0 or w <= 0 for _, _, h, w in images):
        raise _fail(path, "has an image whose height or width is not positive")
    per_image: list[list[tuple[list[float], int]]] = [[] for _ in images]
    usable = [False] * len(images)
    clamped = dropped = 0
    for a in doc["annotations"]:
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            pos, label = img_pos[int(a["image_id"])], cat_label[int(a["category_id"])]
            crowd = bool(a.get("iscrowd", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(path, f"has an annotation ({str(a)[:80]}) with a missing or unknown {e}") from e
        if not all(np.isfinite((x, y, w, h))):
            raise _fail(path, f"has an annotation ({str(a)[:80]}) whose box is not finite")
        usable[pos] = usable[pos] or (w > 1 and h > 1)  # the reference's "not only empty boxes", crowd included
        if crowd:
            continue
        ih, iw = images[pos][2], images[pos][3]
        box = [min(max(x, 0.0), iw), min(max(y, 0.0), ih), min(max(x + w, 0.0), iw), min(max(y + h, 0.0), ih)]
        if box != [x, y, x + w, y + h] and w > 0 and h > 0:
            clamped += 1
        if box[2] > box[0] and box[3] > box[1]:
            per_image[pos].append((box, label))
        else:
            dropped += 1
    index = CocoIndex(path, image_dir, [i[0] for i in images], [i[1] for i in images], [(i[2], i[3]) for i in images],
                      [c[0] for c in cats], [c[1] for c in cats], clamped=clamped, dropped=dropped)
    for anns in per_image:
        index.boxes.append(np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4))
        index.labels.append(np.array([a[1] for a in anns], dtype=np.int64))
    index.trainable = usable
    if clamped or dropped:
        log.warning("coco: %s: %d boxes reach outside their image and were clamped to it; %d empty boxes were "
                    "left out of the targets", path, clamped, dropped)
    return index


def load_root(root: Path, params: CocoParams, ctx: LoaderSettings, family: str = "coco", side: int = 800
              ) -> DetectionBundle:
    """The bundle for a folder in the standard layout (``coco`` and ``mnist-boxes`` both end here); ``side``: the
    shorter image side the model is built for when the loader does not resize (``min_size``)."""
    tr, te = read_index(root, params.train_split), read_index(root, params.test_split)
    if tr.category_ids != te.category_ids:
        raise DataError(f"coco: the {params.train_split} and {params.test_split} annotation files in "
                        f"{root / 'annotations'} list different categories; use files of the same COCO release.")
    train_pos = [i for i, ok in enumerate(tr.trainable) if ok][:params.subset]
    if not train_pos:
        raise DataError(f"coco: {tr.annotation_file} has no image with a usable box (wider and higher than one "
                        "pixel) to train on; check that it is the instances file of the training split.")
    test_pos = list(range(len(te.image_ids)))[:params.test_subset]
    side = params.min_size or side
    info = DetectionInfo(family, len(tr.category_ids), tuple(tr.class_names), tuple(tr.category_ids),
                         len(train_pos), len(test_pos), (3, side, side))
    make = coco_images.CocoLoader
    train = make(coco_images.CocoDetection(tr, train_pos, params.min_size, params.hflip), ctx.batch_size,
                 ctx.device, shuffle=True, seed=ctx.seed, num_workers=ctx.num_workers,
                 aspect_groups=params.aspect_groups)
    train_eval = make(coco_images.CocoDetection(tr, train_pos, params.min_size), ctx.batch_size, ctx.device,
                      seed=ctx.seed)
    test = make(coco_images.CocoDetection(te, test_pos, params.min_size), ctx.eval_batch_size, ctx.device,
                seed=ctx.seed, num_workers=ctx.num_workers)
    return DetectionBundle(info, train, train_eval, test)


@register_dataset("coco", params=CocoParams, family="coco", order=70, task="detection", input_shape=(3, 800, 800),
                  num_classes=80, paper_dataset="coco", check=check,
                  summary="MS COCO 2017 detection (images, boxes, labels) under `root`; returns a DetectionBundle.")
def load(params: CocoParams, ctx: LoaderSettings) -> DetectionBundle:
    if params.root is None:
        raise DataError(_no_root())
    return load_root(Path(params.root).expanduser(), params, ctx)


__all__ = ["CocoIndex", "CocoParams", "DetectionBundle", "DetectionInfo", "load", "load_root", "read_index"]
